//! Shared breaker state in Redis (feature `redis`).
//!
//! Each breaker has one Redis hash, `{prefix}:circuit:{tag}`, holding the
//! fleet's view: state, generation, open-until time (Redis clock),
//! consecutive openings and half-open trial successes; the trial leases are
//! a sorted set beside it (`…:leases`, scored by expiry) under the same hash
//! tag, so every script touches one Cluster slot. Each change is one Lua
//! script that reads `TIME` and bumps the generation; a replica's change
//! applies only if the generation is still the one it last saw, so a stale
//! replica can't overwrite a newer state.
//!
//! Each replica keeps its own breaker as a local snapshot of the shared one:
//!
//! - **Closed**: no Redis round trip per call. A background task reads every
//!   breaker's hash each `sync_interval`, which bounds how stale a replica
//!   can be; when a replica's own window trips, it opens at once and tells
//!   Redis (one script call, off the request path).
//! - **Open → half-open**: when a replica's open wait is over it asks Redis
//!   for a trial lease; Redis moves the fleet to half-open and grants at most
//!   the configured number of leases across all replicas. A lease runs out
//!   after the trial lease time, so a replica that dies mid-trial can't hold
//!   the circuit half-open. The call that finds no lease ready is refused
//!   while the lease is requested, and the next one uses it.
//! - **Trial outcomes** go to Redis, which closes the circuit after enough
//!   successes or reopens it (for a wait that grows with each reopening).
//!
//! When Redis is unavailable ([`Degrade`] says so after a failure or a
//! timeout), each replica runs its own breaker alone: trips, waits and
//! trials are local. When Redis is back, the next sync brings the replica
//! back in line; a trip decided while Redis was away is sent then.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::error::Error as RedisError;
use fred::interfaces::LuaInterface;
use parking_lot::Mutex;
use tower_ai_core::redis::{Degrade, KeySpace, Script, StoreOptions, Tag};

use crate::breaker::{ANY_GENERATION, Breaker, Remote, RemoteState};
use crate::classify::Outcome;
use crate::config::{ConfigError, Settings, random_seed};
use crate::registry::{Registry, RemoteFactory};
use crate::state::State;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

macro_rules! prologue {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'g', 's', 'u', 'n', 'ok')
local g = tonumber(h[1]) or 0
local s = tonumber(h[2]) or 0
local u = tonumber(h[3]) or 0
local n = tonumber(h[4]) or 0
local ok = tonumber(h[5]) or 0
local ttl = tonumber(ARGV[1])
local function save()
  redis.call('HSET', KEYS[1], 'g', g, 's', s, 'u', u, 'n', n, 'ok', ok)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local function reply(granted)
  local rem = 0
  if s == 1 and u > now then rem = u - now end
  return {granted, g, s, rem, n}
end
"
    };
}

/// Reads the shared state. ARGV: ttl.
const SYNC: &str = concat!(
    prologue!(),
    r"
return reply(0)
"
);

/// Opens from closed or half-open at the expected generation, or from
/// closed at any generation when the expected one is -1 (a replica that
/// hasn't synced yet). ARGV: ttl, expected, wait_ms, opens.
const TRIP: &str = concat!(
    prologue!(),
    r"
local expected = tonumber(ARGV[2])
if (g == expected and (s == 0 or s == 2)) or (expected < 0 and s == 0) then
  g = g + 1; s = 1; u = now + tonumber(ARGV[3]); n = tonumber(ARGV[4]); ok = 0
  redis.call('DEL', KEYS[2])
  save()
end
return reply(0)
"
);

/// Moves an open circuit whose wait is over to half-open, and grants a trial
/// lease if one is free. ARGV: ttl, trials, lease_ms, lease_id.
const ACQUIRE: &str = concat!(
    prologue!(),
    r"
local granted = 0
if s == 1 and now >= u then
  g = g + 1; s = 2; ok = 0
  redis.call('DEL', KEYS[2])
  save()
end
if s == 2 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) + ok < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
    redis.call('PEXPIRE', KEYS[2], ttl)
    granted = 1
  end
end
return reply(granted)
"
);

/// Ends a trial. ARGV: ttl, generation, lease_id, outcome (0 success,
/// 1 failure, 2 neither), trials, wait_ms, opens.
const RELEASE: &str = concat!(
    prologue!(),
    r"
local removed = redis.call('ZREM', KEYS[2], ARGV[3])
if removed == 1 and g == tonumber(ARGV[2]) and s == 2 then
  local outcome = tonumber(ARGV[4])
  if outcome == 0 then
    ok = ok + 1
    if ok >= tonumber(ARGV[5]) then
      g = g + 1; s = 0; n = 0; ok = 0; u = 0
      redis.call('DEL', KEYS[2])
    end
    save()
  elseif outcome == 1 then
    g = g + 1; s = 1; u = now + tonumber(ARGV[6]); n = tonumber(ARGV[7]); ok = 0
    redis.call('DEL', KEYS[2])
    save()
  end
end
return reply(0)
"
);

/// Sets the state by hand. ARGV: ttl, state.
const SET: &str = concat!(
    prologue!(),
    r"
g = g + 1; s = tonumber(ARGV[2]); ok = 0; u = 0
if s == 0 then n = 0 end
redis.call('DEL', KEYS[2])
save()
return reply(0)
"
);

struct Scripts {
    sync: Script,
    trip: Script,
    acquire: Script,
    release: Script,
    set: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            sync: Script::new(SYNC),
            trip: Script::new(TRIP),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            set: Script::new(SET),
        }
    }
}

/// Runs a script on some `fred` client, behind a trait object so the layer's
/// type doesn't carry the client's.
trait Runner: Send + Sync {
    fn run<'a>(
        &'a self,
        script: &'a Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<i64>, RedisError>>;
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
    ) -> BoxFuture<'a, Result<Vec<i64>, RedisError>> {
        Box::pin(script.call::<Vec<i64>, _, _, _>(&self.0, keys, args))
    }
}

/// Shared breaker state in Redis, for
/// [`CircuitBreakerBuilder::redis`](crate::CircuitBreakerBuilder::redis).
///
/// Generic over the `fred` client (a `Client`, a `Pool`, standalone or
/// Cluster); every call goes through a [`Degrade`], so when Redis is slow or
/// down each replica falls back to its local breaker. The crate's
/// documentation (section "Shared state") describes what is shared and how.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use tower_ai_core::redis::{ConnectOptions, connect};
/// use tower_circuit::{CircuitBreakerLayer, RedisStore};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
/// let layer = CircuitBreakerLayer::builder()
///     .name("upstream")
///     .redis(RedisStore::builder(client).sync_interval(Duration::from_millis(500)).build())
///     .build()?;
/// # let _ = layer;
/// # Ok(()) }
/// ```
pub struct RedisStore {
    runner: Arc<dyn Runner>,
    keys: KeySpace,
    prefix: String,
    sync_interval: Duration,
    key_ttl: Duration,
    degrade: Degrade,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("sync_interval", &self.sync_interval)
            .field("key_ttl", &self.key_ttl)
            .field("health", &self.degrade.health())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Shared state through `client` with the defaults: keys under
    /// `tower-ai`, a sync every second, its own Redis health state (50 ms
    /// timeout).
    pub fn new<C>(client: C) -> Self
    where
        C: LuaInterface + Send + Sync + 'static,
    {
        Self::builder(client).build()
    }

    /// A builder for shared state through `client` (a fred `Client` or
    /// `Pool`).
    pub fn builder<C>(client: C) -> RedisStoreBuilder
    where
        C: LuaInterface + Send + Sync + 'static,
    {
        RedisStoreBuilder {
            runner: Arc::new(ClientRunner(client)),
            redis: StoreOptions::default(),
            sync_interval: Duration::from_secs(1),
            key_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// The Redis health state this store's calls go through.
    pub fn health(&self) -> &Degrade {
        &self.degrade
    }

    pub(crate) fn into_factory(self) -> Arc<dyn RemoteFactory> {
        Arc::new(Factory {
            shared: Arc::new(Shared {
                runner: self.runner,
                keys: self.keys,
                scripts: Scripts::new(),
                degrade: self.degrade,
                sync_interval: self.sync_interval,
                ttl_ms: self.key_ttl.as_millis().to_string(),
                lease_ids: AtomicU64::new(random_seed(&self.prefix)),
            }),
        })
    }
}

/// Builds a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    runner: Arc<dyn Runner>,
    redis: StoreOptions,
    sync_interval: Duration,
    key_ttl: Duration,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("redis", &self.redis)
            .field("sync_interval", &self.sync_interval)
            .field("key_ttl", &self.key_ttl)
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
    /// the same connection (default: a new one named `"circuit"`).
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// How often each replica reads the shared state (default 1 s): the
    /// longest a replica keeps calling an upstream that another replica
    /// found failing. One script call per breaker per interval.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a breaker's keys live in Redis after their last change
    /// (default 24 h).
    pub fn key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The store.
    pub fn build(self) -> RedisStore {
        RedisStore {
            runner: self.runner,
            keys: self.redis.keys("circuit"),
            prefix: self.redis.prefix().to_owned(),
            sync_interval: self.sync_interval,
            key_ttl: self.key_ttl,
            degrade: self.redis.degrade_or("circuit"),
        }
    }
}

struct Shared {
    runner: Arc<dyn Runner>,
    keys: KeySpace,
    scripts: Scripts,
    degrade: Degrade,
    sync_interval: Duration,
    ttl_ms: String,
    lease_ids: AtomicU64,
}

impl Shared {
    /// Runs `script` for one breaker, under the Degrade timeout.
    async fn run(
        &self,
        script: &Script,
        keys: &[String; 2],
        mut args: Vec<String>,
    ) -> Option<RemoteState> {
        args.insert(0, self.ttl_ms.clone());
        let call = self.runner.run(script, keys.to_vec(), args);
        match self.degrade.call(call).await {
            Ok(reply) => parse(&reply),
            Err(error) => {
                tracing::debug!(component = "circuit", error = %error, "shared circuit state unavailable");
                None
            }
        }
    }

    /// A lease id: unique per process, and below 2^53 so Lua's numbers keep
    /// it exact.
    fn lease_id(&self) -> u64 {
        let mut n = self.lease_ids.fetch_add(1, Ordering::Relaxed);
        (crate::config::next_random(&mut n) & ((1 << 53) - 1)).max(1)
    }
}

fn parse(reply: &[i64]) -> Option<RemoteState> {
    let [granted, generation, state, remaining, opens] = *reply else {
        return None;
    };
    Some(RemoteState {
        generation: u64::try_from(generation).ok()?,
        state: State::from_code(u64::try_from(state).ok()?),
        remaining: Duration::from_millis(u64::try_from(remaining).unwrap_or(0)),
        opens: u32::try_from(opens).unwrap_or(u32::MAX),
        granted: (granted == 1).then_some(0),
    })
}

struct Factory {
    shared: Arc<Shared>,
}

impl fmt::Debug for Factory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RemoteFactory for Factory {
    fn link(&self, settings: &Settings, key: Option<&str>) -> Box<dyn Remote> {
        // A name chosen by the application is used as is; a key comes from
        // requests, so only its digest goes into the key name.
        let tag = match key {
            None => Tag::fixed(&settings.name),
            Some(key) => Tag::digest(format!("{}\0{key}", settings.name)),
        };
        let keys = Arc::new([
            self.shared.keys.key(&tag, ""),
            self.shared.keys.key(&tag, "leases"),
        ]);
        Box::new(Link {
            shared: Arc::clone(&self.shared),
            keys,
            trials: settings.trials.to_string(),
            lease_ms: settings.trial_lease.as_millis().to_string(),
            acquiring: Arc::new(AtomicBool::new(false)),
            queue: Arc::new(Mutex::new(Queue::default())),
        })
    }

    fn start(&self, registry: Weak<Registry>) -> Result<(), ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let interval = self.shared.sync_interval;
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // The task ends with the layer.
                let Some(registry) = registry.upgrade() else {
                    break;
                };
                let breakers = registry.breakers();
                drop(registry);
                for breaker in &breakers {
                    if let Some(remote) = &breaker.remote {
                        remote.sync(breaker).await;
                    }
                }
            }
        });
        Ok(())
    }
}

struct Link {
    shared: Arc<Shared>,
    keys: Arc<[String; 2]>,
    trials: String,
    lease_ms: String,
    acquiring: Arc<AtomicBool>,
    queue: Arc<Mutex<Queue>>,
}

/// The writes of one breaker, sent to Redis one at a time and in order (so
/// that "force open, then reset" can't arrive reversed).
#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Whether a task is draining the queue.
    running: bool,
}

/// More queued writes than this for one breaker (Redis slow or down) are
/// dropped; a trip or a manual setting is sent again at the next sync, a
/// trial lease runs out by itself.
const MAX_QUEUED: usize = 32;

struct Op {
    script: fn(&Scripts) -> &Script,
    args: Vec<String>,
    /// The lease id asked for, for an acquire.
    granted: Option<u64>,
    /// Cleared when the op is over (the acquire-in-progress flag).
    done: Option<Arc<AtomicBool>>,
}

impl Op {
    fn finish(self) {
        if let Some(flag) = self.done {
            flag.store(false, Ordering::Release);
        }
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("key", &self.keys[0]).finish()
    }
}

impl Link {
    /// Queues `op` and makes sure a task sends the queue to Redis; does
    /// nothing outside a Tokio runtime (the breaker stays local).
    fn send(&self, breaker: &Arc<Breaker>, op: Op) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            op.finish();
            return;
        };
        let mut queue = self.queue.lock();
        if queue.ops.len() >= MAX_QUEUED {
            drop(queue);
            tracing::debug!(
                component = "circuit",
                "shared circuit writes queued up; dropping one"
            );
            op.finish();
            return;
        }
        queue.ops.push_back(op);
        if std::mem::replace(&mut queue.running, true) {
            return;
        }
        drop(queue);
        let shared = Arc::clone(&self.shared);
        let keys = Arc::clone(&self.keys);
        let queue = Arc::clone(&self.queue);
        let breaker = Arc::clone(breaker);
        runtime.spawn(async move {
            loop {
                let op = {
                    let mut queue = queue.lock();
                    match queue.ops.pop_front() {
                        Some(op) => op,
                        None => {
                            queue.running = false;
                            break;
                        }
                    }
                };
                let reply = shared
                    .run((op.script)(&shared.scripts), &keys, op.args.clone())
                    .await;
                if let Some(mut state) = reply {
                    state.granted = state.granted.and(op.granted);
                    breaker.adopt(state);
                }
                op.finish();
            }
        });
    }
}

impl Remote for Link {
    fn is_up(&self) -> bool {
        self.shared.degrade.is_up()
    }

    fn health(&self) -> &'static str {
        self.shared.degrade.health().as_str()
    }

    fn trip(&self, breaker: &Arc<Breaker>, expected: u64, wait: Duration, opens: u32) {
        let expected = if expected == ANY_GENERATION {
            "-1".to_owned()
        } else {
            expected.to_string()
        };
        let args = vec![
            expected,
            wait.as_millis().max(1).to_string(),
            opens.to_string(),
        ];
        self.send(
            breaker,
            Op {
                script: |s| &s.trip,
                args,
                granted: None,
                done: None,
            },
        );
    }

    fn acquire(&self, breaker: &Arc<Breaker>) {
        if self
            .acquiring
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // one request at a time
        }
        let id = self.shared.lease_id();
        let args = vec![self.trials.clone(), self.lease_ms.clone(), id.to_string()];
        self.send(
            breaker,
            Op {
                script: |s| &s.acquire,
                args,
                granted: Some(id),
                done: Some(Arc::clone(&self.acquiring)),
            },
        );
    }

    fn release(
        &self,
        breaker: &Arc<Breaker>,
        generation: u64,
        lease: u64,
        outcome: Outcome,
        wait: Duration,
        opens: u32,
    ) {
        let outcome = match outcome {
            Outcome::Success => "0",
            Outcome::Failure => "1",
            Outcome::Ignored => "2",
        };
        let args = vec![
            generation.to_string(),
            lease.to_string(),
            outcome.to_owned(),
            self.trials.clone(),
            wait.as_millis().max(1).to_string(),
            opens.to_string(),
        ];
        self.send(
            breaker,
            Op {
                script: |s| &s.release,
                args,
                granted: None,
                done: None,
            },
        );
    }

    fn set(&self, breaker: &Arc<Breaker>, state: State) {
        let args = vec![(state as u8).to_string()];
        self.send(
            breaker,
            Op {
                script: |s| &s.set,
                args,
                granted: None,
                done: None,
            },
        );
    }

    fn sync<'a>(&'a self, breaker: &'a Arc<Breaker>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(state) = self
                .shared
                .run(&self.shared.scripts.sync, &self.keys, Vec::new())
                .await
            {
                breaker.adopt(state);
            }
        })
    }
}
