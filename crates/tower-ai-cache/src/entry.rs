//! A stored response and its compact binary form (the L2 value).
// Without Redis the binary form is unused.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::tag::TagId;

/// Versions the value layout; a value with another magic reads as a miss.
const MAGIC: &[u8; 4] = b"TAC1";
const HEAD_MAGIC: &[u8; 4] = b"TAH1";

const FLAG_TRAILERS: u8 = 1;
const FLAG_STREAM: u8 = 2;

/// The status line and headers of a stored response.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

impl Head {
    /// The head as it is stored: without hop-by-hop fields, `Age`,
    /// `Content-Length` (the replayed body sets its own) and the
    /// `Cache-Status` this layer adds.
    pub(crate) fn storable(status: StatusCode, headers: &HeaderMap) -> Self {
        let mut kept = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            if !is_dropped(name) {
                kept.append(name.clone(), owned(value));
            }
        }
        Self {
            status,
            headers: kept,
        }
    }

    /// Whether the body is a `text/event-stream`.
    pub(crate) fn is_stream(&self) -> bool {
        is_event_stream(&self.headers)
    }

    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + headers_len(&self.headers));
        out.put_slice(HEAD_MAGIC);
        out.put_u16(self.status.as_u16());
        put_headers(&mut out, &self.headers);
        out.freeze()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(4)? != HEAD_MAGIC {
            return None;
        }
        let status = StatusCode::from_u16(r.u16()?).ok()?;
        let headers = r.headers()?;
        Some(Self { status, headers })
    }
}

pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|p| p.eq_ignore_ascii_case("text/event-stream"))
        })
}

fn is_dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "age"
            | "content-length"
            | "cache-status"
            | "set-cookie"
    )
}

/// When and for how long an entry is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// When it was stored, in milliseconds since the Unix epoch (the storing
    /// replica's clock).
    pub(crate) stored_at_ms: u64,
    /// How long it is fresh.
    pub(crate) ttl_ms: u64,
    /// How long after that it may still be served when the upstream fails.
    pub(crate) grace_ms: u64,
    /// The response's own age when it was stored (an upstream cache's `Age`).
    pub(crate) age_at_store_ms: u64,
}

/// How an entry stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Fresh for this much longer.
    Fresh(Duration),
    /// Expired this long ago, still within its stale-if-error grace.
    Stale(Duration),
    /// Past its grace too.
    Gone,
}

impl Lifetime {
    pub(crate) fn new(ttl: Duration, grace: Duration, age_at_store: Duration) -> Self {
        Self {
            stored_at_ms: now_ms(),
            ttl_ms: millis(ttl),
            grace_ms: millis(grace),
            age_at_store_ms: millis(age_at_store),
        }
    }

    pub(crate) fn freshness(&self, now_ms: u64) -> Freshness {
        let fresh_until = self.stored_at_ms.saturating_add(self.ttl_ms);
        if now_ms < fresh_until {
            return Freshness::Fresh(Duration::from_millis(fresh_until - now_ms));
        }
        let past = now_ms - fresh_until;
        if past < self.grace_ms {
            Freshness::Stale(Duration::from_millis(past))
        } else {
            Freshness::Gone
        }
    }

    /// The `Age` of the response at `now_ms`.
    pub(crate) fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(
            now_ms
                .saturating_sub(self.stored_at_ms)
                .saturating_add(self.age_at_store_ms),
        )
    }

    /// How long the entry is worth keeping from `now_ms` on (until the end of
    /// its grace).
    pub(crate) fn keep_for(&self, now_ms: u64) -> Duration {
        let until = self
            .stored_at_ms
            .saturating_add(self.ttl_ms)
            .saturating_add(self.grace_ms);
        Duration::from_millis(until.saturating_sub(now_ms))
    }
}

/// A stored response.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) head: Arc<Head>,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) lifetime: Lifetime,
    /// The LLM tokens the answer cost (its `usage`), saved by each hit.
    pub(crate) tokens: u64,
    /// The tags it can be invalidated by.
    pub(crate) tags: Vec<TagId>,
}

impl Entry {
    /// The memory it holds, for the L1 bound: itself and its head, its
    /// buffers, and its slot in the L1 (within a few percent: a small
    /// answer's headers can hold more than its body).
    pub(crate) fn weight(&self) -> u32 {
        /// What the L1 spends on an entry besides the entry: its key, its
        /// bookkeeping, and the key it remembers for a while once evicted.
        const SLOT: usize = 160;
        let size = SLOT
            + 2 * ARC_COUNTS
            + size_of::<Self>()
            + size_of::<Head>()
            + self.body.len()
            + headers_memory(&self.head.headers)
            + self.trailers.as_ref().map_or(0, headers_memory)
            + self.tags.capacity() * size_of::<TagId>();
        u32::try_from(size).unwrap_or(u32::MAX)
    }

    pub(crate) fn is_stream(&self) -> bool {
        self.head.is_stream()
    }

    pub(crate) fn encode(&self) -> Bytes {
        let trailers_len = self.trailers.as_ref().map_or(0, headers_len);
        let mut out = BytesMut::with_capacity(
            64 + self.tags.len() * 16
                + headers_len(&self.head.headers)
                + self.body.len()
                + trailers_len,
        );
        out.put_slice(MAGIC);
        let mut flags = 0;
        if self.trailers.is_some() {
            flags |= FLAG_TRAILERS;
        }
        if self.is_stream() {
            flags |= FLAG_STREAM;
        }
        out.put_u8(flags);
        out.put_u16(self.head.status.as_u16());
        out.put_u64(self.lifetime.stored_at_ms);
        out.put_u64(self.lifetime.ttl_ms);
        out.put_u64(self.lifetime.grace_ms);
        out.put_u64(self.lifetime.age_at_store_ms);
        out.put_u64(self.tokens);
        out.put_u16(u16::try_from(self.tags.len()).unwrap_or(u16::MAX));
        for tag in self.tags.iter().take(usize::from(u16::MAX)) {
            out.put_slice(tag.as_bytes());
        }
        put_headers(&mut out, &self.head.headers);
        out.put_u32(u32::try_from(self.body.len()).unwrap_or(u32::MAX));
        out.put_slice(&self.body);
        if let Some(trailers) = &self.trailers {
            put_headers(&mut out, trailers);
        }
        out.freeze()
    }

    /// Whether an encoded entry is past its grace at `now_ms`, read from its
    /// fixed-size start alone; `false` when that start is malformed (for
    /// [`decode`](Self::decode) to say so).
    pub(crate) fn is_gone(bytes: &[u8], now_ms: u64) -> bool {
        Self::peek_lifetime(bytes).is_some_and(|l| l.freshness(now_ms) == Freshness::Gone)
    }

    fn peek_lifetime(bytes: &[u8]) -> Option<Lifetime> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return None;
        }
        r.take(3)?; // flags, status
        Some(Lifetime {
            stored_at_ms: r.u64()?,
            ttl_ms: r.u64()?,
            grace_ms: r.u64()?,
            age_at_store_ms: r.u64()?,
        })
    }

    /// Reads an encoded entry; `None` for anything malformed (read as a miss).
    pub(crate) fn decode(bytes: &Bytes) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return None;
        }
        let flags = r.u8()?;
        let status = StatusCode::from_u16(r.u16()?).ok()?;
        let lifetime = Lifetime {
            stored_at_ms: r.u64()?,
            ttl_ms: r.u64()?,
            grace_ms: r.u64()?,
            age_at_store_ms: r.u64()?,
        };
        let tokens = r.u64()?;
        let ntags = usize::from(r.u16()?);
        let mut tags = Vec::with_capacity(ntags.min(64));
        for _ in 0..ntags {
            let raw: [u8; 16] = r.take(16)?.try_into().ok()?;
            tags.push(TagId::from_bytes(raw));
        }
        let headers = r.headers()?;
        let body_len = r.u32()? as usize;
        let start = bytes.len() - r.0.len();
        r.take(body_len)?;
        let body = bytes.slice(start..start + body_len);
        let trailers = if flags & FLAG_TRAILERS != 0 {
            Some(r.headers()?)
        } else {
            None
        };
        Some(Self {
            head: Arc::new(Head { status, headers }),
            body,
            trailers,
            lifetime,
            tokens,
            tags,
        })
    }
}

/// `value` in an allocation of its own: a value parsed from the wire is a
/// slice of the connection's read buffer, which a stored copy would keep
/// alive whole (kilobytes for a few bytes) for as long as the entry lives.
fn owned(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// The strong and weak counts an `Arc` allocates beside its value.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

/// The memory a header map holds: its table (an index of four bytes per
/// slot, a third more slots than headers, and an entry per header with its
/// hash and links) and each header's own buffers.
fn headers_memory(headers: &HeaderMap) -> usize {
    const ENTRY: usize = size_of::<HeaderName>() + size_of::<HeaderValue>() + 48;
    let slots = headers.capacity();
    slots * ENTRY
        + (slots + slots / 3) * 4
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>()
}

fn headers_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum::<usize>()
        + 2
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    let count = headers.len().min(usize::from(u16::MAX));
    out.put_u16(u16::try_from(count).unwrap_or(u16::MAX));
    for (name, value) in headers.iter().take(count) {
        let name = name.as_str().as_bytes();
        out.put_u16(u16::try_from(name.len()).unwrap_or(u16::MAX));
        out.put_slice(name);
        out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        out.put_slice(value.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }

    fn headers(&mut self) -> Option<HeaderMap> {
        let count = usize::from(self.u16()?);
        let mut headers = HeaderMap::with_capacity(count.min(128));
        for _ in 0..count {
            let name_len = usize::from(self.u16()?);
            let name = HeaderName::from_bytes(self.take(name_len)?).ok()?;
            let value_len = self.u32()? as usize;
            let value = HeaderValue::from_bytes(self.take(value_len)?).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_head_keeps_no_slice_of_the_read_buffer() {
        // As hyper parses a head: values slicing the connection's buffer.
        let buffer = Bytes::from(vec![b'a'; 64 << 10]);
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_maybe_shared(buffer.slice(0..16)).expect("a value");
        headers.insert("x-request-id", value);
        let head = Head::storable(StatusCode::OK, &headers);
        let stored = head.headers["x-request-id"].as_bytes();
        assert_eq!(stored, &buffer[0..16]);
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&stored.as_ptr()),
            "the stored value points into the 64 KiB buffer"
        );
    }

    fn entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Entry {
            head: Arc::new(Head::storable(StatusCode::OK, &headers)),
            body: Bytes::from_static(b"data: x\n\n"),
            trailers: Some(trailers),
            lifetime: Lifetime::new(
                Duration::from_secs(60),
                Duration::from_secs(5),
                Duration::ZERO,
            ),
            tokens: 42,
            tags: vec![TagId::from_bytes([7; 16])],
        }
    }

    #[test]
    fn round_trip() {
        let e = entry();
        assert!(e.head.headers.get(header::CONTENT_LENGTH).is_none());
        let bytes = e.encode();
        let d = Entry::decode(&bytes);
        assert!(d.is_some());
        let Some(d) = d else { return };
        assert_eq!(d.head.status, StatusCode::OK);
        assert_eq!(d.head.headers, e.head.headers);
        assert_eq!(d.body, e.body);
        assert_eq!(d.trailers, e.trailers);
        assert_eq!(d.lifetime, e.lifetime);
        assert_eq!(d.tokens, 42);
        assert_eq!(d.tags, e.tags);
        assert!(d.is_stream());
        let head = Head::decode(&e.head.encode());
        assert_eq!(head.map(|h| h.headers), Some(e.head.headers.clone()));
    }

    #[test]
    fn garbage_is_a_miss_not_a_panic() {
        let bytes = entry().encode();
        for cut in 0..bytes.len() {
            assert!(Entry::decode(&bytes.slice(..cut)).is_none());
        }
        assert!(Entry::decode(&Bytes::from_static(b"nonsense")).is_none());
        assert!(Head::decode(b"TAH1\xff").is_none());
    }

    #[test]
    fn gone_is_seen_without_decoding() {
        let e = entry();
        let bytes = e.encode();
        let end = e.lifetime.stored_at_ms + e.lifetime.ttl_ms + e.lifetime.grace_ms;
        assert!(!Entry::is_gone(&bytes, e.lifetime.stored_at_ms));
        assert!(!Entry::is_gone(&bytes, end - 1));
        assert!(Entry::is_gone(&bytes, end));
        assert!(!Entry::is_gone(b"nonsense", u64::MAX));
        assert!(!Entry::is_gone(&bytes[..20], u64::MAX));
    }

    #[test]
    fn freshness() {
        let l = Lifetime {
            stored_at_ms: 1_000,
            ttl_ms: 100,
            grace_ms: 50,
            age_at_store_ms: 7,
        };
        assert_eq!(
            l.freshness(1_000),
            Freshness::Fresh(Duration::from_millis(100))
        );
        assert_eq!(
            l.freshness(1_120),
            Freshness::Stale(Duration::from_millis(20))
        );
        assert_eq!(l.freshness(1_150), Freshness::Gone);
        assert_eq!(l.age(1_010), Duration::from_millis(17));
        assert_eq!(l.keep_for(1_100), Duration::from_millis(50));
    }
}
