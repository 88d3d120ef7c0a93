//! What pull mode writes into Redis and reads back: the queue entry of a
//! request, the entries of a reply stream, and the parsing of `XREAD`-shaped
//! replies.

use bytes::{BufMut, Bytes, BytesMut};
use fred::types::Value;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};

/// The most bytes of body one reply entry carries; a larger frame is split.
pub(super) const MAX_CHUNK: usize = 64 * 1024;

/// Request headers that travel with a queued request (the rest are the
/// submitter's business: hop-by-hop, authentication meant for the gateway).
const KEPT_REQUEST_HEADERS: [HeaderName; 2] = [CONTENT_TYPE, ACCEPT];

/// Response headers that are about one connection, not the answer.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A queue entry's fields, built from a request and its id.
pub(super) fn request_fields(id: &str, req: &Request<Bytes>) -> Vec<Value> {
    let mut fields: Vec<Value> = vec![
        "id".into(),
        id.into(),
        "method".into(),
        req.method().as_str().into(),
        "uri".into(),
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .into(),
    ];
    for name in &KEPT_REQUEST_HEADERS {
        if let Some(value) = req.headers().get(name) {
            fields.push(name.as_str().into());
            fields.push(Value::Bytes(Bytes::copy_from_slice(value.as_bytes())));
        }
    }
    fields.push("body".into());
    fields.push(Value::Bytes(req.body().clone()));
    fields
}

/// A request as a puller got it from the queue.
#[derive(Debug)]
pub(super) struct QueuedRequest {
    /// The request's id (its reply stream's name), when the entry has a
    /// valid one.
    pub(super) id: Option<String>,
    /// The rebuilt request, or why it can't be.
    pub(super) request: Result<Request<Bytes>, &'static str>,
}

/// Rebuilds a request from its queue entry's fields.
pub(super) fn decode_request(fields: Vec<(String, Value)>) -> QueuedRequest {
    let mut id = None;
    let mut method = None;
    let mut uri = None;
    let mut body = Bytes::new();
    let mut headers = HeaderMap::new();
    for (field, value) in fields {
        match field.as_str() {
            "id" => id = value.as_string().filter(|s| valid_id(s)),
            "method" => method = value.into_bytes().and_then(|b| Method::from_bytes(&b).ok()),
            "uri" => uri = value.as_string(),
            "body" => body = value.into_bytes().unwrap_or_default(),
            other => {
                let name = KEPT_REQUEST_HEADERS.iter().find(|n| n.as_str() == other);
                let value = value
                    .into_bytes()
                    .and_then(|b| HeaderValue::from_maybe_shared(b).ok());
                if let (Some(name), Some(value)) = (name, value) {
                    headers.insert(name.clone(), value);
                }
            }
        }
    }
    let request = match (method, uri) {
        (Some(method), Some(uri)) => {
            let mut builder = Request::builder().method(method).uri(uri);
            if let Some(h) = builder.headers_mut() {
                *h = headers;
            }
            builder
                .body(body)
                .map_err(|_| "the queued request is invalid")
        }
        _ => Err("the queued request has no method or URI"),
    };
    QueuedRequest { id, request }
}

/// Whether `id` is what [`new_id`] makes: 32 lowercase hex digits.
pub(super) fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new request id: 128 random bits from the operating system, in hex.
pub(super) fn new_id() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    let mut id = String::with_capacity(32);
    for b in raw {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(id)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What one reply entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A new attempt starts: what came before from older attempts is void.
    Restart,
    /// The status and headers.
    Head,
    /// Body bytes at an offset of the attempt's body.
    Data,
    /// The body ended cleanly.
    End,
    /// The answer failed; the payload says why.
    Error,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Head => "head",
            Self::Data => "data",
            Self::End => "end",
            Self::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "restart" => Self::Restart,
            "head" => Self::Head,
            "data" => Self::Data,
            "end" => Self::End,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

/// One entry of a reply stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReplyEntry {
    /// The attempt that wrote it (the queue entry's delivery count).
    pub(super) attempt: u64,
    pub(super) kind: Kind,
    /// For data: where the payload starts in the attempt's body.
    pub(super) offset: u64,
    pub(super) payload: Bytes,
}

impl ReplyEntry {
    /// Reads an entry's fields; `None` when one is missing or malformed.
    pub(super) fn parse(fields: Vec<(String, Value)>) -> Option<Self> {
        let mut attempt = None;
        let mut kind = None;
        let mut offset = 0;
        let mut payload = Bytes::new();
        for (field, value) in fields {
            match field.as_str() {
                "attempt" => attempt = number(&value),
                "kind" => kind = value.as_string().as_deref().and_then(Kind::parse),
                "offset" => offset = number(&value)?,
                "payload" => payload = value.into_bytes().unwrap_or_default(),
                _ => {}
            }
        }
        Some(Self {
            attempt: attempt?,
            kind: kind?,
            offset,
            payload,
        })
    }
}

/// A decimal number, whichever way the reply typed it.
pub(super) fn number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_bytes()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
    })
}

/// A response head as a reply entry's payload: the status, then one
/// `name:value` line per header (a header value can't hold a line break).
pub(super) fn encode_head(status: StatusCode, headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + headers.len() * 32);
    out.put_slice(status.as_str().as_bytes());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        out.put_u8(b'\n');
        out.put_slice(name.as_str().as_bytes());
        out.put_u8(b':');
        out.put_slice(value.as_bytes());
    }
    out.freeze()
}

/// Reads a head written by [`encode_head`]; `None` when the status is
/// malformed (a malformed header line is skipped).
pub(super) fn decode_head(payload: &Bytes) -> Option<(StatusCode, HeaderMap)> {
    let mut lines = payload.split(|b| *b == b'\n');
    let status = StatusCode::from_bytes(lines.next()?).ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = HeaderName::from_bytes(&line[..colon]);
        let value = HeaderValue::from_bytes(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    Some((status, headers))
}

/// An entry of a stream: its id and its fields in order.
pub(super) type StreamEntry = (String, Vec<(String, Value)>);

/// The entries of an `XREAD`/`XREADGROUP` reply: `[[stream, [[id, [field,
/// value, …]], …]], …]` (RESP2) or a map of stream to entries (RESP3);
/// nil when nothing came.
pub(super) fn parse_xread(reply: Value) -> Vec<StreamEntry> {
    let streams: Vec<Value> = match reply {
        Value::Null => return Vec::new(),
        Value::Map(map) => map.inner().into_values().collect(),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| s.into_array().into_iter().nth(1))
            .collect(),
        _ => return Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(Value::into_array)
        .filter_map(parse_entry)
        .collect()
}

/// One `[id, [field, value, …]]`; `None` when malformed or deleted (nil
/// fields).
pub(super) fn parse_entry(entry: Value) -> Option<StreamEntry> {
    let mut parts = entry.into_array().into_iter();
    let id = parts.next()?.as_string()?;
    let fields = parts.next()?;
    if fields.is_null() {
        return None;
    }
    Some((id, pairs(fields)))
}

/// `[field, value, …]` as pairs.
pub(super) fn pairs(fields: Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut items = fields.into_array().into_iter();
    while let (Some(field), Some(value)) = (items.next(), items.next()) {
        if let Some(field) = field.as_string() {
            out.push((field, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_the_queue() {
        let req = Request::builder()
            .method("POST")
            .uri("http://gw/v1/chat/completions?x=1")
            .header("content-type", "application/json")
            .header("authorization", "Bearer secret")
            .body(Bytes::from_static(b"{\"a\":1}"))
            .unwrap();
        let id = new_id().unwrap();
        let fields = request_fields(&id, &req);
        let mut pairs = Vec::new();
        let mut it = fields.into_iter();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            pairs.push((f.as_string().unwrap(), v));
        }
        let queued = decode_request(pairs);
        assert_eq!(queued.id.as_deref(), Some(id.as_str()));
        let back = queued.request.unwrap();
        assert_eq!(back.method(), "POST");
        assert_eq!(back.uri(), "/v1/chat/completions?x=1");
        assert_eq!(back.headers()["content-type"], "application/json");
        assert!(back.headers().get("authorization").is_none());
        assert_eq!(back.body(), &Bytes::from_static(b"{\"a\":1}"));
    }

    #[test]
    fn ids_are_hex_and_differ() {
        let a = new_id().unwrap();
        assert!(valid_id(&a));
        assert_ne!(a, new_id().unwrap());
        assert!(!valid_id("../../x"));
    }

    #[test]
    fn a_head_round_trips_without_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2:3"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let payload = encode_head(StatusCode::CREATED, &headers);
        let (status, back) = decode_head(&payload).unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(back["content-type"], "text/event-stream");
        let xa: Vec<_> = back.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2:3"]);
        assert!(back.get("transfer-encoding").is_none());
        assert!(decode_head(&Bytes::from_static(b"abc")).is_none());
    }
}
