//! Sessions in Redis (standalone or Cluster) through `fred` (feature `redis`).
//!
//! Each session is a hash, `{prefix}:session:{tag}`, whose fields are the
//! session's fields; its history is a list `…:{tag}:history` and its system
//! message a string `…:{tag}:system`. The tag is a digest of the session id,
//! so the id (a credential) never appears in a key name, and the three keys
//! share one Cluster slot: the Lua scripts below touch them together. Expiry
//! is the keys' own TTL — no sweeper.
//!
//! What each operation costs:
//!
//! | operation | Redis work |
//! |---|---|
//! | load | one `HGETALL` |
//! | create | one script: `EXISTS`, `HSET`, `PEXPIRE` (`SET NX` semantics) |
//! | update | one script: `PEXPIRE` (which also tells whether the session still exists), `HSET`/`HDEL` of the changed fields only, `PEXPIRE` of the history keys |
//! | delete | one `DEL` of the three keys |
//! | history append | one script: `RPUSH`, `LTRIM`, `PEXPIRE` ×3 |
//! | history read | one script: `GET`, `LRANGE` |
//!
//! On a standalone server, loads and updates of different sessions that
//! wait at the same moment share one script call
//! ([`RedisStoreBuilder::batching`], on by default): under load a request costs
//! Redis and the client a share of a command instead of a command, and an
//! idle store sends each call at once. A Cluster gets one call per session,
//! since a script can't span slots.
//!
//! A user's index of sessions (for "log out everywhere") is a sorted set
//! `…:{user tag}:sessions` scored by when each session can expire at the
//! latest, pruned on every write; a user's profile is a hash
//! `…:{user tag}:profile`.
//!
//! Every call goes through a [`Degrade`]: it has a timeout (50 ms by
//! default), and while Redis is marked down calls fail at once instead of
//! queueing. The layer's [`OutagePolicy`](crate::OutagePolicy) then decides
//! between a `503` and going on without the session: sessions have no local
//! fallback, since a session kept on one replica would be a different
//! session on the others.
//!
//! The store is generic over the `fred` interfaces it uses, so a `Client` or
//! a `Pool` works.
//!
//! # Example
//! ```no_run
//! use tower_ai_core::redis::{ConnectOptions, connect};
//! use tower_session::{RedisStore, SessionLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
//! let store = RedisStore::builder(client).prefix("myapp").build();
//! let layer = SessionLayer::new(store);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, LuaInterface};
use fred::types::Value;
use tower_ai_core::redis::{Degrade, KeySpace, Script, StoreOptions, Tag};

use super::batch::Batcher;
use super::{Changes, Fields, HistoryAppend, SessionStore, StoredHistory};
use crate::error::StoreError;
use crate::id::Id;

/// The key prefix used unless [`RedisStoreBuilder::prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = tower_ai_core::redis::DEFAULT_PREFIX;

/// The most sessions a user's index keeps (the ones that expire first are
/// dropped past it).
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 1_000;

/// `Redis` can't hold an empty hash; a session created with no field gets
/// this placeholder (the layer ignores `$`-fields it doesn't know).
const PLACEHOLDER: &str = "$";

/// Sessions in Redis; see the [module docs](self).
pub struct RedisStore<C> {
    client: C,
    keys: KeySpace,
    degrade: Degrade,
    scripts: &'static Scripts,
    max_sessions_per_user: usize,
    batching: bool,
    loads: Arc<Batcher<String, Fields>>,
    updates: Arc<Batcher<UpdateOp, bool>>,
}

/// One session's update, encoded for the update script.
struct UpdateOp {
    keys: [String; 3],
    args: Vec<Value>,
}

/// The most sessions one batched call carries.
const MAX_BATCH: usize = 64;

impl<C: Clone> Clone for RedisStore<C> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            keys: self.keys.clone(),
            degrade: self.degrade.clone(),
            scripts: self.scripts,
            max_sessions_per_user: self.max_sessions_per_user,
            batching: self.batching,
            loads: Arc::clone(&self.loads),
            updates: Arc::clone(&self.updates),
        }
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("degrade", &self.degrade)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`]; made by [`RedisStore::builder`].
///
/// ```no_run
/// use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
/// use tower_session::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
/// // One health state per Redis, shared by every store on it.
/// let health = Degrade::new("redis", DegradeConfig::default());
/// let store = RedisStore::builder(client)
///     .prefix("myapp")
///     .degrade(health.clone())
///     .max_sessions_per_user(50)
///     .build();
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct RedisStoreBuilder<C> {
    client: C,
    redis: StoreOptions,
    batching: bool,
    max_sessions_per_user: usize,
}

impl<C> fmt::Debug for RedisStoreBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.redis.prefix())
            .field("degrade", &self.redis.degrade())
            .field("batching", &self.batching)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .finish_non_exhaustive()
    }
}

impl<C> RedisStoreBuilder<C> {
    /// Puts the keys under `prefix` (`{prefix}:session:…`; default
    /// [`DEFAULT_PREFIX`]).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// Uses `degrade` for the timeout and the down/up state, e.g. one shared
    /// with other layers on the same connection (default: a new one,
    /// component `"session"`, default timeouts).
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// Whether loads and updates of different sessions that wait at the
    /// same moment go to Redis together, in one script call (default on;
    /// standalone Redis only, since a Cluster script can't span slots).
    /// When Redis is idle a call is sent at once; under load this replaces
    /// a command per request by a share of one, which is most of what a
    /// session costs Redis and the client. Each session's update stays
    /// atomic.
    pub fn batching(mut self, batching: bool) -> Self {
        self.batching = batching;
        self
    }

    /// Keeps at most `max` sessions in a user's index (default
    /// [`DEFAULT_MAX_SESSIONS_PER_USER`]; at least 1).
    pub fn max_sessions_per_user(mut self, max: usize) -> Self {
        self.max_sessions_per_user = max.max(1);
        self
    }

    /// The store.
    pub fn build(self) -> RedisStore<C> {
        RedisStore {
            client: self.client,
            keys: self.redis.keys("session"),
            degrade: self.redis.degrade_or("session"),
            scripts: &SCRIPTS,
            max_sessions_per_user: self.max_sessions_per_user,
            batching: self.batching,
            loads: Arc::new(Batcher::new(MAX_BATCH)),
            updates: Arc::new(Batcher::new(MAX_BATCH)),
        }
    }
}

struct Scripts {
    create: Script,
    update: Script,
    load_many: Script,
    append: Script,
    read: Script,
    index: Script,
    unindex: Script,
    take_index: Script,
    profile: Script,
}

/// `batch(cmd, key, first, last)`: runs `cmd key ARGV[first..=last]` in
/// slices, because Lua's `unpack` fails past a few thousand values. Slices
/// have an even length, so field/value pairs stay together.
macro_rules! lua_batch {
    () => {
        r"
local function batch(cmd, key, first, last)
  local out = 0
  for i = first, last, 1000 do
    out = redis.call(cmd, key, unpack(ARGV, i, math.min(i + 999, last)))
  end
  return out
end
"
    };
}

const CREATE: &str = concat!(
    lua_batch!(),
    r"
-- KEYS: hash, history, system. ARGV: ttl_ms, then field/value pairs.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
batch('HSET', KEYS[1], 2, #ARGV)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"
);

const UPDATE: &str = concat!(
    lua_batch!(),
    r"
-- One or more sessions. KEYS: hash, history, system of each. ARGV, per
-- session: ttl_ms, pair count, removed count, pairs, removed names.
-- Each session is updated only if it exists; returns 1 or 0 for each.
local out = {}
local a = 1
for s = 0, #KEYS / 3 - 1 do
  local hash = KEYS[3 * s + 1]
  local ttl = ARGV[a]
  local pairs = tonumber(ARGV[a + 1])
  local removed = tonumber(ARGV[a + 2])
  a = a + 3
  if redis.call('PEXPIRE', hash, ttl) == 1 then
    if pairs > 0 then batch('HSET', hash, a, a + 2 * pairs - 1) end
    if removed > 0 then batch('HDEL', hash, a + 2 * pairs, a + 2 * pairs + removed - 1) end
    redis.call('PEXPIRE', KEYS[3 * s + 2], ttl)
    redis.call('PEXPIRE', KEYS[3 * s + 3], ttl)
    out[s + 1] = 1
  else
    out[s + 1] = 0
  end
  a = a + 2 * pairs + removed
end
return out
"
);

const LOAD_MANY: &str = r"
-- KEYS: session hashes. Returns each one's HGETALL.
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
";

const APPEND: &str = concat!(
    lua_batch!(),
    r"
-- KEYS: hash, history, system. ARGV: ttl_ms, max_turns, has_system, system, turns.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[3] == '1' then redis.call('SET', KEYS[3], ARGV[4]) end
if #ARGV >= 5 then batch('RPUSH', KEYS[2], 5, #ARGV) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return redis.call('LLEN', KEYS[2])
"
);

const READ: &str = r"
-- KEYS: history, system. ARGV: how many of the newest turns.
local system = redis.call('GET', KEYS[2])
local last = tonumber(ARGV[1])
local turns = {}
if last > 0 then turns = redis.call('LRANGE', KEYS[1], -last, -1) end
if system then return {1, system, turns} end
return {0, '', turns}
";

const INDEX: &str = r"
-- KEYS: the user's index. ARGV: session tag, ttl_ms, most sessions kept.
-- Scores are the latest time each session can be alive, on Redis' clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[3])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], newest[2])
return n
";

const UNINDEX: &str = r"
return redis.call('ZREM', KEYS[1], ARGV[1])
";

const TAKE_INDEX: &str = r"
-- KEYS: the user's index. Returns its members and deletes it.
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return members
";

const PROFILE: &str = concat!(
    lua_batch!(),
    r"
-- KEYS: the profile hash. ARGV: pair count, pairs, removed names.
local last_pair = 1 + 2 * tonumber(ARGV[1])
if last_pair > 1 then batch('HSET', KEYS[1], 2, last_pair) end
if #ARGV > last_pair then batch('HDEL', KEYS[1], last_pair + 1, #ARGV) end
return 1
"
);

/// The scripts and their SHA1s, computed once per process.
static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    create: Script::new(CREATE),
    update: Script::new(UPDATE),
    load_many: Script::new(LOAD_MANY),
    append: Script::new(APPEND),
    read: Script::new(READ),
    index: Script::new(INDEX),
    unindex: Script::new(UNINDEX),
    take_index: Script::new(TAKE_INDEX),
    profile: Script::new(PROFILE),
});

impl<C> RedisStore<C> {
    /// A builder for a store on `client` (a `fred` `Client` or `Pool`,
    /// connected or not), starting from the defaults of
    /// [`RedisStore::new`].
    pub fn builder(client: C) -> RedisStoreBuilder<C> {
        RedisStoreBuilder {
            client,
            redis: StoreOptions::default(),
            batching: true,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
        }
    }

    /// A store on `client` (a `fred` `Client` or `Pool`, connected or not),
    /// with keys under [`DEFAULT_PREFIX`], its own [`Degrade`] state
    /// (component `"session"`, default timeouts), batching on and at most
    /// [`DEFAULT_MAX_SESSIONS_PER_USER`] sessions in a user's index: the
    /// same as `RedisStore::builder(client).build()`.
    pub fn new(client: C) -> Self {
        Self::builder(client).build()
    }

    /// The `fred` client.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// The health state every call goes through (its timeout and its
    /// down/up state), e.g. to report it or to share it with another store.
    pub fn health(&self) -> &Degrade {
        &self.degrade
    }

    /// The names of the hash, history list and system message of session
    /// `id` (for tests and operations tooling).
    pub fn keys_of(&self, id: &Id) -> [String; 3] {
        self.session_keys(&session_tag(id))
    }

    fn session_keys(&self, tag: &Tag) -> [String; 3] {
        [
            self.keys.key(tag, ""),
            self.keys.key(tag, "history"),
            self.keys.key(tag, "system"),
        ]
    }

    fn user_key(&self, user: &str, what: &str) -> String {
        self.keys.key(&user_tag(user), what)
    }
}

fn session_tag(id: &Id) -> Tag {
    Tag::digest(format!("sid:{id}"))
}

fn user_tag(user: &str) -> Tag {
    Tag::digest(format!("user:{user}"))
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn unavailable(e: tower_ai_core::redis::Unavailable) -> StoreError {
    StoreError::unavailable(e)
}

fn pairs_then_removed(changes: &Changes, args: &mut Vec<Value>) {
    args.push(Value::from(changes.set().len() as i64));
    for (k, v) in changes.set() {
        args.push(Value::from(k.as_str()));
        args.push(Value::from(v.as_str()));
    }
    for k in changes.removed() {
        args.push(Value::from(k.as_str()));
    }
}

impl<C> SessionStore for RedisStore<C>
where
    C: ClientLike + HashesInterface + KeysInterface + LuaInterface + Clone + Send + Sync + 'static,
{
    async fn load(&self, id: &Id) -> Result<Option<Fields>, StoreError> {
        let [hash, ..] = self.keys_of(id);
        let fields = if self.batches() {
            let ticket = self.loads.push(hash);
            if ticket.lead {
                self.flush(Self::flush_loads).await;
            }
            received(ticket.reply.await)?
        } else {
            let mut all = self.run_loads(vec![hash]).await?;
            all.pop().unwrap_or_default()
        };
        Ok((!fields.is_empty()).then_some(fields))
    }

    async fn create(&self, id: &Id, fields: &Fields, ttl: Duration) -> Result<bool, StoreError> {
        let keys = self.keys_of(id);
        let mut args = Vec::with_capacity(1 + 2 * fields.len().max(1));
        args.push(Value::from(ttl_ms(ttl)));
        for (k, v) in fields {
            args.push(Value::from(k.as_str()));
            args.push(Value::from(v.as_str()));
        }
        if fields.is_empty() {
            args.push(Value::from(PLACEHOLDER));
            args.push(Value::from(""));
        }
        let created: i64 = self
            .degrade
            .call(self.scripts.create.call(&self.client, keys.to_vec(), args))
            .await
            .map_err(unavailable)?;
        Ok(created == 1)
    }

    async fn update(&self, id: &Id, changes: &Changes, ttl: Duration) -> Result<bool, StoreError> {
        let keys = self.keys_of(id);
        let mut args = Vec::with_capacity(3 + 2 * changes.set().len() + changes.removed().len());
        args.push(Value::from(ttl_ms(ttl)));
        args.push(Value::from(changes.set().len() as i64));
        args.push(Value::from(changes.removed().len() as i64));
        for (k, v) in changes.set() {
            args.push(Value::from(k.as_str()));
            args.push(Value::from(v.as_str()));
        }
        for k in changes.removed() {
            args.push(Value::from(k.as_str()));
        }
        let op = UpdateOp { keys, args };
        if self.batches() {
            let ticket = self.updates.push(op);
            if ticket.lead {
                self.flush(Self::flush_updates).await;
            }
            received(ticket.reply.await)
        } else {
            let updated = self.run_updates(vec![op]).await?;
            Ok(updated.first().copied().unwrap_or(false))
        }
    }

    async fn delete(&self, id: &Id) -> Result<(), StoreError> {
        let keys = self.keys_of(id);
        let _: i64 = self
            .degrade
            .call(self.client.del(keys.to_vec()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn append_history(
        &self,
        id: &Id,
        append: HistoryAppend<'_>,
        ttl: Duration,
    ) -> Result<Option<usize>, StoreError> {
        let keys = self.keys_of(id);
        let mut args = Vec::with_capacity(4 + append.turns.len());
        args.push(Value::from(ttl_ms(ttl)));
        args.push(Value::from(append.max_turns.max(1) as i64));
        args.push(Value::from(if append.system.is_some() { "1" } else { "0" }));
        args.push(Value::from(append.system.unwrap_or("")));
        args.extend(append.turns.iter().map(|t| Value::from(t.as_str())));
        let kept: i64 = self
            .degrade
            .call(self.scripts.append.call(&self.client, keys.to_vec(), args))
            .await
            .map_err(unavailable)?;
        Ok(usize::try_from(kept).ok())
    }

    async fn read_history(&self, id: &Id, last: usize) -> Result<StoredHistory, StoreError> {
        let [_, history, system] = self.keys_of(id);
        // Lua numbers are doubles: keep the count exact.
        let args = vec![Value::from(
            i64::try_from(last).unwrap_or(i64::MAX).min(1 << 40),
        )];
        let reply: Value = self
            .degrade
            .call(
                self.scripts
                    .read
                    .call(&self.client, vec![history, system], args),
            )
            .await
            .map_err(unavailable)?;
        parse_history(reply)
    }

    async fn clear_history(&self, id: &Id) -> Result<(), StoreError> {
        let [_, history, system] = self.keys_of(id);
        let _: i64 = self
            .degrade
            .call(self.client.del(vec![history, system]))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn index_session(&self, user: &str, id: &Id, ttl: Duration) -> Result<(), StoreError> {
        let index = self.user_key(user, "sessions");
        let args = vec![
            Value::from(session_tag(id).as_str()),
            Value::from(ttl_ms(ttl)),
            Value::from(self.max_sessions_per_user as i64),
        ];
        let _: i64 = self
            .degrade
            .call(self.scripts.index.call(&self.client, index, args))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn unindex_session(&self, user: &str, id: &Id) -> Result<(), StoreError> {
        let index = self.user_key(user, "sessions");
        let args = vec![Value::from(session_tag(id).as_str())];
        let _: i64 = self
            .degrade
            .call(self.scripts.unindex.call(&self.client, index, args))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user: &str) -> Result<usize, StoreError> {
        let index = self.user_key(user, "sessions");
        let tags: Vec<String> = self
            .degrade
            .call(
                self.scripts
                    .take_index
                    .call(&self.client, index, Vec::<Value>::new()),
            )
            .await
            .map_err(unavailable)?;
        // Each session lives in its own slot: one `DEL` per session.
        for tag in &tags {
            let keys = self.session_keys(&Tag::fixed(tag));
            let _: i64 = self
                .degrade
                .call(self.client.del(keys.to_vec()))
                .await
                .map_err(unavailable)?;
        }
        Ok(tags.len())
    }

    async fn load_profile(&self, user: &str) -> Result<Option<Fields>, StoreError> {
        let key = self.user_key(user, "profile");
        let fields: Fields = self
            .degrade
            .call(self.client.hgetall(key))
            .await
            .map_err(unavailable)?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    async fn update_profile(&self, user: &str, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let key = self.user_key(user, "profile");
        let mut args = Vec::with_capacity(1 + 2 * changes.set().len() + changes.removed().len());
        pairs_then_removed(changes, &mut args);
        let _: i64 = self
            .degrade
            .call(self.scripts.profile.call(&self.client, key, args))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl<C> RedisStore<C>
where
    C: ClientLike + HashesInterface + LuaInterface + Clone + Send + Sync + 'static,
{
    fn batches(&self) -> bool {
        self.batching && !self.client.is_clustered()
    }

    /// Starts `flush`, which sends batches until the queue is empty, in a
    /// task of its own (so a caller that goes away can't strand the
    /// others); inline when there is no runtime to spawn on.
    async fn flush<F, Fut>(&self, flush: F)
    where
        F: FnOnce(Self) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let task = flush(self.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(task);
            }
            Err(_) => task.await,
        }
    }

    async fn flush_loads(self) {
        while let Some(batch) = self.loads.next() {
            let (keys, replies): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
            match self.run_loads(keys).await {
                Ok(results) => {
                    for (fields, reply) in results.into_iter().zip(replies) {
                        let _ = reply.send(Ok(fields));
                    }
                }
                Err(e) => fail_all(replies, &e),
            }
        }
    }

    async fn flush_updates(self) {
        while let Some(batch) = self.updates.next() {
            let (ops, replies): (Vec<UpdateOp>, Vec<_>) = batch.into_iter().unzip();
            match self.run_updates(ops).await {
                Ok(results) => {
                    for (updated, reply) in results.into_iter().zip(replies) {
                        let _ = reply.send(Ok(updated));
                    }
                }
                Err(e) => fail_all(replies, &e),
            }
        }
    }

    /// One `HGETALL`, or one script for several.
    async fn run_loads(&self, mut keys: Vec<String>) -> Result<Vec<Fields>, StoreError> {
        if keys.len() == 1 {
            let key = keys.pop().unwrap_or_default();
            let fields: Fields = self
                .degrade
                .call(self.client.hgetall(key))
                .await
                .map_err(unavailable)?;
            return Ok(vec![fields]);
        }
        let n = keys.len();
        let reply: Value = self
            .degrade
            .call(
                self.scripts
                    .load_many
                    .call(&self.client, keys, Vec::<Value>::new()),
            )
            .await
            .map_err(unavailable)?;
        parse_many_fields(reply, n)
    }

    /// The update script for one or more sessions.
    async fn run_updates(&self, ops: Vec<UpdateOp>) -> Result<Vec<bool>, StoreError> {
        let n = ops.len();
        let mut keys = Vec::with_capacity(3 * n);
        let mut args = Vec::with_capacity(ops.iter().map(|op| op.args.len()).sum());
        for op in ops {
            keys.extend(op.keys);
            args.extend(op.args);
        }
        let updated: Vec<i64> = self
            .degrade
            .call(self.scripts.update.call(&self.client, keys, args))
            .await
            .map_err(unavailable)?;
        if updated.len() != n {
            return Err(StoreError::corrupt("unexpected reply to the update script"));
        }
        Ok(updated.into_iter().map(|u| u == 1).collect())
    }
}

fn received<T>(
    reply: Result<Result<T, StoreError>, tokio::sync::oneshot::error::RecvError>,
) -> Result<T, StoreError> {
    reply.unwrap_or_else(|_| Err(StoreError::other("the batched call was dropped")))
}

fn fail_all<T>(replies: Vec<tokio::sync::oneshot::Sender<Result<T, StoreError>>>, e: &StoreError) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::unavailable(e.to_string())));
    }
}

/// The reply of the load script: one flat field/value array per session.
fn parse_many_fields(reply: Value, n: usize) -> Result<Vec<Fields>, StoreError> {
    let corrupt = || StoreError::corrupt("unexpected reply to the load script");
    let Value::Array(sessions) = reply else {
        return Err(corrupt());
    };
    if sessions.len() != n {
        return Err(corrupt());
    }
    sessions
        .into_iter()
        .map(|session| match session {
            Value::Array(flat) => {
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    fields.push((
                        k.into_string().ok_or_else(corrupt)?,
                        v.into_string().ok_or_else(corrupt)?,
                    ));
                }
                Ok(fields)
            }
            Value::Null => Ok(Vec::new()),
            _ => Err(corrupt()),
        })
        .collect()
}

fn parse_history(reply: Value) -> Result<StoredHistory, StoreError> {
    let corrupt = || StoreError::corrupt("unexpected reply to the history read");
    let Value::Array(parts) = reply else {
        return Err(corrupt());
    };
    let mut parts = parts.into_iter();
    let (Some(has_system), Some(system), Some(turns)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt());
    };
    let text = |v: Value| v.into_string().ok_or_else(corrupt);
    let system = match has_system.as_i64() {
        Some(1) => Some(text(system)?),
        _ => None,
    };
    let turns = match turns {
        Value::Array(turns) => turns.into_iter().map(text).collect::<Result<_, _>>()?,
        Value::Null => Vec::new(),
        _ => return Err(corrupt()),
    };
    Ok(StoredHistory { system, turns })
}
