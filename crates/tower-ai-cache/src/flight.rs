//! Single flight within one process: the first miss for a key leads (calls
//! the upstream, or follows another replica's call), the others follow it.
//!
//! A [`Flight`] is also the recording of the leader's response: the head,
//! the body chunks as they pass, and how it ended. A follower of a streamed
//! answer replays the chunks recorded so far and then receives the rest as
//! they arrive; a follower of any other answer waits for its end.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use quick_cache::DefaultHashBuilder;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::entry::{Entry, Head};
use crate::key::CacheKey;

/// Where a finished flight's entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Found in the cache (L2, or stored meanwhile).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Cache,
    /// Answered by the upstream for this flight (here or on another replica).
    Upstream,
}

/// How a flight ended.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// A complete answer, stored.
    Stored(Arc<Entry>, Source),
    /// No storable answer: the waiters go on without it. With `retry`, the
    /// leader went away without an answer, and a waiter may lead a new
    /// flight; without it the answer was not cacheable.
    Abandoned { retry: bool },
    /// The recording broke midway (the body failed, the client left, it grew
    /// too large).
    Aborted,
    /// The answer ended normally but is not stored (a `length` finish, an
    /// in-band error): live followers end as the leader did, waiting ones go
    /// on without it.
    Finished,
}

#[derive(Debug, Default)]
struct State {
    head: Option<Arc<Head>>,
    chunks: Vec<Bytes>,
    bytes: usize,
    trailers: Option<HeaderMap>,
    end: Option<End>,
}

/// One in-flight response, recorded as it passes.
#[derive(Debug)]
pub(crate) struct Flight {
    state: Mutex<State>,
    notify: Arc<Notify>,
    max_bytes: usize,
}

/// What a waiting follower gets.
#[derive(Debug)]
pub(crate) enum Wait {
    /// The stored answer.
    Entry(Arc<Entry>, Source),
    /// A streamed answer has started: follow it live.
    Stream(Arc<Head>),
    /// No answer to share: go on without the flight.
    Proceed { retry: bool },
}

impl Flight {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Arc::new(Notify::new()),
            max_bytes,
        }
    }

    /// Sets the response head (once).
    pub(crate) fn set_head(&self, head: Arc<Head>) {
        {
            let mut s = self.state.lock();
            if s.head.is_some() || s.end.is_some() {
                return;
            }
            s.head = Some(head);
        }
        self.notify.notify_waiters();
    }

    /// Records a chunk; `false` (and the flight aborted) once the recording
    /// is over its bound.
    pub(crate) fn push(&self, chunk: Bytes) -> bool {
        let ok = {
            let mut s = self.state.lock();
            if s.end.is_some() {
                return false;
            }
            s.bytes += chunk.len();
            if s.bytes > self.max_bytes {
                s.end = Some(End::Aborted);
                s.chunks = Vec::new();
                false
            } else {
                s.chunks.push(chunk);
                true
            }
        };
        self.notify.notify_waiters();
        ok
    }

    pub(crate) fn set_trailers(&self, trailers: HeaderMap) {
        self.state.lock().trailers = Some(trailers);
    }

    /// The recorded body so far, as one buffer, and the trailers.
    pub(crate) fn body(&self) -> (Bytes, Option<HeaderMap>) {
        let s = self.state.lock();
        let body = match s.chunks.as_slice() {
            [] => Bytes::new(),
            // A copy, not a slice of the buffer the chunk was read into,
            // which the stored answer would keep alive whole.
            [one] => Bytes::copy_from_slice(one),
            many => {
                let mut buf = Vec::with_capacity(s.bytes);
                for c in many {
                    buf.extend_from_slice(c);
                }
                Bytes::from(buf)
            }
        };
        (body, s.trailers.clone())
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn head(&self) -> Option<Arc<Head>> {
        self.state.lock().head.clone()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state.lock().end.is_some()
    }

    /// Ends the flight (the first end wins).
    pub(crate) fn end(&self, end: End) {
        {
            let mut s = self.state.lock();
            if s.end.is_some() {
                return;
            }
            s.end = Some(end);
        }
        self.notify.notify_waiters();
    }

    fn poll_wait(&self) -> Option<Wait> {
        let s = self.state.lock();
        match &s.end {
            Some(End::Stored(entry, source)) => return Some(Wait::Entry(entry.clone(), *source)),
            Some(End::Abandoned { retry }) => return Some(Wait::Proceed { retry: *retry }),
            Some(End::Aborted | End::Finished) => return Some(Wait::Proceed { retry: false }),
            None => {}
        }
        match &s.head {
            Some(head) if head.is_stream() => Some(Wait::Stream(head.clone())),
            _ => None,
        }
    }

    /// Waits until the flight has something for a follower.
    pub(crate) async fn wait(&self) -> Wait {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(w) = self.poll_wait() {
                return w;
            }
            notified.await;
        }
    }
}

/// What a live follower reads next.
pub(crate) enum Next {
    Chunk(Bytes),
    Trailers(HeaderMap),
    End,
    Broken,
}

/// Reads a flight's chunks from the start, then live.
pub(crate) struct Cursor {
    flight: Arc<Flight>,
    next: usize,
    trailers_sent: bool,
    wait: Option<Pin<Box<OwnedNotified>>>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor").field("next", &self.next).finish()
    }
}

impl Cursor {
    pub(crate) fn new(flight: Arc<Flight>) -> Self {
        Self {
            flight,
            next: 0,
            trailers_sent: false,
            wait: None,
        }
    }

    fn read(&mut self) -> Option<Next> {
        let s = self.flight.state.lock();
        if let Some(chunk) = s.chunks.get(self.next) {
            self.next += 1;
            return Some(Next::Chunk(chunk.clone()));
        }
        match &s.end {
            None => None,
            Some(End::Stored(..) | End::Finished) => {
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(t) = s.trailers.clone() {
                        return Some(Next::Trailers(t));
                    }
                }
                Some(Next::End)
            }
            Some(End::Abandoned { .. } | End::Aborted) => Some(Next::Broken),
        }
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        loop {
            if let Some(wait) = self.wait.as_mut() {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            let mut notified = Box::pin(self.flight.notify.clone().notified_owned());
            notified.as_mut().enable();
            if let Some(next) = self.read() {
                return Poll::Ready(next);
            }
            self.wait = Some(notified);
        }
    }
}

/// The flights' table is split in this many shards, each behind its own
/// lock, by a byte of the key (a digest: its bytes are uniform). A miss
/// takes its shard's lock twice (to join, to leave): misses of other keys,
/// on other cores, rarely wait for it.
const SHARDS: usize = 16;

type Table = HashMap<CacheKey, Arc<Flight>, DefaultHashBuilder>;

/// The flights of one layer, bounded.
#[derive(Debug)]
pub(crate) struct Flights {
    shards: Box<[Mutex<Table>]>,
    /// The flights in the table, across the shards: at most `max`.
    count: AtomicUsize,
    max: usize,
    max_bytes: usize,
}

/// The outcome of joining a key's flight.
pub(crate) enum Join {
    Lead(LeadGuard),
    Follow(Arc<Flight>),
}

impl Flights {
    pub(crate) fn new(max: usize, max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            count: AtomicUsize::new(0),
            max,
            max_bytes,
        }
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<Table> {
        &self.shards[usize::from(key.as_bytes()[0]) % SHARDS]
    }

    /// Follows the key's flight, or starts one. When `max` flights are
    /// already in the air, the caller leads a flight nobody can join.
    pub(crate) fn join(self: &Arc<Self>, key: CacheKey) -> Join {
        let flight = {
            let mut map = self.shard(&key).lock();
            if let Some(f) = map.get(&key) {
                return Join::Follow(f.clone());
            }
            // Counted before it is added: a flight is in the table only
            // while its count is, so the table never holds more than `max`.
            if self.count.fetch_add(1, Ordering::Relaxed) < self.max {
                let flight = Arc::new(Flight::new(self.max_bytes));
                map.insert(key, flight.clone());
                Some(flight)
            } else {
                self.count.fetch_sub(1, Ordering::Relaxed);
                None
            }
        };
        match flight {
            Some(flight) => Join::Lead(LeadGuard {
                flight,
                flights: Some((self.clone(), key)),
            }),
            None => {
                metrics::counter!("tower_ai_cache_flights_full_total").increment(1);
                Join::Lead(self.detached())
            }
        }
    }

    /// A flight nobody can join (a `no-cache` refresh).
    pub(crate) fn detached(&self) -> LeadGuard {
        LeadGuard {
            flight: Arc::new(Flight::new(self.max_bytes)),
            flights: None,
        }
    }

    fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.shard(key).lock();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// The leader's hold on a flight: ending it (or dropping the guard, which
/// abandons it) lets the key lead a new flight.
pub(crate) struct LeadGuard {
    flight: Arc<Flight>,
    flights: Option<(Arc<Flights>, CacheKey)>,
}

impl std::fmt::Debug for LeadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadGuard")
            .field("joinable", &self.flights.is_some())
            .finish()
    }
}

impl LeadGuard {
    pub(crate) fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Ends the flight and frees the key.
    pub(crate) fn finish(mut self, end: End) {
        self.flight.end(end);
        self.release();
    }

    fn release(&mut self) {
        if let Some((flights, key)) = self.flights.take() {
            flights.remove(&key, &self.flight);
        }
    }
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        if self.flights.is_some() || !self.flight.is_ended() {
            self.flight.end(End::Abandoned { retry: true });
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_chunk_body_is_copied_out_of_its_read_buffer() {
        let buffer = Bytes::from(vec![b'x'; 64 << 10]);
        let flight = Flight::new(1 << 20);
        assert!(flight.push(buffer.slice(0..100)));
        let (body, _) = flight.body();
        assert_eq!(body, buffer.slice(0..100));
        assert!(
            !buffer.as_ptr_range().contains(&body.as_ptr()),
            "the stored body points into the 64 KiB buffer"
        );
    }

    #[tokio::test]
    async fn followers_see_chunks_then_the_end() {
        let flights = Arc::new(Flights::new(10, 1 << 20));
        let key = CacheKey::from_bytes([1; 32]);
        let Join::Lead(lead) = flights.join(key) else {
            panic!("the first joins as leader");
        };
        let Join::Follow(f) = flights.join(key) else {
            panic!("the second follows");
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        lead.flight()
            .set_head(Arc::new(Head::storable(http::StatusCode::OK, &headers)));
        assert!(matches!(f.wait().await, Wait::Stream(_)));
        lead.flight().push(Bytes::from_static(b"a"));
        let mut cursor = Cursor::new(f.clone());
        let next = std::future::poll_fn(|cx| cursor.poll_next(cx)).await;
        assert!(matches!(next, Next::Chunk(c) if c == "a"));
        drop(lead);
        let next = std::future::poll_fn(|cx| cursor.poll_next(cx)).await;
        assert!(matches!(next, Next::Broken));
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn the_map_is_bounded() {
        let flights = Arc::new(Flights::new(1, 1 << 20));
        let _a = flights.join(CacheKey::from_bytes([1; 32]));
        let b = flights.join(CacheKey::from_bytes([2; 32]));
        assert!(matches!(b, Join::Lead(ref g) if g.flights.is_none()));
        assert_eq!(flights.len(), 1);
    }

    #[test]
    fn the_bound_holds_across_shards_and_frees_on_release() {
        let flights = Arc::new(Flights::new(3, 1 << 20));
        // One key in each of more shards than the bound.
        let leads: Vec<Join> = (0..SHARDS as u8)
            .map(|b| flights.join(CacheKey::from_bytes([b; 32])))
            .collect();
        let joinable = |j: &Join| matches!(j, Join::Lead(g) if g.flights.is_some());
        assert_eq!(leads.iter().filter(|j| joinable(j)).count(), 3);
        assert_eq!(flights.len(), 3);
        // A held key is followed, in whichever shard it is.
        assert!(matches!(
            flights.join(CacheKey::from_bytes([0; 32])),
            Join::Follow(_)
        ));
        drop(leads);
        assert_eq!(flights.len(), 0);
        let again = flights.join(CacheKey::from_bytes([SHARDS as u8 - 1; 32]));
        assert!(joinable(&again));
    }

    #[test]
    fn recording_is_bounded() {
        let f = Flight::new(3);
        assert!(f.push(Bytes::from_static(b"ab")));
        assert!(!f.push(Bytes::from_static(b"cd")));
        assert!(f.is_ended());
    }
}
