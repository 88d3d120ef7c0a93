//! The in-memory store: one process, bounded, forgetting.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Outcome, ResumeError, StoreError, StoredEvent, StreamStore, Subscription};
use crate::error::ConfigError;
use crate::id::{ResumeFrom, StreamId};

/// Streams kept in this process's memory.
///
/// Bounded in every direction: at most [`max_streams`] streams (the oldest
/// is forgotten first), at most [`max_events`] events and
/// [`max_stream_bytes`] bytes of one stream (its oldest events are dropped
/// first), at most [`max_total_bytes`] in all (the oldest streams are
/// forgotten first), and a stream is forgotten [`ttl`] after its last event.
/// A forgotten stream's events are freed at once; a client still reading it
/// gets an error and, when it reconnects, a `404`.
///
/// Appending costs a hash lookup under a short lock and wakes the stream's
/// readers; reading costs a lock per event and no copy (frames are shared
/// [`Bytes`]).
///
/// [`max_streams`]: MemoryStoreBuilder::max_streams
/// [`max_events`]: MemoryStoreBuilder::max_events
/// [`max_stream_bytes`]: MemoryStoreBuilder::max_stream_bytes
/// [`max_total_bytes`]: MemoryStoreBuilder::max_total_bytes
/// [`ttl`]: MemoryStoreBuilder::ttl
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    streams: Mutex<Streams>,
    total_bytes: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_streams: usize,
    max_events: usize,
    max_stream_bytes: usize,
    max_total_bytes: usize,
    ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 10_000,
            max_events: 10_000,
            max_stream_bytes: 4 << 20,
            max_total_bytes: 256 << 20,
            ttl: Duration::from_secs(600),
        }
    }
}

struct Streams {
    map: HashMap<StreamId, Arc<MemStream>>,
    /// Stream ids in the order they were created, for forgetting the oldest
    /// first; ids already forgotten are skipped when they come up.
    order: VecDeque<StreamId>,
    last_sweep: Instant,
}

/// One stream: its events and a signal that wakes its readers.
pub(crate) struct MemStream {
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

struct State {
    events: VecDeque<StoredEvent>,
    bytes: usize,
    /// The sequence number of `events[0]` (of the next event when empty).
    first_seq: u64,
    /// The last appended sequence number (`first_seq - 1` when none).
    last_seq: u64,
    end: Option<Outcome>,
    /// Forgotten by the store: events freed, readers stop.
    forgotten: bool,
    last_activity: Instant,
}

/// What a reader at some position finds next.
enum Next {
    Event(Bytes, u64),
    End,
    Wait,
    Lagged,
}

impl MemStream {
    fn new(first_seq: u64) -> Self {
        Self {
            state: Mutex::new(State {
                events: VecDeque::new(),
                bytes: 0,
                first_seq,
                last_seq: first_seq.saturating_sub(1),
                end: None,
                forgotten: false,
                last_activity: Instant::now(),
            }),
            changed: watch::Sender::new(()),
        }
    }

    fn next_after(&self, cursor: u64) -> Next {
        let state = self.state.lock();
        if state.forgotten || cursor.saturating_add(1) < state.first_seq {
            return Next::Lagged;
        }
        if cursor < state.last_seq {
            let index = usize::try_from(cursor + 1 - state.first_seq).unwrap_or(usize::MAX);
            return match state.events.get(index) {
                Some(event) => Next::Event(event.frame.clone(), event.seq),
                None => Next::Lagged,
            };
        }
        if state.end.is_some() {
            Next::End
        } else {
            Next::Wait
        }
    }

    /// Frees the events and stops the readers; returns the bytes freed.
    fn forget(&self) -> usize {
        let freed = {
            let mut state = self.state.lock();
            state.forgotten = true;
            state.events = VecDeque::new();
            std::mem::take(&mut state.bytes)
        };
        self.changed.send_replace(());
        freed
    }
}

impl MemoryStore {
    /// A store with the default bounds: 10,000 streams, 10,000 events and
    /// 4 MiB per stream, 256 MiB in all, forgotten 10 minutes after their
    /// last event.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A builder, to change the bounds.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            limits: Limits::default(),
        }
    }

    fn with_limits(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                streams: Mutex::new(Streams {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                    last_sweep: Instant::now(),
                }),
                total_bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// How many streams are kept now.
    pub fn len(&self) -> usize {
        self.inner.streams.lock().map.len()
    }

    /// Whether no stream is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of encoded events kept now, across every stream.
    pub fn bytes(&self) -> usize {
        self.inner.total_bytes.load(Ordering::Relaxed)
    }

    /// The bytes of encoded events kept for stream `id`, if it is kept.
    pub fn stream_bytes(&self, id: &StreamId) -> Option<usize> {
        self.get(id).map(|s| s.state.lock().bytes)
    }

    /// Whether stream `id` is kept here.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn contains(&self, id: &StreamId) -> bool {
        self.inner.streams.lock().map.contains_key(id)
    }

    fn get(&self, id: &StreamId) -> Option<Arc<MemStream>> {
        self.inner.streams.lock().map.get(id).cloned()
    }

    /// Starts keeping stream `id` from event `first_seq` on (1 for a new
    /// stream; later for a mirror of a stream whose start is elsewhere).
    /// Replaces a stream of the same id.
    pub(crate) fn create_at(&self, id: &StreamId, first_seq: u64) {
        let limits = self.inner.limits;
        let now = Instant::now();
        let mut forgotten = Vec::new();
        {
            let mut streams = self.inner.streams.lock();
            if now.duration_since(streams.last_sweep) >= sweep_interval(limits.ttl) {
                streams.last_sweep = now;
                streams.map.retain(|_, stream| {
                    let expired =
                        now.duration_since(stream.state.lock().last_activity) > limits.ttl;
                    if expired {
                        forgotten.push(stream.clone());
                    }
                    !expired
                });
                let map = &streams.map;
                let order: VecDeque<StreamId> = streams
                    .order
                    .iter()
                    .filter(|id| map.contains_key(id))
                    .copied()
                    .collect();
                streams.order = order;
            }
            while streams.map.len() >= limits.max_streams {
                let Some(oldest) = streams.order.pop_front() else {
                    break;
                };
                if let Some(stream) = streams.map.remove(&oldest) {
                    forgotten.push(stream);
                }
            }
            if let Some(old) = streams.map.insert(*id, Arc::new(MemStream::new(first_seq))) {
                forgotten.push(old);
            } else {
                streams.order.push_back(*id);
            }
        }
        self.release(&forgotten);
    }

    /// Forgets stream `id` (a mirror whose tail stopped), if it is kept.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remove(&self, id: &StreamId) {
        let removed = self.inner.streams.lock().map.remove(id);
        if let Some(stream) = removed {
            self.release(&[stream]);
        }
    }

    /// Forgets the streams whose events made room for `keep`'s, oldest
    /// first, until the store is within its byte budget again.
    fn enforce_total(&self, keep: &StreamId) {
        let limits = self.inner.limits;
        if self.bytes() <= limits.max_total_bytes {
            return;
        }
        let mut forgotten = Vec::new();
        {
            let mut streams = self.inner.streams.lock();
            let mut kept = VecDeque::new();
            let mut excess = self.bytes().saturating_sub(limits.max_total_bytes);
            while excess > 0 {
                let Some(oldest) = streams.order.pop_front() else {
                    break;
                };
                if oldest == *keep {
                    kept.push_back(oldest);
                    continue;
                }
                if let Some(stream) = streams.map.remove(&oldest) {
                    excess = excess.saturating_sub(stream.state.lock().bytes);
                    forgotten.push(stream);
                }
            }
            while let Some(id) = kept.pop_back() {
                streams.order.push_front(id);
            }
        }
        self.release(&forgotten);
    }

    fn release(&self, forgotten: &[Arc<MemStream>]) {
        for stream in forgotten {
            let freed = stream.forget();
            self.inner.total_bytes.fetch_sub(freed, Ordering::Relaxed);
        }
        if !forgotten.is_empty() {
            metrics::counter!("tower_ai_sse_store_forgotten_total", "store" => "memory")
                .increment(forgotten.len() as u64);
        }
    }

    /// Appends to a kept stream; see [`StreamStore::append`].
    pub(crate) fn append_now(
        &self,
        id: &StreamId,
        events: &[StoredEvent],
    ) -> Result<(), StoreError> {
        let stream = self.get(id).ok_or(StoreError::NotFound)?;
        let limits = self.inner.limits;
        let (added, freed) = {
            let mut state = stream.state.lock();
            if state.forgotten {
                return Err(StoreError::NotFound);
            }
            let mut added = 0usize;
            for event in events {
                if event.seq <= state.last_seq {
                    // Already kept: an append retried.
                    continue;
                }
                if event.seq != state.last_seq + 1 {
                    return Err(StoreError::Corrupt(format!(
                        "event {} appended after event {}",
                        event.seq, state.last_seq
                    )));
                }
                added += event.frame.len();
                state.bytes += event.frame.len();
                state.last_seq = event.seq;
                state.events.push_back(event.clone());
            }
            let mut freed = 0usize;
            while state.events.len() > limits.max_events || state.bytes > limits.max_stream_bytes {
                let Some(oldest) = state.events.pop_front() else {
                    break;
                };
                freed += oldest.frame.len();
                state.bytes -= oldest.frame.len();
                state.first_seq = oldest.seq + 1;
            }
            state.last_activity = Instant::now();
            (added, freed)
        };
        stream.changed.send_replace(());
        self.inner.total_bytes.fetch_add(added, Ordering::Relaxed);
        self.inner.total_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.enforce_total(id);
        Ok(())
    }

    /// Marks a kept stream as ended; see [`StreamStore::finish`].
    pub(crate) fn finish_now(
        &self,
        id: &StreamId,
        last_seq: u64,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let stream = self.get(id).ok_or(StoreError::NotFound)?;
        {
            let mut state = stream.state.lock();
            if state.last_seq != last_seq {
                return Err(StoreError::Corrupt(format!(
                    "finished at event {last_seq}, but the last kept event is {}",
                    state.last_seq
                )));
            }
            state.end = Some(outcome);
            state.last_activity = Instant::now();
        }
        stream.changed.send_replace(());
        Ok(())
    }

    /// The first kept sequence number, if the stream is kept.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn first_seq(&self, id: &StreamId) -> Option<u64> {
        self.get(id).map(|s| s.state.lock().first_seq)
    }

    /// Reads a kept stream after `cursor`, which may be past its last event
    /// (a mirror that lags behind the store it mirrors).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn subscribe_from(
        &self,
        id: &StreamId,
        cursor: u64,
    ) -> Result<Subscription, StoreError> {
        let stream = self.get(id).ok_or(StoreError::NotFound)?;
        {
            let state = stream.state.lock();
            if state.forgotten || cursor.saturating_add(1) < state.first_seq {
                return Err(StoreError::Lagged);
            }
            if state.end.is_some() {
                if cursor == state.last_seq {
                    return Ok(Subscription::finished());
                }
                if cursor > state.last_seq {
                    return Err(StoreError::Corrupt(format!(
                        "the stream ended at event {}, before event {cursor}",
                        state.last_seq
                    )));
                }
            }
        }
        Ok(subscription(stream, cursor))
    }

    /// Subscribes, answering from memory; see [`StreamStore::subscribe`].
    pub(crate) fn subscribe_now(
        &self,
        id: &StreamId,
        from: ResumeFrom,
    ) -> Result<Subscription, ResumeError> {
        let stream = self.get(id).ok_or(ResumeError::UnknownStream)?;
        let cursor = {
            let state = stream.state.lock();
            let cursor = match from {
                ResumeFrom::Earliest => state.first_seq.saturating_sub(1),
                ResumeFrom::After(event) => {
                    let after = event.seq();
                    if after > state.last_seq {
                        return Err(ResumeError::UnknownEvent);
                    }
                    if after.saturating_add(1) < state.first_seq {
                        return Err(ResumeError::Expired);
                    }
                    after
                }
            };
            if state.end.is_some() && cursor == state.last_seq {
                return Ok(Subscription::finished());
            }
            cursor
        };
        Ok(subscription(stream, cursor))
    }
}

/// Reads `stream` after `cursor`: the kept events, then each new one as it
/// is appended, until the end.
fn subscription(stream: Arc<MemStream>, cursor: u64) -> Subscription {
    let changed = stream.changed.subscribe();
    let frames =
        futures_util::stream::unfold(Some((stream, changed, cursor)), |reader| async move {
            let (stream, mut changed, cursor) = reader?;
            loop {
                // Marked seen before looking, so an append after the look
                // wakes the wait below.
                changed.borrow_and_update();
                match stream.next_after(cursor) {
                    Next::Event(frame, seq) => {
                        return Some((Ok(frame), Some((stream, changed, seq))));
                    }
                    Next::End => return None,
                    Next::Lagged => return Some((Err(StoreError::Lagged), None)),
                    Next::Wait => {
                        if changed.changed().await.is_err() {
                            return Some((Err(StoreError::NotFound), None));
                        }
                    }
                }
            }
        });
    Subscription::new(Box::pin(frames))
}

/// How often expired streams are looked for: a quarter of the TTL, between
/// one second and one minute.
fn sweep_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("limits", &self.inner.limits)
            .field("streams", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl StreamStore for MemoryStore {
    async fn create(&self, id: &StreamId) -> Result<(), StoreError> {
        self.create_at(id, 1);
        Ok(())
    }

    async fn append(&self, id: &StreamId, events: &[StoredEvent]) -> Result<(), StoreError> {
        self.append_now(id, events)
    }

    async fn finish(
        &self,
        id: &StreamId,
        last_seq: u64,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        self.finish_now(id, last_seq, outcome)
    }

    async fn subscribe(
        &self,
        id: &StreamId,
        from: ResumeFrom,
    ) -> Result<Subscription, ResumeError> {
        self.subscribe_now(id, from)
    }
}

/// Builds a [`MemoryStore`] with other bounds.
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    limits: Limits,
}

impl MemoryStoreBuilder {
    /// The most streams kept (default 10,000); past it the oldest is
    /// forgotten.
    pub fn max_streams(mut self, streams: usize) -> Self {
        self.limits.max_streams = streams;
        self
    }

    /// The most events kept of one stream (default 10,000); past it its
    /// oldest events are dropped.
    pub fn max_events(mut self, events: usize) -> Self {
        self.limits.max_events = events;
        self
    }

    /// The most bytes kept of one stream (default 4 MiB); past it its oldest
    /// events are dropped.
    pub fn max_stream_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_stream_bytes = bytes;
        self
    }

    /// The most bytes kept in all (default 256 MiB); past it the oldest
    /// streams are forgotten.
    pub fn max_total_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_total_bytes = bytes;
        self
    }

    /// How long a stream is kept after its last event (default 10 minutes).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.limits.ttl = ttl;
        self
    }

    /// The store.
    ///
    /// # Errors
    ///
    /// When a bound is zero.
    pub fn build(self) -> Result<MemoryStore, ConfigError> {
        let l = self.limits;
        let bounds = [
            ("max_streams", l.max_streams),
            ("max_events", l.max_events),
            ("max_stream_bytes", l.max_stream_bytes),
            ("max_total_bytes", l.max_total_bytes),
        ];
        if let Some(&(bound, _)) = bounds.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::ZeroMemoryBound { bound });
        }
        if l.ttl.is_zero() {
            return Err(ConfigError::ZeroMemoryTtl);
        }
        Ok(MemoryStore::with_limits(l))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::id::EventId;

    fn id(n: u8) -> StreamId {
        let text = format!(
            "{}{}",
            "A".repeat(21),
            ["A", "Q", "g", "w"][usize::from(n % 4)]
        );
        StreamId::parse(&text).unwrap()
    }

    fn events(range: std::ops::RangeInclusive<u64>) -> Vec<StoredEvent> {
        range
            .map(|seq| StoredEvent::new(seq, format!("data: {seq}\n\n")))
            .collect()
    }

    async fn read_all(sub: Subscription) -> Vec<Bytes> {
        sub.into_stream().map(|r| r.unwrap()).collect().await
    }

    #[tokio::test]
    async fn trims_each_stream_and_reports_what_is_gone() {
        let store = MemoryStore::builder().max_events(3).build().unwrap();
        let s = id(0);
        store.create_at(&s, 1);
        store.append_now(&s, &events(1..=5)).unwrap();
        store.finish_now(&s, 5, Outcome::Completed).unwrap();
        assert_eq!(store.first_seq(&s), Some(3));
        let after = |seq| ResumeFrom::After(EventId::new(s, seq));
        assert_eq!(
            store.subscribe_now(&s, after(1)).err(),
            Some(ResumeError::Expired)
        );
        assert_eq!(
            read_all(store.subscribe_now(&s, after(2)).unwrap())
                .await
                .len(),
            3
        );
        assert_eq!(
            read_all(store.subscribe_now(&s, ResumeFrom::Earliest).unwrap())
                .await
                .len(),
            3
        );
        assert!(store.subscribe_now(&s, after(5)).unwrap().is_finished());
        assert_eq!(
            store.subscribe_now(&s, after(6)).err(),
            Some(ResumeError::UnknownEvent)
        );
        assert_eq!(store.stream_bytes(&s), Some(3 * 9));
        assert_eq!(store.bytes(), 3 * 9);
    }

    #[tokio::test]
    async fn bounds_streams_and_bytes() {
        let store = MemoryStore::builder()
            .max_streams(2)
            .max_total_bytes(40)
            .build()
            .unwrap();
        for n in 0..3 {
            store.create_at(&id(n), 1);
        }
        assert_eq!(store.len(), 2);
        assert!(!store.contains(&id(0)), "the oldest stream is forgotten");
        store.append_now(&id(1), &events(1..=3)).unwrap();
        assert_eq!(store.bytes(), 27);
        store.append_now(&id(2), &events(1..=2)).unwrap();
        // 45 bytes > 40: the oldest other stream goes.
        assert!(!store.contains(&id(1)));
        assert_eq!(store.bytes(), 18);
        assert!(store.append_now(&id(1), &events(4..=4)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_streams_after_their_ttl() {
        let store = MemoryStore::builder()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        store.create_at(&id(0), 1);
        store.append_now(&id(0), &events(1..=1)).unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        store.create_at(&id(1), 1);
        assert!(store.contains(&id(0)));
        // Looked for a quarter of the TTL after the last look.
        tokio::time::advance(Duration::from_secs(2)).await;
        store.create_at(&id(2), 1);
        assert!(store.contains(&id(0)));
        tokio::time::advance(Duration::from_secs(14)).await;
        store.create_at(&id(3), 1);
        assert!(!store.contains(&id(0)));
        assert_eq!(store.bytes(), 0);
    }

    #[tokio::test]
    async fn a_forgotten_stream_stops_its_readers() {
        let store = MemoryStore::new();
        let s = id(0);
        store.create_at(&s, 1);
        store.append_now(&s, &events(1..=1)).unwrap();
        let mut sub = store
            .subscribe_now(&s, ResumeFrom::Earliest)
            .unwrap()
            .into_stream();
        assert!(matches!(sub.next().await, Some(Ok(_))));
        let next = tokio::spawn(async move { sub.next().await });
        tokio::task::yield_now().await;
        store.remove(&s);
        assert_eq!(next.await.unwrap(), Some(Err(StoreError::Lagged)));
    }

    #[tokio::test]
    async fn appends_in_order_only() {
        let store = MemoryStore::new();
        let s = id(0);
        store.create_at(&s, 1);
        store.append_now(&s, &events(1..=2)).unwrap();
        // A retried append is skipped; a gap is refused.
        store.append_now(&s, &events(2..=3)).unwrap();
        assert!(matches!(
            store.append_now(&s, &events(5..=5)),
            Err(StoreError::Corrupt(_))
        ));
        assert!(store.finish_now(&s, 2, Outcome::Completed).is_err());
        store.finish_now(&s, 3, Outcome::Completed).unwrap();
        let all = read_all(store.subscribe_now(&s, ResumeFrom::Earliest).unwrap()).await;
        assert_eq!(
            all,
            vec![
                Bytes::from("data: 1\n\n"),
                Bytes::from("data: 2\n\n"),
                Bytes::from("data: 3\n\n")
            ]
        );
        assert_eq!(
            store.subscribe_now(&id(1), ResumeFrom::Earliest).err(),
            Some(ResumeError::UnknownStream)
        );
        assert!(MemoryStore::builder().max_events(0).build().is_err());
        assert!(MemoryStore::builder().ttl(Duration::ZERO).build().is_err());
    }

    #[tokio::test]
    async fn a_mirror_may_start_late_and_lag() {
        let store = MemoryStore::new();
        let s = id(0);
        store.create_at(&s, 4);
        assert!(matches!(
            store.subscribe_from(&s, 2),
            Err(StoreError::Lagged)
        ));
        let sub = store.subscribe_from(&s, 5).unwrap();
        store.append_now(&s, &events(4..=7)).unwrap();
        store.finish_now(&s, 7, Outcome::Completed).unwrap();
        assert_eq!(
            read_all(sub).await,
            vec![Bytes::from("data: 6\n\n"), Bytes::from("data: 7\n\n")]
        );
    }
}
