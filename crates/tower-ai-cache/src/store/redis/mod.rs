//! L2: entries shared by every replica in Redis, the cross-replica lock and
//! stream recording, and invalidation by pub/sub.
//!
//! Keys, all under one hash tag per cache key (so each script's keys share a
//! Cluster slot), with the tag a digest: no prompt or API key ever appears in
//! a key name.
//!
//! | key | what |
//! |---|---|
//! | `{prefix}:cache:{K}:v` | the entry (binary), `PX` = TTL + stale grace |
//! | `{prefix}:cache:{K}:l` | the leader's lock (`SET NX PX`), renewed as its stream passes |
//! | `{prefix}:cache:{K}:s` | the recording in flight (a Redis Stream: `h` head, `d` data, `e` end) |
//! | `{prefix}:cache:{T}:t` | a tag's set of entry keys |
//!
//! A hit costs one `GET`. A miss costs that and one script (`GET` +
//! `SET NX PX`). Invalidations are published on `{prefix}:cache:invalidate`;
//! every replica's subscriber evicts its L1 copies, and flushes its whole L1
//! when its subscription reconnects (it may have missed messages).
//!
//! Here: the store, its builder and the operations on it. Beside it, each
//! used only from here, except the writer: the scripts (`scripts`), reading
//! values and recordings back (`decode`), the invalidation subscriber
//! (`listen`), the blocking reads' connections (`pool`), and the task that
//! writes a leader's recording as it passes (`writer`, which the response
//! body drives).

pub(crate) mod decode;
mod listen;
mod pool;
mod scripts;
pub(crate) mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{KeysInterface, PubsubInterface, StreamsInterface};
use fred::types::Value;
use futures_util::StreamExt;
use tokio::sync::watch;
use tower_ai_core::redis::{
    Degrade, DegradeConfig, KeySpace, Script, StoreOptions, Tag, Unavailable,
};

use crate::entry::{Entry, millis, now_ms};
use crate::error::ConfigError;
use crate::key::CacheKey;
use crate::store::memory::L1;
use crate::tag::TagId;
use decode::{Item, decode, parse_xread, usable};
use listen::listen;
use pool::{BlockingPool, PooledConnection};
use scripts::{APPEND, END, LOCK, PROBE, STORE, TAG, TAKE};

/// What the lock script found.
#[derive(Debug)]
pub(crate) struct Locked {
    /// Whether this call took the lock.
    pub(crate) acquired: bool,
    /// The value present at the time (fresh or stale), if any.
    pub(crate) value: Option<Entry>,
}

/// How an L2 store is configured (what a [`RedisStore`] holds besides its
/// client, key prefix and health).
#[derive(Debug, Clone)]
pub(crate) struct L2Config {
    pub(crate) lock_ttl: Duration,
    pub(crate) stream_keep: Duration,
    pub(crate) block: Duration,
    pub(crate) blocking_connections: usize,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            lock_ttl: Duration::from_secs(30),
            stream_keep: Duration::from_secs(10),
            block: Duration::from_secs(1),
            blocking_connections: 8,
        }
    }
}

/// The cache's L2 in Redis (feature `redis`; standalone or Cluster), given to
/// [`CacheBuilder::redis`](crate::CacheBuilder::redis): entries shared by
/// every replica, a lock per key so that one replica calls the upstream for
/// identical misses, live recordings for the others to follow, and
/// invalidation across replicas.
///
/// Keys are `{prefix}:cache:{digest}:…`, the digest a hash tag (no prompt or
/// API key ever appears in a key name). Every call goes through the store's
/// [`Degrade`] (its health, shared with whatever else holds a clone of it),
/// with its timeout, except blocking reads of a recording, which wait up to
/// [`block`](RedisStoreBuilder::block) by design and get that much longer.
///
/// The layer opens its own extra connections from the client: one for
/// invalidation messages, and up to
/// [`blocking_connections`](RedisStoreBuilder::blocking_connections) for
/// following recordings.
///
/// ```no_run
/// use tower_ai_cache::{CacheLayer, RedisStore};
/// use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
/// let health = Degrade::new("redis", DegradeConfig::default());
/// let store = RedisStore::builder(client)
///     .prefix("my-app")
///     .degrade(health.clone())
///     .build();
/// let layer = CacheLayer::builder().redis(store).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) degrade: Degrade,
    pub(crate) config: L2Config,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("config", &self.config)
            .field("degrade", &self.degrade)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `client` with the defaults (the same as
    /// `RedisStore::builder(client).build()`). `client` may be connected or
    /// not (see `tower_ai_core::redis::client`).
    pub fn new(client: Client) -> Self {
        Self::builder(client).build()
    }

    /// A builder for a store on `client`.
    pub fn builder(client: Client) -> RedisStoreBuilder {
        RedisStoreBuilder {
            client,
            redis: StoreOptions::default(),
            config: L2Config::default(),
        }
    }

    /// The health of this store's Redis: the [`Degrade`] every call goes
    /// through.
    pub fn health(&self) -> &Degrade {
        &self.degrade
    }

    /// What the cache's builder refuses in this store's settings.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.config.lock_ttl.is_zero() {
            return Err(ConfigError::ZeroLockTtl);
        }
        if self.config.blocking_connections == 0 {
            return Err(ConfigError::ZeroBlockingConnections);
        }
        if self.prefix.contains(['{', '}']) {
            return Err(ConfigError::BracesInPrefix {
                prefix: self.prefix.clone(),
            });
        }
        Ok(())
    }
}

/// Builds a [`RedisStore`].
///
/// | setting | default |
/// |---|---|
/// | [`prefix`](Self::prefix) | `tower-ai` |
/// | [`degrade`](Self::degrade) | a new `Degrade::new("cache", DegradeConfig::default())` (50 ms timeout) |
/// | [`lock_ttl`](Self::lock_ttl) | 30 s |
/// | [`stream_keep`](Self::stream_keep) | 10 s |
/// | [`block`](Self::block) | 1 s |
/// | [`blocking_connections`](Self::blocking_connections) | 8 |
#[must_use]
pub struct RedisStoreBuilder {
    client: Client,
    redis: StoreOptions,
    config: L2Config,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.redis.prefix())
            .field("config", &self.config)
            .field("degrade", &self.redis.degrade())
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The key prefix (default `tower-ai`): keys are
    /// `{prefix}:cache:{digest}:…`. It must not contain braces.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// The health every Redis call goes through, with its timeout and
    /// backoff (default: a new `Degrade::new("cache",
    /// DegradeConfig::default())`, a 50 ms timeout). Pass a clone of one
    /// `Degrade` to every store on the same Redis to share its health.
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// How long a leader's lock lives without renewal (default 30 s); a
    /// streamed answer renews it with each chunk. Must be more than 0.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// How long a finished recording stays readable (default 10 s).
    pub fn stream_keep(mut self, keep: Duration) -> Self {
        self.config.stream_keep = keep;
        self
    }

    /// How long one blocking read of a recording waits (default 1 s); such a
    /// read times out after this plus the `Degrade`'s timeout (at least
    /// 250 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.config.block = block;
        self
    }

    /// Connections for blocking reads (default 8): how many answers in
    /// flight on other replicas this one can follow at once without
    /// polling. Must be more than 0.
    pub fn blocking_connections(mut self, n: usize) -> Self {
        self.config.blocking_connections = n;
        self
    }

    /// The store. Its settings are checked by
    /// [`CacheBuilder::build`](crate::CacheBuilder::build).
    pub fn build(self) -> RedisStore {
        RedisStore {
            client: self.client,
            prefix: self.redis.prefix().to_owned(),
            degrade: self.redis.degrade_or("cache"),
            config: self.config,
        }
    }
}

struct Scripts {
    lock: Script,
    store: Script,
    end: Script,
    append: Script,
    probe: Script,
    tag: Script,
    take: Script,
}

/// The Redis side of the cache.
pub(crate) struct L2 {
    client: Client,
    keys: KeySpace,
    channel: String,
    degrade: Degrade,
    /// Blocking reads wait up to `block` by design: a state of their own,
    /// with a timeout that leaves room for it, so that a slow blocking read
    /// never takes the store's other calls onto the fallback.
    follow: Degrade,
    scripts: Scripts,
    instance: String,
    seq: AtomicU64,
    config: L2Config,
    pool: BlockingPool,
    seen_recoveries: AtomicU64,
    /// Whether the invalidation subscriber is subscribed now.
    subscribed: watch::Sender<bool>,
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("keys", &self.keys)
            .field("degrade", &self.degrade)
            .finish_non_exhaustive()
    }
}

/// The key names of one entry.
pub(crate) struct Names {
    pub(crate) value: String,
    pub(crate) lock: String,
    pub(crate) stream: String,
}

impl L2 {
    /// The L2 store on `store`'s client; starts the invalidation subscriber
    /// (a connection of its own), which evicts from `l1`.
    pub(crate) fn start(store: RedisStore, l1: L1) -> Arc<Self> {
        let RedisStore {
            client,
            prefix,
            degrade,
            config,
        } = store;
        let keys = KeySpace::new(&prefix, "cache");
        let channel = format!("{prefix}:cache:invalidate");
        let follow = Degrade::new(
            "cache-follow",
            DegradeConfig::default()
                .timeout(config.block + degrade.timeout().max(Duration::from_millis(250))),
        );
        let (stop, stopped) = watch::channel(());
        let instance = instance_id();
        let l2 = Arc::new(Self {
            pool: BlockingPool::new(client.clone(), config.blocking_connections),
            client,
            keys,
            channel,
            degrade,
            follow,
            scripts: Scripts {
                lock: Script::new(LOCK),
                store: Script::new(STORE),
                end: Script::new(END),
                append: Script::new(APPEND),
                probe: Script::new(PROBE),
                tag: Script::new(TAG),
                take: Script::new(TAKE),
            },
            instance,
            seq: AtomicU64::new(0),
            config,
            seen_recoveries: AtomicU64::new(0),
            subscribed: watch::Sender::new(false),
            _stop: stop,
        });
        let subscriber = l2.client.clone_new();
        tokio::spawn(listen(
            subscriber,
            l2.channel.clone(),
            l1,
            l2.subscribed.clone(),
            stopped,
        ));
        l2
    }

    /// Waits until the invalidation subscriber is subscribed.
    pub(crate) async fn subscribed(&self) {
        let mut subscribed = self.subscribed.subscribe();
        // The sender lives in `self`: the wait can't see it closed.
        let _ = subscribed.wait_for(|s| *s).await;
    }

    pub(crate) fn degrade(&self) -> &Degrade {
        &self.degrade
    }

    /// Whether Redis came back since the last call (then L1 must be
    /// flushed: invalidations may have been missed).
    pub(crate) fn recovered(&self) -> bool {
        let now = self.degrade.recoveries();
        let seen = self.seen_recoveries.load(Ordering::Acquire);
        now != seen
            && self
                .seen_recoveries
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn names(&self, key: &CacheKey) -> Names {
        let tag = key_tag(key);
        Names {
            value: self.keys.key(&tag, "v"),
            lock: self.keys.key(&tag, "l"),
            stream: self.keys.key(&tag, "s"),
        }
    }

    /// The value's name alone (a lookup needs no other).
    fn value_name(&self, key: &CacheKey) -> String {
        self.keys.key(&key_tag(key), "v")
    }

    fn tag_key(&self, tag: TagId) -> String {
        self.keys.key(&Tag::fixed(&tag.hex()), "t")
    }

    /// A lock token unique to this call.
    pub(crate) fn owner(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.instance)
    }

    fn count_error(op: &'static str, e: &Unavailable) {
        if !matches!(e, Unavailable::Degraded { .. }) {
            metrics::counter!("tower_ai_cache_l2_errors_total", "op" => op).increment(1);
            tracing::debug!(op, error = %e, "cache: Redis call failed");
        }
    }

    /// The entry, fresh or stale; one past its grace reads as a miss and is
    /// not decoded. One `GET`.
    pub(crate) async fn get(&self, key: &CacheKey) -> Result<Option<Entry>, Unavailable> {
        self.get_value(key).await.map(usable)
    }

    /// The entry as stored, whatever its age (what a follower's leader just
    /// stored). One `GET`.
    pub(crate) async fn get_stored(&self, key: &CacheKey) -> Result<Option<Entry>, Unavailable> {
        self.get_value(key).await.map(decode)
    }

    async fn get_value(&self, key: &CacheKey) -> Result<Value, Unavailable> {
        self.degrade
            .call(self.client.get::<Value, _>(self.value_name(key)))
            .await
            .inspect_err(|e| Self::count_error("get", e))
    }

    /// Reads the value and tries to take the lock for `owner`. One script.
    pub(crate) async fn lock(&self, key: &CacheKey, owner: &str) -> Result<Locked, Unavailable> {
        let n = self.names(key);
        let reply: Value = self
            .degrade
            .call(self.scripts.lock.call(
                &self.client,
                vec![n.value, n.lock, n.stream],
                vec![owner.to_owned(), millis(self.config.lock_ttl).to_string()],
            ))
            .await
            .inspect_err(|e| Self::count_error("lock", e))?;
        let mut items = reply.into_array().into_iter();
        let acquired = items.next().and_then(|v| v.as_i64()) == Some(1);
        let value = items.next().and_then(usable);
        Ok(Locked { acquired, value })
    }

    /// Whether the value and the lock exist.
    pub(crate) async fn probe(&self, key: &CacheKey) -> Result<(bool, bool), Unavailable> {
        let n = self.names(key);
        let reply: Value = self
            .degrade
            .call(self.scripts.probe.call(
                &self.client,
                vec![n.value, n.lock],
                Vec::<String>::new(),
            ))
            .await
            .inspect_err(|e| Self::count_error("probe", e))?;
        let items = reply.into_array();
        let flag = |i: usize| items.get(i).and_then(Value::as_i64) == Some(1);
        Ok((flag(0), flag(1)))
    }

    /// Appends a recording item for the lock's owner and renews the lock;
    /// `false` once the lock is someone else's.
    pub(crate) async fn append(
        &self,
        key: &CacheKey,
        owner: &str,
        kind: &'static str,
        payload: Bytes,
    ) -> Result<bool, Unavailable> {
        let n = self.names(key);
        let lock_ms = millis(self.config.lock_ttl);
        let args: Vec<Value> = vec![
            owner.into(),
            kind.into(),
            Value::Bytes(payload),
            (lock_ms + millis(self.config.stream_keep))
                .to_string()
                .into(),
            lock_ms.to_string().into(),
        ];
        let reply: i64 = self
            .degrade
            .call(
                self.scripts
                    .append
                    .call(&self.client, vec![n.lock, n.stream], args),
            )
            .await
            .inspect_err(|e| Self::count_error("append", e))?;
        Ok(reply == 1)
    }

    /// Stores an entry (for `keep` from now); if `owner` holds the lock, it
    /// is released and its recording ended with `end`. Then adds the entry
    /// to its tags' sets.
    pub(crate) async fn store(
        &self,
        key: &CacheKey,
        entry: &Entry,
        keep: Duration,
        owner: Option<&str>,
        end: &'static str,
    ) -> Result<(), Unavailable> {
        let n = self.names(key);
        let px = millis(keep).max(1);
        let args: Vec<Value> = vec![
            Value::Bytes(entry.encode()),
            px.to_string().into(),
            owner.unwrap_or("").into(),
            millis(self.config.stream_keep).to_string().into(),
            end.into(),
        ];
        let value_name = n.value.clone();
        self.degrade
            .call(self.scripts.store.call::<i64, _, _, _>(
                &self.client,
                vec![n.value, n.lock, n.stream],
                args,
            ))
            .await
            .inspect_err(|e| Self::count_error("store", e))?;
        for tag in &entry.tags {
            let tag_key = self.tag_key(*tag);
            self.degrade
                .call(self.scripts.tag.call::<i64, _, _, _>(
                    &self.client,
                    vec![tag_key],
                    vec![value_name.clone(), px.to_string()],
                ))
                .await
                .inspect_err(|e| Self::count_error("tag", e))?;
        }
        Ok(())
    }

    /// Releases `owner`'s lock and ends its recording with `end`.
    pub(crate) async fn end(&self, key: &CacheKey, owner: &str, end: &'static str) {
        let n = self.names(key);
        let _ = self
            .degrade
            .call(self.scripts.end.call::<i64, _, _, _>(
                &self.client,
                vec![n.lock, n.stream],
                vec![
                    owner.to_owned(),
                    millis(self.config.stream_keep).to_string(),
                    end.to_owned(),
                ],
            ))
            .await
            .inspect_err(|e| Self::count_error("end", e));
    }

    /// Deletes one entry and tells every replica. `Ok(true)` if it existed.
    pub(crate) async fn invalidate_key(&self, key: &CacheKey) -> Result<bool, Unavailable> {
        let n = self.names(key);
        let removed: i64 = self
            .degrade
            .call(self.client.del::<i64, _>(n.value))
            .await
            .inspect_err(|e| Self::count_error("del", e))?;
        self.publish(format!("k:{key}")).await?;
        Ok(removed > 0)
    }

    /// Deletes every entry of a tag and tells every replica. Returns how
    /// many entries were deleted.
    pub(crate) async fn invalidate_tag(&self, tag: TagId) -> Result<u64, Unavailable> {
        let set = self.tag_key(tag);
        let mut removed = 0u64;
        loop {
            let members: Value = self
                .degrade
                .call(self.scripts.take.call(
                    &self.client,
                    vec![set.clone()],
                    vec!["512".to_owned()],
                ))
                .await
                .inspect_err(|e| Self::count_error("take", e))?;
            let names: Vec<String> = members
                .into_array()
                .into_iter()
                .filter_map(|v| v.as_string())
                .collect();
            if names.is_empty() {
                break;
            }
            // Each entry has its own slot: delete them one by one, 32 at a time.
            let deleted: Vec<Result<i64, Unavailable>> = futures_util::stream::iter(names)
                .map(|name| self.degrade.call(self.client.del::<i64, _>(name)))
                .buffer_unordered(32)
                .collect()
                .await;
            for d in deleted {
                removed +=
                    u64::try_from(d.inspect_err(|e| Self::count_error("del", e))?).unwrap_or(0);
            }
        }
        self.publish(format!("t:{}", tag.hex())).await?;
        Ok(removed)
    }

    /// Tells every replica to flush its L1.
    pub(crate) async fn flush_replicas(&self) -> Result<(), Unavailable> {
        self.publish("all".to_owned()).await
    }

    async fn publish(&self, message: String) -> Result<(), Unavailable> {
        self.degrade
            .call(
                self.client
                    .publish::<i64, _, _>(self.channel.clone(), message),
            )
            .await
            .inspect_err(|e| Self::count_error("publish", e))
            .map(drop)
    }

    /// Reads the recording from after `last_id`: waits up to the block time
    /// for something new on a connection of its own when one is free, else
    /// polls. Empty when nothing came.
    pub(crate) async fn read(
        &self,
        key: &CacheKey,
        last_id: &str,
        conn: Option<&Client>,
    ) -> Result<Vec<(String, Item)>, Unavailable> {
        let stream = self.names(key).stream;
        let reply: Value = match conn {
            Some(conn) => {
                let block = millis(self.config.block);
                self.follow
                    .call(conn.xread::<Value, _, _>(Some(256), Some(block), stream, last_id))
                    .await
            }
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.degrade
                    .call(
                        self.client
                            .xread::<Value, _, _>(Some(256), None, stream, last_id),
                    )
                    .await
            }
        }
        .inspect_err(|e| Self::count_error("xread", e))?;
        Ok(parse_xread(reply))
    }

    /// A connection for blocking reads, while one of the bounded set is free.
    pub(crate) async fn blocking_connection(&self) -> Option<PooledConnection<'_>> {
        self.pool
            .acquire(self.degrade.timeout().max(Duration::from_millis(500)))
            .await
    }
}

/// The tag (Cluster slot) of a key's names: its first 16 bytes, in hex.
fn key_tag(key: &CacheKey) -> Tag {
    let mut hex = String::with_capacity(32);
    for b in &key.as_bytes()[..16] {
        crate::key::push_hex(&mut hex, *b);
    }
    Tag::fixed(&hex)
}

/// A name unique to this process instance, for lock tokens.
fn instance_id() -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&now_ms().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    hasher.update(&nanos.to_le_bytes());
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    hasher.update(&INSTANCES.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut s = String::with_capacity(16);
    for b in &hasher.finalize().as_bytes()[..8] {
        crate::key::push_hex(&mut s, *b);
    }
    s
}
