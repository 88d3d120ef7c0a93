//! The Redis store: each stream is a Redis Stream, shared by every replica.
//!
//! Here: [`RedisStore`], its writes (`EVALSHA` appends, retried ends) and its
//! [`StreamStore`] impl. Below it, each importing only downwards: `read` (a
//! client's read from Redis), `tail` (the `XREAD` loops feeding the local
//! copy), `reply` (parsing stream replies) and `inner` (the state every clone
//! shares); `builder` makes the store.

mod builder;
mod inner;
mod read;
mod reply;
mod tail;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::types::Value;
use tower_ai_core::redis::Degrade;

pub use builder::RedisStoreBuilder;

use self::inner::{Inner, RawEntry};
use crate::id::{ResumeFrom, StreamId};
use crate::store::{
    MemoryStore, Outcome, ResumeError, StoreError, StoredEvent, StreamStore, Subscription,
};

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
/// Every call goes through the store's [`Degrade`] (timeout, backoff, one
/// probe; see [`RedisStoreBuilder::degrade`]), the blocking reads with a
/// longer timeout of their own. While Redis is down, streams are kept locally only:
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
/// use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
/// use tower_sse_relay::SseRelayLayer;
/// use tower_sse_relay::store::RedisStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
/// // One health state per Redis, shared by every store on it.
/// let health = Degrade::new("redis", DegradeConfig::default());
/// let store = RedisStore::builder(client)
///     .prefix("myapp")
///     .degrade(health.clone())
///     .max_events(5_000)
///     .build();
/// let relay = SseRelayLayer::builder().redis(store).build()?;
/// # let _ = relay;
/// # Ok(()) }
/// ```
///
/// [`max_tails`]: RedisStoreBuilder::max_tails
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// The Redis health state (for health checks): the
    /// [`Degrade`] given to [`RedisStoreBuilder::degrade`], or the store's
    /// own.
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
        if let Some(authoritative) = self.inner.local_is_authoritative(id) {
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
        self.inner.subscribe_redis(id, from).await
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
