//! Each endpoint's load and health, and the [`Permit`] a request holds on
//! its endpoint until its response body ends or is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Settings;

/// When failures cool an endpoint down, from the pool's settings.
#[derive(Debug, Clone, Copy)]
struct Health {
    cooldown_after: u32,
    cooldown: Duration,
    max_cooldown: Duration,
}

/// Every endpoint's counters, shared by a pool and the permits it hands out.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) loads: Box<[Load]>,
    /// Woken each time a permit is released.
    pub(crate) freed: Notify,
    /// Cooldowns are kept as nanoseconds since this instant (tokio's clock,
    /// so paused time drives them in tests).
    epoch: Instant,
    health: Health,
}

/// One endpoint's counters. Lock-free: a pick reads them all.
#[derive(Debug)]
pub(crate) struct Load {
    pub(crate) max_concurrency: u32,
    pub(crate) in_flight: AtomicU32,
    pub(crate) tokens: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Nanoseconds since the epoch until which the endpoint is skipped; 0
    /// when it is not cooling down.
    cooled_until: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) cooldowns: AtomicU64,
    pub(crate) blocks: AtomicU64,
    pub(crate) blocks_matched: AtomicU64,
    /// Other replicas' requests and tokens in flight here, as of the last
    /// sync through Redis (zero without it).
    pub(crate) remote_in_flight: AtomicU32,
    pub(crate) remote_tokens: AtomicU64,
    /// What the endpoint last reported of itself: requests waiting in its
    /// own queue, and its KV-cache usage in millionths (`u32::MAX`: no
    /// report).
    pub(crate) reported_waiting: AtomicU32,
    pub(crate) reported_kv: AtomicU32,
    pub(crate) name: Arc<str>,
    pool: Arc<str>,
    meters: Meters,
}

/// The endpoint's metric handles, registered once.
#[derive(Debug)]
struct Meters {
    in_flight: metrics::Gauge,
    cooldowns: metrics::Counter,
    blocks_matched: metrics::Counter,
    blocks_missed: metrics::Counter,
}

impl Load {
    pub(crate) fn new(max_concurrency: u32, pool: Arc<str>, name: Arc<str>) -> Self {
        let labels = [("pool", pool.to_string()), ("endpoint", name.to_string())];
        Self {
            max_concurrency,
            in_flight: AtomicU32::new(0),
            tokens: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            cooled_until: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cooldowns: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            blocks_matched: AtomicU64::new(0),
            remote_in_flight: AtomicU32::new(0),
            remote_tokens: AtomicU64::new(0),
            reported_waiting: AtomicU32::new(0),
            reported_kv: AtomicU32::new(u32::MAX),
            meters: Meters {
                in_flight: metrics::gauge!("tower_ai_balance_in_flight", &labels),
                cooldowns: metrics::counter!("tower_ai_balance_cooldowns_total", &labels),
                blocks_matched: metrics::counter!(
                    "tower_ai_balance_prefix_blocks_total",
                    &[
                        ("pool", pool.to_string()),
                        ("endpoint", name.to_string()),
                        ("outcome", "matched".to_owned()),
                    ]
                ),
                blocks_missed: metrics::counter!(
                    "tower_ai_balance_prefix_blocks_total",
                    &[
                        ("pool", pool.to_string()),
                        ("endpoint", name.to_string()),
                        ("outcome", "missed".to_owned()),
                    ]
                ),
            },
            name,
            pool,
        }
    }

    /// Takes a permit if one is free, counting the other replicas' requests
    /// here too: `max_concurrency` is the endpoint's, not one replica's.
    fn try_acquire(&self) -> bool {
        let others = self.remote_in_flight.load(Ordering::Acquire);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n.saturating_add(others) < self.max_concurrency).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a request's prompt blocks sent here, `matched` of which the
    /// prefix index said this endpoint held.
    pub(crate) fn count_blocks(&self, blocks: u64, matched: u64) {
        let matched = matched.min(blocks);
        self.blocks.fetch_add(blocks, Ordering::Relaxed);
        self.blocks_matched.fetch_add(matched, Ordering::Relaxed);
        self.meters.blocks_matched.increment(matched);
        self.meters.blocks_missed.increment(blocks - matched);
    }

    pub(crate) fn has_room(&self) -> bool {
        self.in_flight_everywhere() < self.max_concurrency && !self.kv_full()
    }

    /// Whether the endpoint reported its KV cache (nearly) full.
    fn kv_full(&self) -> bool {
        self.kv_usage()
            .is_some_and(|kv| kv >= crate::signals::KV_FULL)
    }

    /// The KV-cache usage the endpoint last reported.
    pub(crate) fn kv_usage(&self) -> Option<f64> {
        let kv = self.reported_kv.load(Ordering::Relaxed);
        (kv != u32::MAX).then(|| f64::from(kv) / 1e6)
    }

    /// Records what the endpoint reports of itself (`None`: nothing known).
    pub(crate) fn report(&self, signals: Option<crate::signals::Signals>) {
        let (waiting, kv) = signals.map_or((0, u32::MAX), |s| {
            (s.waiting, (s.kv_usage.clamp(0.0, 1.0) * 1e6) as u32)
        });
        self.reported_waiting.store(waiting, Ordering::Relaxed);
        self.reported_kv.store(kv, Ordering::Relaxed);
    }

    /// Requests in flight here, from every replica.
    pub(crate) fn in_flight_everywhere(&self) -> u32 {
        self.in_flight
            .load(Ordering::Acquire)
            .saturating_add(self.remote_in_flight.load(Ordering::Acquire))
    }

    /// Tokens in flight here, from every replica, plus the endpoint's own
    /// queue as it reports it.
    pub(crate) fn tokens_everywhere(&self) -> u64 {
        let waiting = u64::from(self.reported_waiting.load(Ordering::Relaxed));
        self.tokens
            .load(Ordering::Acquire)
            .saturating_add(self.remote_tokens.load(Ordering::Acquire))
            .saturating_add(waiting.saturating_mul(crate::signals::WAITING_TOKENS))
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

impl State {
    pub(crate) fn new(loads: Box<[Load]>, settings: &Settings) -> Self {
        Self {
            loads,
            freed: Notify::new(),
            epoch: Instant::now(),
            health: Health {
                cooldown_after: settings.cooldown_after,
                cooldown: settings.cooldown,
                max_cooldown: settings.max_cooldown,
            },
        }
    }

    /// This replica's own requests and tokens in flight, per endpoint.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn own_load(&self) -> Vec<(u32, u64)> {
        self.loads
            .iter()
            .map(|l| {
                (
                    l.in_flight.load(Ordering::Acquire),
                    l.tokens.load(Ordering::Acquire),
                )
            })
            .collect()
    }

    /// Sets the other replicas' load (`None`: unknown, counted as none).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_remote_load(&self, others: Option<Vec<(u32, u64)>>) {
        let others = others.unwrap_or_default();
        for (i, load) in self.loads.iter().enumerate() {
            let (n, t) = others.get(i).copied().unwrap_or_default();
            load.remote_in_flight.store(n, Ordering::Release);
            load.remote_tokens.store(t, Ordering::Release);
        }
        // A lighter load elsewhere may have freed room for a waiting request.
        self.freed.notify_waiters();
    }

    /// When endpoint `i`'s cooldown ends, if it is cooling down at `now`.
    pub(crate) fn cooling(&self, i: usize, now: Instant) -> Option<Instant> {
        let until = self.loads[i].cooled_until.load(Ordering::Acquire);
        (until > self.nanos(now)).then(|| self.epoch + Duration::from_nanos(until))
    }

    /// Takes a permit on endpoint `i` for a call of `tokens` tokens, if it
    /// has room.
    pub(crate) fn acquire(self: &Arc<Self>, i: usize, tokens: u64) -> Option<Permit> {
        let load = &self.loads[i];
        if !load.try_acquire() {
            return None;
        }
        load.tokens.fetch_add(tokens, Ordering::AcqRel);
        load.requests.fetch_add(1, Ordering::Relaxed);
        load.meters.in_flight.increment(1.0);
        Some(Permit {
            state: Arc::clone(self),
            endpoint: i,
            tokens,
        })
    }

    /// An answer from endpoint `i` that says it is healthy.
    pub(crate) fn succeeded(&self, i: usize) {
        self.loads[i]
            .consecutive_failures
            .store(0, Ordering::Relaxed);
    }

    /// A failure of endpoint `i` (a connection error, a `408`, `429` or
    /// `5xx`): after `cooldown_after` in a row it cools down for `cooldown`;
    /// a `Retry-After` cools it down at least that long (capped). The only
    /// endpoint of a pool never cools down: there is nowhere else to send
    /// its requests, and turning its answers into refusals is a circuit
    /// breaker's decision, not the balancer's.
    pub(crate) fn failed(&self, i: usize, retry_after: Option<Duration>, now: Instant) {
        let settings = self.health;
        let load = &self.loads[i];
        load.failures.fetch_add(1, Ordering::Relaxed);
        let row = load.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.loads.len() == 1 {
            return;
        }
        let mut wait = retry_after.map(|w| w.min(settings.max_cooldown));
        if row >= settings.cooldown_after {
            wait = Some(wait.map_or(settings.cooldown, |w| w.max(settings.cooldown)));
        }
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return;
        };
        let until = self.nanos(now + wait);
        let before = load.cooled_until.fetch_max(until, Ordering::AcqRel);
        if before <= self.nanos(now) {
            load.cooldowns.fetch_add(1, Ordering::Relaxed);
            load.meters.cooldowns.increment(1);
            tracing::warn!(
                pool = %load.pool,
                endpoint = %load.name,
                failures = row,
                cooldown_ms = wait.as_millis() as u64,
                "endpoint cooling down"
            );
        }
    }

    /// Nanoseconds since the epoch, at least 1 (0 means "not cooling").
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// A request's hold on an endpoint: one of its concurrency permits and its
/// tokens in flight. Released when dropped, which the balancer's response
/// body does when the stream ends, fails or is dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    state: Arc<State>,
    endpoint: usize,
    tokens: u64,
}

impl Permit {
    pub(crate) fn endpoint(&self) -> usize {
        self.endpoint
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let load = &self.state.loads[self.endpoint];
        load.tokens.fetch_sub(self.tokens, Ordering::AcqRel);
        load.in_flight.fetch_sub(1, Ordering::AcqRel);
        load.meters.in_flight.decrement(1.0);
        self.state.freed.notify_waiters();
    }
}
