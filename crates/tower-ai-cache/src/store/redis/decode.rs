//! What L2 reads back from Redis: entries (served only while usable) and the
//! items of a recording's stream.

use bytes::Bytes;
use fred::types::Value;

use crate::entry::{Entry, Head, now_ms};

/// One item of a recording read from Redis.
#[derive(Debug)]
pub(crate) enum Item {
    Head(Head),
    Data(Bytes),
    End(String),
}

/// A value that can still be served (fresh, or stale within its grace),
/// decoded; one past its grace is a miss, told from its first bytes.
pub(super) fn usable(value: Value) -> Option<Entry> {
    let bytes = value.into_bytes()?;
    if Entry::is_gone(&bytes, now_ms()) {
        return None;
    }
    decode_bytes(&bytes)
}

pub(super) fn decode(value: Value) -> Option<Entry> {
    decode_bytes(&value.into_bytes()?)
}

fn decode_bytes(bytes: &Bytes) -> Option<Entry> {
    let entry = Entry::decode(bytes);
    if entry.is_none() {
        metrics::counter!("tower_ai_cache_l2_errors_total", "op" => "decode").increment(1);
    }
    entry
}

/// `[[stream, [[id, [field, value, …]], …]]]` (RESP2) or a map (RESP3).
pub(super) fn parse_xread(reply: Value) -> Vec<(String, Item)> {
    let streams = match reply {
        Value::Null => return Vec::new(),
        Value::Map(map) => map.inner().into_values().collect(),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| s.into_array().into_iter().nth(1))
            .collect::<Vec<_>>(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        for entry in entries.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(id) = id.as_string() else { continue };
            let mut fields = fields.into_array().into_iter();
            while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
                let item = match field.as_string().as_deref() {
                    Some("h") => value
                        .into_bytes()
                        .and_then(|b| Head::decode(&b))
                        .map(Item::Head),
                    Some("d") => value.into_bytes().map(Item::Data),
                    Some("e") => value.as_string().map(Item::End),
                    _ => None,
                };
                if let Some(item) = item {
                    out.push((id.clone(), item));
                }
            }
        }
    }
    out
}
