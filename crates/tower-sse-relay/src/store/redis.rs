//! The Redis store: each stream is a Redis Stream, shared by every replica.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, StreamsInterface};
use fred::types::Value;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_ai_core::redis::{Degrade, DegradeConfig, KeySpace, Script, Tag};

use super::memory::MemoryStore;
use super::{Outcome, ResumeError, StoreError, StoredEvent, StreamStore, Subscription};
use crate::ConfigError;
use crate::id::{ResumeFrom, StreamId};

static APPEND: &str = include_str!("append.lua");

/// Streams kept in Redis Streams (standalone or Cluster), shared by every
/// replica, with a local copy for the readers of this process.
///
/// # Layout
///
/// Stream `id` is the Redis Stream `{prefix}:sse:{id}:events` (the stream id
/// is a server-made random id, checked strictly before it names a key; the
/// braces are its Cluster hash tag). Entry `0-1` marks the stream's
/// creation, entry `{seq}-0` holds event `seq`'s encoded frame (field `e`),
/// and entry `{last}-1` marks the end (field `end`: the [`Outcome`]). So a
/// client's `Last-Event-ID` maps straight to an entry id: the events after
/// event `k` are `XRANGE key (k-0 +`, and the live tail is `XREAD` from
/// `k-0`, never from `$`, so nothing appended between the two reads is lost.
/// Every append is one `EVALSHA` (`XADD … MAXLEN n` for each event of the
/// batch, then `PEXPIRE`), idempotent when retried.
///
/// # Reading
///
/// The process that generates a stream keeps it in its local
/// [`MemoryStore`] too, and its readers read that copy: no Redis round trip
/// per event read. An event goes to Redis before it goes to that copy, so
/// an event a client has seen can be resumed from on any replica. A reader elsewhere first reads the backlog with `XRANGE`
/// pages, then the live tail from one `XREAD BLOCK` loop per stream and
/// process, on a connection of its own (blocking reads never stall other
/// commands), which feeds a local copy that every reader of the stream in
/// this process shares. At most [`max_tails`] such connections exist; past
/// them a tail polls with non-blocking `XREAD`s instead.
///
/// # When Redis is down
///
/// Every call but the blocking read goes through a [`Degrade`] (timeout,
/// backoff, one probe). While Redis is down, streams are kept locally only:
/// this process can still resume them, other replicas answer `503` (or `404`
/// for streams created meanwhile). Events Redis did not confirm are sent
/// again with the stream's next append (appends are idempotent), and a
/// stream's end is retried for about a minute, so a short outage costs
/// nothing but a delay. A stream that missed more events than Redis keeps of
/// one is written no more, except its end marker, so a remote reader stops
/// with an error instead of waiting, and a client that reconnects elsewhere
/// is told the events are gone (`410`).
///
/// # Example
/// ```no_run
/// use tower_ai_core::redis::{ConnectOptions, connect};
/// use tower_sse_relay::SseRelayLayer;
/// use tower_sse_relay::store::RedisStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
/// let store = RedisStore::builder(client)
///     .prefix("myapp")
///     .max_events(5_000)
///     .build()?;
/// let relay = SseRelayLayer::builder().resumable(store).build()?;
/// # let _ = relay;
/// # Ok(()) }
/// ```
///
/// [`max_tails`]: RedisStoreBuilder::max_tails
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: KeySpace,
    append: Script,
    degrade: Degrade,
    local: MemoryStore,
    max_len: u64,
    ttl_ms: u64,
    page: u64,
    block: Duration,
    max_idle: Duration,
    poll_interval: Duration,
    max_tails: usize,
    /// Remote tails running in this process, by stream.
    tails: Mutex<HashMap<StreamId, Weak<TailHandle>>>,
    /// Idle connections for blocking reads.
    blocking: Mutex<Vec<Client>>,
    tail_slots: Arc<Semaphore>,
    /// Entries of streams generated here that Redis has not confirmed yet:
    /// sent again with the next append (appends are idempotent).
    pending: Mutex<HashMap<StreamId, Pending>>,
}

/// One stream entry to write: id, field, value.
type RawEntry = (String, &'static str, Bytes);

/// What Redis has not confirmed of a stream.
#[derive(Debug, Default)]
struct Pending {
    entries: Vec<RawEntry>,
    /// More went unconfirmed than Redis keeps of a stream: it can't be
    /// caught up any more, so only the end marker will be written.
    given_up: bool,
}

/// Held by every reader of a remote tail; the tail stops when none is left.
#[derive(Debug)]
struct TailHandle;

/// One entry of a Redis Stream, read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Start,
    Event(u64, Bytes),
    End(u64, Outcome),
}

impl Entry {
    const fn seq(&self) -> u64 {
        match self {
            Self::Start => 0,
            Self::Event(seq, _) | Self::End(seq, _) => *seq,
        }
    }
}

impl RedisStore {
    /// A store on `client` with the defaults.
    pub fn new(client: Client) -> Self {
        let builder = Self::builder(client);
        let inner = builder.into_inner();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A builder for a store on `client`.
    pub fn builder(client: Client) -> RedisStoreBuilder {
        RedisStoreBuilder {
            client,
            prefix: "tower-ai".to_owned(),
            max_events: 10_000,
            ttl: Duration::from_secs(600),
            degrade: DegradeConfig::default(),
            local: None,
            page: 256,
            block: Duration::from_secs(1),
            max_tails: 64,
            max_idle: Duration::from_secs(600),
            poll_interval: Duration::from_millis(50),
        }
    }

    /// The Redis health state (for health checks).
    pub fn health(&self) -> &Degrade {
        &self.inner.degrade
    }

    /// The local copy: this process's streams and the remote ones its
    /// clients are reading.
    pub fn local(&self) -> &MemoryStore {
        &self.inner.local
    }

    /// The key of stream `id`.
    pub fn key(&self, id: &StreamId) -> String {
        self.inner.key(id)
    }

    async fn redis_append(&self, id: &StreamId, entries: &[RawEntry]) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut args: Vec<Value> = Vec::with_capacity(2 + entries.len() * 3);
        args.push(Value::Integer(
            i64::try_from(inner.max_len).unwrap_or(i64::MAX),
        ));
        args.push(Value::Integer(
            i64::try_from(inner.ttl_ms).unwrap_or(i64::MAX),
        ));
        for (entry_id, field, value) in entries {
            args.push(Value::from(entry_id.as_str()));
            args.push(Value::from(*field));
            args.push(Value::Bytes(value.clone()));
        }
        inner
            .degrade
            .call(
                inner
                    .append
                    .call::<i64, _, _, _>(&inner.client, inner.key(id), args),
            )
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Writes `new` entries of stream `id` to Redis, after those Redis has
    /// not confirmed yet; what fails stays pending for the next write.
    async fn write(
        &self,
        id: &StreamId,
        new: Vec<RawEntry>,
        op: &'static str,
    ) -> Result<(), StoreError> {
        let mut entries = {
            let mut pending = self.inner.pending.lock();
            let state = pending.entry(*id).or_default();
            if state.given_up {
                return Err(StoreError::Unavailable(
                    "Redis missed this stream's events".into(),
                ));
            }
            std::mem::take(&mut state.entries)
        };
        entries.extend(new);
        let result = self.redis_append(id, &entries).await;
        if let Err(error) = &result {
            metrics::counter!("tower_ai_sse_store_errors_total", "op" => op, "store" => "redis")
                .increment(1);
            let mut pending = self.inner.pending.lock();
            let state = pending.entry(*id).or_default();
            if entries.len() as u64 > self.inner.max_len {
                state.given_up = true;
                tracing::warn!(stream_id = %id, error = %error, "Redis missed too many of a stream's events; keeping it locally only");
            } else {
                tracing::debug!(stream_id = %id, op, error = %error, "a Redis append failed; retried with the next one");
                state.entries = entries;
            }
        }
        result
    }

    /// Whether this process's copy of `id` is complete from its start to
    /// its end so far: the stream is generated here, or its remote tail is
    /// running (or has ended).
    fn local_is_authoritative(&self, id: &StreamId) -> Option<bool> {
        let tails = self.inner.tails.lock();
        if !self.inner.local.contains(id) {
            return None;
        }
        match tails.get(id) {
            // Generated here, or a mirror whose tail ran to the end.
            None => Some(true),
            // A mirror: trusted for what it has, but it may lag behind.
            Some(handle) => handle.upgrade().map(|_| false),
        }
    }

    /// Reads stream `id` from Redis: checks the resume point, then hands
    /// the backlog and the live tail to a [`Reader`].
    async fn subscribe_redis(
        &self,
        id: &StreamId,
        from: ResumeFrom,
    ) -> Result<Subscription, ResumeError> {
        let inner = &self.inner;
        let key = inner.key(id);
        let start = match from {
            ResumeFrom::Earliest => "-".to_owned(),
            ResumeFrom::After(event) => format!("({}-0", event.seq()),
        };
        let reply = inner
            .degrade
            .call(
                inner
                    .client
                    .xrange::<Value, _, _, _>(&key, start, "+", Some(inner.page)),
            )
            .await
            .map_err(|e| ResumeError::Unavailable(e.to_string()))?;
        let entries = parse_entries(reply).map_err(ResumeError::Unavailable)?;
        let full = entries.len() as u64 >= inner.page;
        let cursor = match from {
            ResumeFrom::Earliest => match entries.iter().find(|e| !matches!(e, Entry::Start)) {
                None if entries.is_empty() => return Err(ResumeError::UnknownStream),
                None => 0,
                Some(Entry::Event(seq, _)) => seq - 1,
                Some(Entry::End(seq, _)) => return finished_or(*seq, *seq),
                Some(Entry::Start) => 0,
            },
            ResumeFrom::After(event) => {
                let after = event.seq();
                match entries.first() {
                    None => {
                        let top = inner
                            .degrade
                            .call(
                                inner
                                    .client
                                    .xrevrange::<Value, _, _, _>(&key, "+", "-", Some(1)),
                            )
                            .await
                            .map_err(|e| ResumeError::Unavailable(e.to_string()))?;
                        let top = parse_entries(top).map_err(ResumeError::Unavailable)?;
                        match top.first() {
                            None => return Err(ResumeError::UnknownStream),
                            Some(entry) if entry.seq() < after => {
                                return Err(ResumeError::UnknownEvent);
                            }
                            Some(_) => after,
                        }
                    }
                    Some(Entry::Start) => after,
                    Some(Entry::Event(seq, _)) if *seq > after + 1 => {
                        return Err(ResumeError::Expired);
                    }
                    Some(Entry::Event(..)) => after,
                    Some(Entry::End(seq, _)) => return finished_or(*seq, after),
                }
            }
        };
        let reader = Reader {
            store: self.clone(),
            id: *id,
            key,
            cursor,
            page: entries.into(),
            more: full,
            local: None,
            done: false,
        };
        let frames = futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        Ok(Subscription::new(Box::pin(frames)))
    }

    /// Reads the live tail of `id` after `cursor` from the local copy:
    /// the generating process's, or a mirror fed by a remote tail (started
    /// now if none runs). `None` when the local copy starts after
    /// `cursor + 1`: more backlog must be read from Redis first.
    fn attach_local(&self, id: &StreamId, cursor: u64) -> Result<Option<LocalTail>, StoreError> {
        let inner = &self.inner;
        let mut tails = inner.tails.lock();
        let entry = tails.get(id).map(|weak| weak.upgrade());
        let usable = match &entry {
            None => inner.local.contains(id).then_some(None),
            Some(Some(handle)) => Some(Some(handle.clone())),
            // A tail that is stopping: start another.
            Some(None) => None,
        };
        if let Some(handle) = usable {
            return match inner.local.subscribe_from(id, cursor) {
                Ok(subscription) => Ok(Some(LocalTail {
                    subscription,
                    _handle: handle,
                })),
                Err(StoreError::Lagged) => Ok(None),
                Err(error) => Err(error),
            };
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(StoreError::Unavailable(
                "no async runtime for the tail".into(),
            ));
        };
        inner.local.create_at(id, cursor + 1);
        let handle = Arc::new(TailHandle);
        tails.insert(*id, Arc::downgrade(&handle));
        drop(tails);
        runtime.spawn(run_tail(self.clone(), *id, cursor, handle.clone()));
        let subscription = inner.local.subscribe_from(id, cursor)?;
        Ok(Some(LocalTail {
            subscription,
            _handle: Some(handle),
        }))
    }

    /// A dedicated connection for blocking reads, if a slot is free.
    async fn blocking_client(&self) -> Option<(Client, OwnedSemaphorePermit)> {
        let inner = &self.inner;
        let permit = inner.tail_slots.clone().try_acquire_owned().ok()?;
        let idle = inner.blocking.lock().pop();
        let client = match idle {
            Some(client) => client,
            None => {
                let client = inner.client.clone_new();
                let _task = client.connect();
                let connected =
                    tokio::time::timeout(Duration::from_secs(2), client.wait_for_connect()).await;
                if !matches!(connected, Ok(Ok(()))) {
                    let _ = client.quit().await;
                    return None;
                }
                client
            }
        };
        Some((client, permit))
    }
}

/// `finished` when the stream ended at `end` and the reader is there,
/// `Expired` when events between them were dropped.
fn finished_or(end: u64, after: u64) -> Result<Subscription, ResumeError> {
    if end == after {
        Ok(Subscription::finished())
    } else {
        Err(ResumeError::Expired)
    }
}

impl Inner {
    fn key(&self, id: &StreamId) -> String {
        // A `StreamId` holds 22 base64url characters, checked when it was
        // made or read: nothing else reaches the key.
        self.keys.key(&Tag::fixed(id.as_str()), "events")
    }
}

/// A reader switched to the local copy: the subscription, and its hold on
/// the remote tail that feeds it.
struct LocalTail {
    subscription: Subscription,
    _handle: Option<Arc<TailHandle>>,
}

/// One client's read of a stream from Redis: `XRANGE` pages after its
/// cursor until it has caught up, then the local copy.
struct Reader {
    store: RedisStore,
    id: StreamId,
    key: String,
    cursor: u64,
    page: VecDeque<Entry>,
    /// Whether the last page was full, so more may follow.
    more: bool,
    local: Option<LocalTail>,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(local) = self.local.as_mut() {
                let item = local.subscription.next().await;
                if !matches!(item, Some(Ok(_))) {
                    self.done = true;
                }
                return item;
            }
            match self.page.pop_front() {
                Some(Entry::Start) => {}
                Some(Entry::Event(seq, _)) if seq <= self.cursor => {}
                Some(Entry::Event(seq, frame)) => {
                    if seq != self.cursor + 1 {
                        // Trimmed while this reader was behind.
                        return self.fail(StoreError::Lagged);
                    }
                    self.cursor = seq;
                    return Some(Ok(frame));
                }
                Some(Entry::End(seq, _)) => {
                    self.done = true;
                    return (seq != self.cursor).then_some(Err(StoreError::Lagged));
                }
                None if self.more => {
                    let inner = &self.store.inner;
                    let start = format!("({}-0", self.cursor);
                    let reply = inner
                        .degrade
                        .call(inner.client.xrange::<Value, _, _, _>(
                            &self.key,
                            start,
                            "+",
                            Some(inner.page),
                        ))
                        .await;
                    match reply.map_err(|e| e.to_string()).and_then(parse_entries) {
                        Ok(entries) => {
                            self.more = entries.len() as u64 >= inner.page;
                            self.page = entries.into();
                        }
                        Err(error) => return self.fail(StoreError::Unavailable(error)),
                    }
                }
                None => match self.store.attach_local(&self.id, self.cursor) {
                    Ok(Some(local)) => self.local = Some(local),
                    // The local copy starts further on: read up to it.
                    Ok(None) => self.more = true,
                    Err(error) => return self.fail(error),
                },
            }
        }
    }

    fn fail(&mut self, error: StoreError) -> Option<Result<Bytes, StoreError>> {
        self.done = true;
        Some(Err(error))
    }
}

/// Feeds the local copy of remote stream `id` from Redis, from `cursor`
/// on, while anyone in this process reads it.
async fn run_tail(store: RedisStore, id: StreamId, mut cursor: u64, handle: Arc<TailHandle>) {
    let inner = &store.inner;
    let key = inner.key(&id);
    let connection = store.blocking_client().await;
    let block_ms = u64::try_from(inner.block.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut last_entry = Instant::now();
    let mut backoff = Duration::from_millis(50);
    tracing::debug!(stream_id = %id, blocking = connection.is_some(), "remote tail started");
    let finished = loop {
        if Arc::strong_count(&handle) == 1 {
            // Decided under the lock readers take to join the tail, so none
            // joins a copy that is about to go.
            let stop = {
                let mut tails = inner.tails.lock();
                let stop = Arc::strong_count(&handle) == 1;
                if stop {
                    forget_tail(&mut tails, inner, &id, &handle, false);
                }
                stop
            };
            if stop {
                release(inner, connection).await;
                tracing::debug!(stream_id = %id, "remote tail stopped: no reader left");
                return;
            }
        }
        if last_entry.elapsed() > inner.max_idle {
            tracing::warn!(stream_id = %id, "a remote stream went quiet; its readers stop");
            break false;
        }
        let from = format!("{cursor}-0");
        let reply = match &connection {
            Some((client, _)) => {
                if !inner.degrade.is_up() {
                    tokio::time::sleep(inner.poll_interval).await;
                }
                let read = client.xread::<Value, _, _>(
                    Some(inner.page),
                    Some(block_ms),
                    key.as_str(),
                    from,
                );
                match tokio::time::timeout(
                    inner.block + inner.degrade.timeout() + Duration::from_secs(1),
                    read,
                )
                .await
                {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(error)) => {
                        inner.degrade.mark_down(&error);
                        Err(error.to_string())
                    }
                    Err(_) => {
                        inner.degrade.mark_down(&"a blocking XREAD timed out");
                        Err("a blocking XREAD timed out".to_owned())
                    }
                }
            }
            None => {
                tokio::time::sleep(inner.poll_interval).await;
                inner
                    .degrade
                    .call(inner.client.xread::<Value, _, _>(
                        Some(inner.page),
                        None,
                        key.as_str(),
                        from,
                    ))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let entries = match reply.and_then(parse_xread) {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                entries
            }
            Err(error) => {
                tracing::debug!(stream_id = %id, error = %error, "remote tail read failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        last_entry = Instant::now();
        let mut events = Vec::new();
        let mut end = None;
        for entry in entries {
            match entry {
                Entry::Start => {}
                Entry::Event(seq, frame) => {
                    cursor = cursor.max(seq);
                    events.push(StoredEvent { seq, frame });
                }
                Entry::End(seq, outcome) => end = Some((seq, outcome)),
            }
        }
        if !events.is_empty()
            && let Err(error) = inner.local.append_now(&id, &events)
        {
            // The copy has a gap (Redis trimmed events meanwhile) or was
            // forgotten: its readers stop, and reconnect.
            tracing::debug!(stream_id = %id, error = %error, "remote tail can't extend the local copy");
            break false;
        }
        if let Some((seq, outcome)) = end {
            break inner.local.finish_now(&id, seq, outcome).is_ok();
        }
    };
    forget_tail(&mut inner.tails.lock(), inner, &id, &handle, finished);
    release(inner, connection).await;
    tracing::debug!(stream_id = %id, finished, "remote tail stopped");
}

/// Unregisters a tail that is stopping, if it is still the registered one;
/// an unfinished copy is forgotten (incomplete from now on, nobody may take
/// it for the whole stream, and its readers stop).
fn forget_tail(
    tails: &mut HashMap<StreamId, Weak<TailHandle>>,
    inner: &Inner,
    id: &StreamId,
    handle: &Arc<TailHandle>,
    finished: bool,
) {
    let ours = tails
        .get(id)
        .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(handle)));
    if ours {
        tails.remove(id);
        if !finished {
            inner.local.remove(id);
        }
    }
}

/// Gives a blocking connection back to the idle pool (or closes it).
async fn release(inner: &Inner, connection: Option<(Client, OwnedSemaphorePermit)>) {
    let Some((client, permit)) = connection else {
        return;
    };
    let kept = {
        let mut idle = inner.blocking.lock();
        (idle.len() < inner.max_tails)
            .then(|| idle.push(client.clone()))
            .is_some()
    };
    drop(permit);
    if !kept {
        let _ = client.quit().await;
    }
}

/// Retries the last write of a stream (its unconfirmed events and its end)
/// for about a minute, so that readers on other replicas see the end.
async fn retry_finish(store: RedisStore, id: StreamId, entries: Vec<RawEntry>) {
    let mut wait = Duration::from_millis(250);
    for _ in 0..16 {
        tokio::time::sleep(wait).await;
        if store.redis_append(&id, &entries).await.is_ok() {
            tracing::debug!(stream_id = %id, "a stream's end reached Redis late");
            return;
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    tracing::warn!(stream_id = %id, "a stream's end never reached Redis; remote readers stop when it goes quiet");
}

/// Reads an `XRANGE`/`XREVRANGE` reply.
fn parse_entries(reply: Value) -> Result<Vec<Entry>, String> {
    match reply {
        Value::Null => Ok(Vec::new()),
        Value::Array(entries) => entries.into_iter().map(parse_entry).collect(),
        other => Err(format!("unexpected stream reply: {other:?}")),
    }
}

/// Reads an `XREAD` reply for one key (RESP2 or RESP3).
fn parse_xread(reply: Value) -> Result<Vec<Entry>, String> {
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

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.inner.keys)
            .field("max_len", &self.inner.max_len)
            .field("ttl_ms", &self.inner.ttl_ms)
            .field("health", &self.inner.degrade.health())
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

impl StreamStore for RedisStore {
    /// Creates the stream here and in Redis; with Redis down, here only
    /// (Redis gets it with the next append that goes through).
    async fn create(&self, id: &StreamId) -> Result<(), StoreError> {
        self.inner.local.create_at(id, 1);
        let marker = vec![("0-1".to_owned(), "s", Bytes::from_static(b"1"))];
        let _ = self.write(id, marker, "create").await;
        Ok(())
    }

    /// Appends to Redis, then here: a client that has seen an event can find
    /// it on any replica. When Redis fails, here only; the events go to
    /// Redis with the next append that goes through (appends are
    /// idempotent), unless more than Redis keeps of a stream went missing.
    async fn append(&self, id: &StreamId, events: &[StoredEvent]) -> Result<(), StoreError> {
        let entries = events
            .iter()
            .map(|e| (format!("{}-0", e.seq), "e", e.frame.clone()))
            .collect();
        let redis = self.write(id, entries, "append").await;
        match self.inner.local.append_now(id, events) {
            Ok(()) => Ok(()),
            Err(local) => redis.and(Err(local)),
        }
    }

    /// Ends the stream in Redis (with whatever it has not confirmed yet; the
    /// end marker even when it missed events, so that remote readers stop),
    /// then here. When Redis fails, a task retries for a while.
    async fn finish(
        &self,
        id: &StreamId,
        last_seq: u64,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        let pending = self.inner.pending.lock().remove(id).unwrap_or_default();
        let mut entries = if pending.given_up {
            Vec::new()
        } else {
            pending.entries
        };
        entries.push((
            format!("{last_seq}-1"),
            "end",
            Bytes::from_static(outcome.as_str().as_bytes()),
        ));
        let redis = self.redis_append(id, &entries).await;
        if redis.is_err()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(retry_finish(self.clone(), *id, entries));
        }
        let local = self.inner.local.finish_now(id, last_seq, outcome);
        match (redis, local) {
            (Ok(()), _) | (_, Ok(())) => Ok(()),
            (Err(error), Err(_)) => Err(error),
        }
    }

    /// Reads from this process's copy when it has everything asked for;
    /// from Redis otherwise.
    async fn subscribe(
        &self,
        id: &StreamId,
        from: ResumeFrom,
    ) -> Result<Subscription, ResumeError> {
        let local = &self.inner.local;
        if let Some(authoritative) = self.local_is_authoritative(id) {
            // `earliest` from here only when nothing was dropped here.
            let whole = !matches!(from, ResumeFrom::Earliest) || local.first_seq(id) == Some(1);
            if whole {
                match local.subscribe_now(id, from) {
                    Ok(subscription) => return Ok(subscription),
                    Err(ResumeError::UnknownEvent) if authoritative => {
                        return Err(ResumeError::UnknownEvent);
                    }
                    Err(_) => {}
                }
            }
        }
        self.subscribe_redis(id, from).await
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    client: Client,
    prefix: String,
    max_events: u64,
    ttl: Duration,
    degrade: DegradeConfig,
    local: Option<MemoryStore>,
    page: u64,
    block: Duration,
    max_tails: usize,
    max_idle: Duration,
    poll_interval: Duration,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `"tower-ai"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most events kept of one stream (`XADD … MAXLEN`, default
    /// 10,000); past it the oldest are dropped.
    pub fn max_events(mut self, events: u64) -> Self {
        self.max_events = events;
        self
    }

    /// How long a stream is kept after its last event (the key's TTL,
    /// default 10 minutes).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The Redis call timeout and backoff (default: 50 ms timeout).
    pub fn degrade(mut self, config: DegradeConfig) -> Self {
        self.degrade = config;
        self
    }

    /// This process's copy of the streams it generates and tails (default:
    /// a new [`MemoryStore`]).
    pub fn local(mut self, local: MemoryStore) -> Self {
        self.local = Some(local);
        self
    }

    /// Entries read per `XRANGE`/`XREAD` (default 256).
    pub fn page(mut self, entries: u64) -> Self {
        self.page = entries;
        self
    }

    /// How long one blocking `XREAD` waits (default 1 s).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// The most connections for blocking reads, one per remote stream being
    /// read in this process (default 64); past it tails poll.
    pub fn max_tails(mut self, connections: usize) -> Self {
        self.max_tails = connections;
        self
    }

    /// How long a remote stream may go without an event before its readers
    /// here stop (default 10 minutes: the generating replica may be gone).
    pub fn max_idle(mut self, idle: Duration) -> Self {
        self.max_idle = idle;
        self
    }

    /// How often a tail without a connection of its own polls (default
    /// 50 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The store.
    ///
    /// # Errors
    ///
    /// When a bound or duration is zero.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        if self.max_events == 0 || self.page == 0 {
            return Err(ConfigError::new("max_events and page must be above zero"));
        }
        if self.ttl < Duration::from_millis(1)
            || self.block < Duration::from_millis(1)
            || self.max_idle.is_zero()
            || self.poll_interval.is_zero()
        {
            return Err(ConfigError::new(
                "the TTL, block time, idle limit and poll interval must be above zero",
            ));
        }
        Ok(RedisStore {
            inner: Arc::new(self.into_inner()),
        })
    }

    fn into_inner(self) -> Inner {
        Inner {
            client: self.client,
            keys: KeySpace::new(&self.prefix, "sse"),
            append: Script::new(APPEND),
            degrade: Degrade::new("sse", self.degrade),
            local: self.local.unwrap_or_default(),
            max_len: self.max_events,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            page: self.page,
            block: self.block,
            max_idle: self.max_idle,
            poll_interval: self.poll_interval,
            max_tails: self.max_tails,
            tails: Mutex::new(HashMap::new()),
            blocking: Mutex::new(Vec::new()),
            tail_slots: Arc::new(Semaphore::new(self.max_tails.min(Semaphore::MAX_PERMITS))),
            pending: Mutex::new(HashMap::new()),
        }
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
