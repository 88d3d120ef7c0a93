//! The Redis backend: every replica shares one count.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::types::Value;
use tower_ai_core::key::ClientKey;
use tower_ai_core::redis::{Degrade, KeySpace, Script, StoreOptions, Tag, Unavailable};

use crate::algorithm::Decision;
use crate::store::{Charge, MemoryStore, Verdict};

static CHECK: &str = include_str!("check.lua");
static ADJUST: &str = include_str!("adjust.lua");

/// What the layer does while Redis can't be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Limit with a local in-memory limiter of the same policies until Redis
    /// answers again (each replica then counts alone). The default.
    #[default]
    Open,
    /// Refuse with `503 Service Unavailable`.
    Closed,
}

/// Rate-limit state in Redis (standalone or Cluster), shared by every
/// replica.
///
/// Each check is one `EVALSHA` of one Lua script that reads
/// `redis.call('TIME')` and checks and charges all of the request's policies
/// at once (their keys share the client's hash tag, so this works on a
/// Cluster). Keys are `{prefix}:ratelimit:{digest of the client key}:{policy}`
/// and expire when idle. Every call has a timeout (default 50 ms); after a
/// failure the store uses its fallback for a backoff period (see
/// [`Degrade`]), per its [`FailMode`].
///
/// ```
/// use std::time::Duration;
/// use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, client};
/// use tower_ai_ratelimit::{FailMode, Policy, Rate, RateLimitLayer, RedisStore};
///
/// let client = client(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).unwrap();
/// // One health state per Redis, shared by every store on it.
/// let health = Degrade::new("redis", DegradeConfig::default());
/// let store = RedisStore::builder(client)
///     .prefix("tower-ai")
///     .degrade(health.clone())
///     .fail_mode(FailMode::Open)
///     .lease(100, Duration::from_secs(10))
///     .build();
/// assert_eq!(store.health().component(), "redis");
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::token_bucket(10, Rate::per_second(1.0)))
///     .redis(store)
///     .build();
/// assert!(layer.is_ok());
/// ```
///
/// # Quota leases
///
/// One Redis core runs roughly 130k script calls a second. Past that, a
/// store built with [`RedisStoreBuilder::lease`] borrows `size` units at a
/// time for a client key (charged in Redis at once, like a request of that
/// cost) and spends them locally, so most checks make no round trip. Nothing
/// is ever admitted that Redis did not charge, so leases never let a client
/// past its limit; the price is the other way: units a replica has borrowed
/// but not spent when its lease expires are lost to the client until they
/// refill, so across `n` replicas a client may be refused up to `n × size`
/// units early. Leases apply to checks whose policies all charge the same
/// cost (request counting), not to token policies. While Redis is down a
/// replica spends what is left of its lease, then falls back.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: KeySpace,
    check: Script,
    adjust: Script,
    degrade: Degrade,
    fallback: MemoryStore,
    fail: FailMode,
    nonce: AtomicU64,
    leases: Option<Leases>,
}

struct Leases {
    size: u64,
    ttl: Duration,
    held: moka::sync::Cache<ClientKey, Arc<Slot>>,
}

/// One client key's lease on this replica.
///
/// Borrows are single-flight: one request borrows (holding `borrowing`),
/// the others wait for it and spend from what it brought back, so a burst
/// borrows one lease at a time instead of the whole quota at once. `held`
/// is only ever changed under its mutex, so units borrowed are pooled,
/// never overwritten.
#[derive(Default)]
struct Slot {
    held: parking_lot::Mutex<Held>,
    borrowing: tokio::sync::Mutex<()>,
}

/// Units borrowed from Redis for one client key, and the decisions Redis
/// gave when they were borrowed (to report what is left).
#[derive(Default)]
struct Held {
    left: u64,
    decisions: Arc<[Decision]>,
    /// When the units are given up.
    expires: Option<Instant>,
    /// Until then, less than a lease was left in Redis: requests check
    /// alone instead of borrowing.
    short_until: Option<Instant>,
}

/// Builds a [`RedisStore`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    client: Client,
    redis: StoreOptions,
    fallback: Option<MemoryStore>,
    fail: FailMode,
    lease: Option<(u64, Duration)>,
}

impl RedisStoreBuilder {
    /// Borrows `size` units at a time per client key and spends them
    /// locally; a lease is given up after `ttl` (see the type's docs).
    pub fn lease(mut self, size: u64, ttl: Duration) -> Self {
        self.lease = (size > 1).then_some((size, ttl));
        self
    }

    /// The prefix of every key (default `"tower-ai"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// The Redis health state calls go through: its timeout and backoff,
    /// shared with every other store given a clone of it (default: a new
    /// `Degrade::new("ratelimit", DegradeConfig::default())`, 50 ms
    /// timeout).
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// What happens while Redis is down (default [`FailMode::Open`]).
    pub fn fail_mode(mut self, fail: FailMode) -> Self {
        self.fail = fail;
        self
    }

    /// The local limiter used while Redis is down (default: a new
    /// [`MemoryStore`]).
    pub fn fallback(mut self, fallback: MemoryStore) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// The store.
    pub fn build(self) -> RedisStore {
        RedisStore {
            inner: Arc::new(Inner {
                client: self.client,
                keys: self.redis.keys("ratelimit"),
                check: Script::new(CHECK),
                adjust: Script::new(ADJUST),
                degrade: self.redis.degrade_or("ratelimit"),
                fallback: self.fallback.unwrap_or_default(),
                fail: self.fail,
                nonce: AtomicU64::new(initial_nonce()),
                leases: self.lease.map(|(size, ttl)| Leases {
                    size,
                    ttl,
                    held: moka::sync::Cache::builder()
                        .max_capacity(100_000)
                        .time_to_idle(ttl)
                        .build(),
                }),
            }),
        }
    }
}

impl RedisStore {
    /// A store on `client` with the defaults (`builder(client).build()`).
    pub fn new(client: Client) -> Self {
        Self::builder(client).build()
    }

    /// A builder for a store on `client`.
    pub fn builder(client: Client) -> RedisStoreBuilder {
        RedisStoreBuilder {
            client,
            redis: StoreOptions::default(),
            fallback: None,
            fail: FailMode::Open,
            lease: None,
        }
    }

    /// The Redis health state (for health checks): the [`Degrade`] given to
    /// [`RedisStoreBuilder::degrade`], or the store's own.
    pub fn health(&self) -> &Degrade {
        &self.inner.degrade
    }

    /// What the store does while Redis is down.
    pub fn fail(&self) -> FailMode {
        self.inner.fail
    }

    fn key(&self, tag: &Tag, charge: &Charge<'_>) -> String {
        self.inner.keys.key(tag, charge.name)
    }

    fn nonce(&self) -> String {
        format!("{:x}", self.inner.nonce.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) async fn check(&self, key: &ClientKey, charges: &[Charge<'_>]) -> Verdict {
        if let Some(leases) = &self.inner.leases
            && let Some(cost) = uniform_cost(charges)
            && cost <= leases.size
            && let Some(verdict) = self.check_leased(leases, key, charges, cost).await
        {
            return verdict;
        }
        self.check_in_redis(key, charges).await
    }

    /// Spends `cost` from the key's lease, borrowing a new one first when
    /// it holds too little; `None` when the request must check alone (less
    /// than a lease is left in Redis).
    async fn check_leased(
        &self,
        leases: &Leases,
        key: &ClientKey,
        charges: &[Charge<'_>],
        cost: u64,
    ) -> Option<Verdict> {
        let slot = leases.held.get_with_by_ref(key, Arc::default);
        match slot.spend(cost) {
            Spent::Served(verdict) => return Some(verdict),
            Spent::Short => return None,
            Spent::Empty => {}
        }
        let _borrowing = slot.borrowing.lock().await;
        // Another request may have borrowed while this one waited.
        match slot.spend(cost) {
            Spent::Served(verdict) => return Some(verdict),
            Spent::Short => return None,
            Spent::Empty => {}
        }
        let borrow: Vec<Charge<'_>> = charges
            .iter()
            .map(|c| Charge {
                cost: leases.size,
                ..*c
            })
            .collect();
        let verdict = self.check_in_redis(key, &borrow).await;
        let now = Instant::now();
        if verdict.allowed() {
            return Some(slot.fill(leases.size - cost, verdict.decisions(), now + leases.ttl));
        }
        if !verdict.unavailable() {
            // Not refused outright: less than a lease is left. Until a whole
            // lease could have refilled, requests check alone.
            let wait = verdict
                .decisions()
                .iter()
                .filter_map(Decision::retry_after)
                .max()
                .unwrap_or(leases.ttl)
                .min(leases.ttl);
            slot.held.lock().short_until = Some(now + wait);
        }
        None
    }

    async fn check_in_redis(&self, key: &ClientKey, charges: &[Charge<'_>]) -> Verdict {
        let inner = &self.inner;
        let tag = Tag::digest(key.to_bytes());
        let keys: Vec<String> = charges.iter().map(|c| self.key(&tag, c)).collect();
        let mut args: Vec<Value> = Vec::with_capacity(2 + charges.len() * 4);
        args.push(self.nonce().into());
        args.push((charges.len() as i64).into());
        for c in charges {
            args.push(i64::from(c.spec.kind().code()).into());
            args.push((c.spec.capacity() as i64).into());
            args.push(micros(c.spec.period_ns()));
            args.push((c.cost as i64).into());
        }
        let result = inner
            .degrade
            .call(
                inner
                    .check
                    .call::<Vec<i64>, _, _, _>(&inner.client, keys, args),
            )
            .await;
        match result {
            Ok(reply) => match verdict_from_reply(&reply, charges) {
                Some(v) => v,
                None => {
                    tracing::error!(reply = ?reply, "unexpected rate limit script reply");
                    self.unavailable(key, charges, &"unexpected script reply")
                }
            },
            Err(e) => self.unavailable(key, charges, &e),
        }
    }

    fn unavailable(
        &self,
        key: &ClientKey,
        charges: &[Charge<'_>],
        error: &dyn fmt::Display,
    ) -> Verdict {
        metrics::counter!("tower_ai_ratelimit_backend_fallback_total", "mode" => match self.inner.fail {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        })
        .increment(1);
        tracing::trace!(error = %error, "rate limit falls back");
        match self.inner.fail {
            FailMode::Open => self.inner.fallback.check(key, charges),
            FailMode::Closed => Verdict::unavailable_verdict(),
        }
    }

    pub(crate) async fn adjust(&self, key: &ClientKey, charge: Charge<'_>, refund: bool) {
        let inner = &self.inner;
        let tag = Tag::digest(key.to_bytes());
        let args: Vec<Value> = vec![
            self.nonce().into(),
            i64::from(charge.spec.kind().code()).into(),
            (charge.spec.capacity() as i64).into(),
            micros(charge.spec.period_ns()),
            (charge.cost as i64).into(),
            i64::from(refund).into(),
        ];
        let result = inner
            .degrade
            .call(
                inner
                    .adjust
                    .call::<i64, _, _, _>(&inner.client, self.key(&tag, &charge), args),
            )
            .await;
        if let Err(e) = result {
            if !matches!(e, Unavailable::Degraded { .. }) {
                tracing::debug!(error = %e, "rate limit reconciliation failed");
            }
            inner.fallback.adjust(key, &charge, refund);
        }
    }
}

/// The cost every charge shares, if they all share one.
fn uniform_cost(charges: &[Charge<'_>]) -> Option<u64> {
    let first = charges.first()?.cost;
    charges.iter().all(|c| c.cost == first).then_some(first)
}

/// What a lease could do for a request.
enum Spent {
    /// Served from the lease.
    Served(Verdict),
    /// The lease holds too little: borrow.
    Empty,
    /// Less than a lease is left in Redis: check alone.
    Short,
}

impl Slot {
    fn spend(&self, cost: u64) -> Spent {
        let now = Instant::now();
        let mut held = self.held.lock();
        if held.expires.is_some_and(|at| at <= now) {
            held.left = 0;
            held.expires = None;
        }
        if held.left >= cost {
            held.left -= cost;
            return Spent::Served(report(&held.decisions, held.left));
        }
        match held.short_until {
            Some(until) if until > now => Spent::Short,
            _ => Spent::Empty,
        }
    }

    /// Pools `left` newly borrowed units with whatever is still held, and
    /// reports what the request that borrowed them sees.
    fn fill(&self, left: u64, decisions: &[Decision], expires: Instant) -> Verdict {
        let mut held = self.held.lock();
        if held.expires.is_some_and(|at| at <= Instant::now()) {
            held.left = 0;
        }
        held.left += left;
        held.decisions = decisions.into();
        held.expires = Some(expires);
        held.short_until = None;
        report(&held.decisions, held.left)
    }
}

/// A verdict for a request served from a lease: what Redis had left when
/// the lease was borrowed, plus what the lease still holds.
fn report(decisions: &[Decision], left: u64) -> Verdict {
    let mut verdict = Verdict::default();
    for d in decisions {
        verdict.push(Decision::new(
            true,
            d.limit(),
            d.remaining() + left,
            d.reset(),
            None,
        ));
    }
    verdict.set_allowed(true);
    verdict
}

/// Microseconds, as the scripts count (they read `TIME`).
fn micros(ns: u64) -> Value {
    Value::Double((ns as f64 / 1_000.0).max(1.0))
}

fn verdict_from_reply(reply: &[i64], charges: &[Charge<'_>]) -> Option<Verdict> {
    if reply.len() != 1 + charges.len() * 3 {
        return None;
    }
    let mut verdict = Verdict::default();
    let allowed = reply[0] == 1;
    for (i, c) in charges.iter().enumerate() {
        let remaining = u64::try_from(reply[1 + i * 3]).unwrap_or(0);
        let reset = Duration::from_micros(u64::try_from(reply[2 + i * 3]).unwrap_or(0));
        let retry = u64::try_from(reply[3 + i * 3]).unwrap_or(0);
        let this_allowed = retry == 0;
        verdict.push(Decision::new(
            this_allowed,
            c.spec.capacity(),
            remaining,
            reset,
            (!this_allowed).then(|| Duration::from_micros(retry)),
        ));
    }
    verdict.set_allowed(allowed);
    Some(verdict)
}

/// A start for request nonces that differs between processes.
fn initial_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.inner.keys)
            .field("fail", &self.inner.fail)
            .field("health", &self.inner.degrade.health())
            .finish_non_exhaustive()
    }
}
