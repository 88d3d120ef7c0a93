//! Reading Redis Stream replies (`XRANGE`, `XREVRANGE`, `XREAD`; RESP2 or
//! RESP3) into the entries of a stored stream.

use bytes::Bytes;
use fred::types::Value;

use crate::store::Outcome;

/// One entry of a Redis Stream, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    Start,
    Event(u64, Bytes),
    End(u64, Outcome),
}

impl Entry {
    pub(super) const fn seq(&self) -> u64 {
        match self {
            Self::Start => 0,
            Self::Event(seq, _) | Self::End(seq, _) => *seq,
        }
    }
}

/// Reads an `XRANGE`/`XREVRANGE` reply.
pub(super) fn parse_entries(reply: Value) -> Result<Vec<Entry>, String> {
    match reply {
        Value::Null => Ok(Vec::new()),
        Value::Array(entries) => entries.into_iter().map(parse_entry).collect(),
        other => Err(format!("unexpected stream reply: {other:?}")),
    }
}

/// Reads an `XREAD` reply for one key (RESP2 or RESP3).
pub(super) fn parse_xread(reply: Value) -> Result<Vec<Entry>, String> {
    match reply {
        Value::Null => Ok(Vec::new()),
        Value::Map(map) => match map.inner().into_iter().next() {
            Some((_, entries)) => parse_entries(entries),
            None => Ok(Vec::new()),
        },
        Value::Array(mut streams) => match streams.pop() {
            None => Ok(Vec::new()),
            Some(Value::Array(mut pair)) if pair.len() == 2 => {
                parse_entries(pair.pop().unwrap_or(Value::Null))
            }
            Some(other) => Err(format!("unexpected XREAD reply: {other:?}")),
        },
        other => Err(format!("unexpected XREAD reply: {other:?}")),
    }
}

fn parse_entry(entry: Value) -> Result<Entry, String> {
    let Value::Array(parts) = entry else {
        return Err("a stream entry is not an array".into());
    };
    let mut parts = parts.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err("a stream entry lacks its id or fields".into());
    };
    let id = id
        .as_str()
        .ok_or("a stream entry id is not text")?
        .into_owned();
    let (seq, sub) = id
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("unexpected stream entry id {id}"))?;
    let mut fields: Vec<(Value, Value)> = match fields {
        Value::Array(values) => {
            let mut pairs = Vec::with_capacity(values.len() / 2);
            let mut values = values.into_iter();
            while let (Some(k), Some(v)) = (values.next(), values.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(k, v)| (Value::Bytes(k.into_bytes()), v))
            .collect(),
        _ => return Err("stream entry fields are not an array".into()),
    };
    let field = |fields: &mut Vec<(Value, Value)>, name: &[u8]| {
        let at = fields
            .iter()
            .position(|(k, _)| k.as_bytes() == Some(name))?;
        Some(fields.swap_remove(at).1)
    };
    match (seq, sub) {
        (0, 1) => Ok(Entry::Start),
        (seq, 0) if seq > 0 => match field(&mut fields, b"e") {
            Some(Value::Bytes(frame)) => Ok(Entry::Event(seq, frame)),
            Some(Value::String(frame)) => Ok(Entry::Event(seq, frame.into_inner())),
            _ => Err(format!("stream entry {id} has no frame")),
        },
        (seq, 1) => {
            let outcome = field(&mut fields, b"end")
                .and_then(|v| v.as_str().and_then(|s| Outcome::parse(&s)))
                .ok_or_else(|| format!("stream entry {id} has no outcome"))?;
            Ok(Entry::End(seq, outcome))
        }
        _ => Err(format!("unexpected stream entry id {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let mut values = Vec::new();
        for (k, v) in fields {
            values.push(Value::from(*k));
            values.push(Value::from(*v));
        }
        Value::Array(vec![Value::from(id), Value::Array(values)])
    }

    #[test]
    fn reads_entries() {
        let reply = Value::Array(vec![
            entry("0-1", &[("s", "1")]),
            entry("1-0", &[("e", "data: a\n\n")]),
            entry("1-1", &[("end", "completed")]),
        ]);
        assert_eq!(
            parse_entries(reply),
            Ok(vec![
                Entry::Start,
                Entry::Event(1, Bytes::from_static(b"data: a\n\n")),
                Entry::End(1, Outcome::Completed),
            ])
        );
        assert!(parse_entries(Value::Array(vec![entry("x-0", &[])])).is_err());
        assert!(parse_entries(Value::Array(vec![entry("2-0", &[("x", "y")])])).is_err());
        assert!(parse_entries(Value::Array(vec![entry("2-1", &[("end", "??")])])).is_err());
        assert_eq!(parse_entries(Value::Null), Ok(Vec::new()));

        let xread = Value::Array(vec![Value::Array(vec![
            Value::from("k"),
            Value::Array(vec![entry("3-0", &[("e", "f")])]),
        ])]);
        assert_eq!(
            parse_xread(xread),
            Ok(vec![Entry::Event(3, Bytes::from_static(b"f"))])
        );
        assert_eq!(parse_xread(Value::Null), Ok(Vec::new()));
    }
}
