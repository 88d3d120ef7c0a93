//! The balancer's state shared by every replica through Redis (feature
//! `redis`).
//!
//! Two things are shared, both under one hash tag per pool (the pool's
//! configured name), so every script runs on one Cluster node:
//!
//! - **Load.** Each replica writes its own requests and tokens in flight per
//!   endpoint into one hash, `…:{pool}:load`, every `sync_interval`, with a
//!   lease on Redis's clock; the same script reads the other replicas'
//!   entries and drops the expired ones. A replica that dies stops renewing
//!   its lease, and after `lease` its load is no longer counted: it can't
//!   strand an endpoint's permits. One script call per pool per interval,
//!   none per request. Picks then weigh an endpoint's load as the replica's
//!   own (exact) plus the others' (as of the last sync).
//! - **The prefix index.** Block hash → endpoints (a 64-bit mask) in a hash
//!   per time window, `…:{pool}:prefix:{window}`; a read looks in the
//!   current and the previous window, so what wasn't used for a window or
//!   two is forgotten. A request reads the masks of its prompt's blocks (one
//!   script call, under the Degrade timeout, before the pick) and, after the
//!   pick, writes the picked endpoint's bit where it was missing (off the
//!   request's path). Two replicas writing one block at once may lose one
//!   bit: the index is an approximation, and the next request puts it back.
//!
//! When Redis is slow or down ([`Degrade`]), a replica picks on its own
//! state: its local load, its local prefix index.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fred::error::Error as RedisError;
use fred::interfaces::LuaInterface;
use tower_ai_core::redis::{Degrade, KeySpace, Script, StoreOptions, Tag};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Renews this replica's load entry and returns the other replicas' live
/// entries. KEYS: the load hash. ARGV: replica id, lease ms, payload.
const SYNC_LOAD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], (now + lease) .. '|' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease * 10)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local id, v = all[i], all[i + 1]
  local bar = string.find(v, '|', 1, true)
  local expires = bar and tonumber(string.sub(v, 1, bar - 1))
  if not expires or expires < now then
    redis.call('HDEL', KEYS[1], id)
  elseif id ~= ARGV[1] then
    out[#out + 1] = string.sub(v, bar + 1)
  end
end
return out
";

/// The masks of the given blocks: the current window's, else the previous
/// window's marked with a leading `p`, else an empty string. KEYS: current,
/// previous. ARGV: block fields.
const READ_PREFIX: &str = r"
local cur = redis.call('HMGET', KEYS[1], unpack(ARGV))
local prev = redis.call('HMGET', KEYS[2], unpack(ARGV))
local out = {}
for i = 1, #ARGV do
  if cur[i] then
    out[i] = cur[i]
  elseif prev[i] then
    out[i] = 'p' .. prev[i]
  else
    out[i] = ''
  end
end
return out
";

/// Writes masks into the current window. KEYS: current. ARGV: ttl ms, then
/// field, mask pairs.
const WRITE_PREFIX: &str = r"
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {}
";

/// The most blocks of one prompt shared through Redis: the first 1,024
/// (64 KiB of prompt text by default), so one request costs Redis a
/// bounded amount of work and memory.
pub(crate) const MAX_SHARED_BLOCKS: usize = 1_024;

trait Runner: Send + Sync {
    fn run<'a>(
        &'a self,
        script: &'a Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, RedisError>>;
}

struct ClientRunner<C>(C);

impl<C> Runner for ClientRunner<C>
where
    C: LuaInterface + Send + Sync + 'static,
{
    fn run<'a>(
        &'a self,
        script: &'a Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, RedisError>> {
        Box::pin(script.call::<Vec<String>, _, _, _>(&self.0, keys, args))
    }
}

/// Shared balancer state in Redis, for
/// [`PoolBuilder::redis`](crate::PoolBuilder::redis).
///
/// Generic over the `fred` client (a `Client` or a `Pool`, standalone or
/// Cluster). Replicas that share it must list a pool's endpoints in the same
/// order (they share one configuration): the prefix index names endpoints
/// by their place.
pub struct RedisStore {
    runner: Arc<dyn Runner>,
    keys: KeySpace,
    degrade: Degrade,
    sync_interval: Duration,
    lease: Duration,
    window: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("sync_interval", &self.sync_interval)
            .field("lease", &self.lease)
            .field("window", &self.window)
            .field("health", &self.degrade.health())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for shared state through `client` (a fred `Client` or
    /// `Pool`).
    pub fn builder<C>(client: C) -> RedisStoreBuilder
    where
        C: LuaInterface + Send + Sync + 'static,
    {
        RedisStoreBuilder {
            runner: Arc::new(ClientRunner(client)),
            redis: StoreOptions::default(),
            sync_interval: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            window: Duration::from_secs(600),
        }
    }

    /// The Redis health state this store's calls go through.
    pub fn health(&self) -> &Degrade {
        &self.degrade
    }

    /// The link of one pool.
    pub(crate) fn link(&self, pool: &str) -> Link {
        let tag = Tag::fixed(pool);
        Link {
            runner: Arc::clone(&self.runner),
            degrade: self.degrade.clone(),
            load_key: self.keys.key(&tag, "load"),
            prefix_key: self.keys.key(&tag, "prefix"),
            replica: replica_id(),
            sync_interval: self.sync_interval,
            lease_ms: self.lease.as_millis().max(1).to_string(),
            window_ms: u64::try_from(self.window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        }
    }
}

/// Builds a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    runner: Arc<dyn Runner>,
    redis: StoreOptions,
    sync_interval: Duration,
    lease: Duration,
    window: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("redis", &self.redis)
            .field("sync_interval", &self.sync_interval)
            .field("lease", &self.lease)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The application's key prefix (default `"tower-ai"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// The Redis health state to use, e.g. one shared with other layers on
    /// the same connection (default: a new one named `"balance"`).
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// How often a replica publishes its load and reads the others'
    /// (default 100 ms): how stale another replica's load can be. One
    /// script call per pool per interval.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a replica's load counts after its last sync (default 2 s):
    /// a replica that dies mid-stream stops counting after this long.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// The prefix index's time window (default 10 min): a block not used
    /// for one to two windows is forgotten.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_secs(1));
        self
    }

    /// The store.
    pub fn build(self) -> RedisStore {
        RedisStore {
            runner: self.runner,
            keys: self.redis.keys("balance"),
            degrade: self.redis.degrade_or("balance"),
            sync_interval: self.sync_interval,
            lease: self.lease,
            window: self.window,
        }
    }
}

/// One pool's keys and scripts.
pub(crate) struct Link {
    runner: Arc<dyn Runner>,
    degrade: Degrade,
    load_key: String,
    prefix_key: String,
    replica: String,
    sync_interval: Duration,
    lease_ms: String,
    window_ms: u64,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("load_key", &self.load_key)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// A block's mask as Redis holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SharedMask {
    pub(crate) mask: u64,
    /// Whether it is in the current window (else it must be copied there
    /// to be kept).
    pub(crate) current: bool,
}

fn scripts() -> &'static [Script; 3] {
    static SCRIPTS: std::sync::OnceLock<[Script; 3]> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| {
        [
            Script::new(SYNC_LOAD),
            Script::new(READ_PREFIX),
            Script::new(WRITE_PREFIX),
        ]
    })
}

impl Link {
    pub(crate) fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// Publishes this replica's load (`(requests, tokens)` per endpoint)
    /// and returns the sum of the other live replicas', or `None` when
    /// Redis is unavailable.
    pub(crate) async fn sync_load(&self, own: &[(u32, u64)]) -> Option<Vec<(u32, u64)>> {
        let payload = own
            .iter()
            .map(|(n, t)| format!("{n},{t}"))
            .collect::<Vec<_>>()
            .join(";");
        let call = self.runner.run(
            &scripts()[0],
            vec![self.load_key.clone()],
            vec![self.replica.clone(), self.lease_ms.clone(), payload],
        );
        let others = match self.degrade.call(call).await {
            Ok(others) => others,
            Err(error) => {
                tracing::debug!(component = "balance", error = %error, "shared load unavailable");
                return None;
            }
        };
        let mut sum = vec![(0u32, 0u64); own.len()];
        for entry in &others {
            for (slot, pair) in sum.iter_mut().zip(entry.split(';')) {
                let Some((n, t)) = pair.split_once(',') else {
                    continue;
                };
                slot.0 = slot.0.saturating_add(n.parse().unwrap_or(0));
                slot.1 = slot.1.saturating_add(t.parse().unwrap_or(0));
            }
        }
        Some(sum)
    }

    /// The shared masks of `blocks` (at most [`MAX_SHARED_BLOCKS`]), or
    /// `None` when Redis is unavailable.
    pub(crate) async fn read_prefix(&self, blocks: &[u64]) -> Option<Vec<SharedMask>> {
        let blocks = &blocks[..blocks.len().min(MAX_SHARED_BLOCKS)];
        if blocks.is_empty() {
            return Some(Vec::new());
        }
        let (current, previous) = self.windows();
        let call = self.runner.run(
            &scripts()[1],
            vec![current, previous],
            blocks.iter().map(|b| field(*b)).collect(),
        );
        match self.degrade.call(call).await {
            Ok(masks) => Some(
                masks
                    .iter()
                    .map(|m| match m.strip_prefix('p') {
                        Some(old) => SharedMask {
                            mask: old.parse().unwrap_or(0),
                            current: false,
                        },
                        None => SharedMask {
                            mask: m.parse().unwrap_or(0),
                            current: !m.is_empty(),
                        },
                    })
                    .collect(),
            ),
            Err(error) => {
                tracing::debug!(component = "balance", error = %error, "shared prefix index unavailable");
                None
            }
        }
    }

    /// Sets `endpoint`'s bit on the blocks whose shared mask lacks it (or
    /// sits in the previous window). `read` is what [`read_prefix`]
    /// returned for `blocks`.
    pub(crate) async fn write_prefix(&self, blocks: &[u64], read: &[SharedMask], endpoint: usize) {
        let bit = 1u64 << endpoint;
        let mut args = vec![(self.window_ms * 2).to_string()];
        for (block, shared) in blocks.iter().zip(read) {
            if shared.mask & bit == 0 || !shared.current {
                args.push(field(*block));
                args.push((shared.mask | bit).to_string());
            }
        }
        if args.len() == 1 {
            return;
        }
        let (current, _) = self.windows();
        let call = self.runner.run(&scripts()[2], vec![current], args);
        if let Err(error) = self.degrade.call(call).await {
            tracing::debug!(component = "balance", error = %error, "shared prefix index not written");
        }
    }

    /// The current and previous windows' keys, by this replica's clock
    /// (replicas a few seconds apart only move a window's edge).
    fn windows(&self) -> (String, String) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let window = now / self.window_ms;
        (
            format!("{}:{window}", self.prefix_key),
            format!("{}:{}", self.prefix_key, window.saturating_sub(1)),
        )
    }
}

fn field(block: u64) -> String {
    format!("{block:016x}")
}

/// A random id for this replica's load entry.
fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
