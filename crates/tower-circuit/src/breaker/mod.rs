//! One circuit: its state, its shared-state hooks and what it shows.
//!
//! The hot path is `admit` in the closed state: one atomic load of the state
//! word (state and epoch packed together) and a reference count increment
//! (the permit's `Arc`, which the body holds until the call is judged).
//! Recording a judged call costs the window's lock (uncontended: two atomic
//! operations), with the totals counted under it; the consecutive window
//! needs no lock. Everything else (half-open leases, transitions) sits
//! behind the same mutex, never held across an await, and transitions emit
//! their events after it is released.
//!
//! The breaker's methods are split by what they do, each file adding to the
//! `impl` of [`Breaker`] defined here:
//! - `admit.rs`: whether a call may go through, and the [`Permit`](admit::Permit)
//!   that records it;
//! - `record.rs`: a judged call's outcome, in the window, and the trips it
//!   causes;
//! - `transition.rs`: moving between states (on a trip, by hand, or as Redis
//!   reports the shared circuit), and telling the world;
//! - `totals.rs`: the counters, a leaf.
//!
//! Imports run one way: those files import this one, never the other way
//! round; beyond the breaker, only the leaf modules (`config`, `state`,
//! `window`, `classify`). The registry and the handle build on this module.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::classify::Outcome;
use crate::config::{Settings, WindowKind, random_seed};
use crate::state::{CircuitSnapshot, SharedSnapshot, State, Totals};
use crate::window::{Counts, Tally};

use self::totals::{AtomicTotals, LockedTotals, Metrics};

pub(crate) mod admit;
mod record;
mod totals;
mod transition;

const STATE_BITS: u64 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

const fn pack(state: State, epoch: u64) -> u64 {
    (epoch << STATE_BITS) | state as u64
}

const fn state_of(word: u64) -> State {
    State::from_code(word & STATE_MASK)
}

const fn epoch_of(word: u64) -> u64 {
    word >> STATE_BITS
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The expected generation of a trip sent before the first sync.
pub(crate) const ANY_GENERATION: u64 = u64::MAX;

/// How long a caller refused in half-open is told to wait.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

/// The shared-state hooks of a breaker (implemented by the Redis store).
///
/// Every method returns at once: the Redis work runs in a spawned task that
/// reports back through [`Breaker::adopt`].
pub(crate) trait Remote: Send + Sync + fmt::Debug {
    /// Whether Redis is usable now (one atomic load).
    fn is_up(&self) -> bool;
    /// The Redis health, for snapshots.
    fn health(&self) -> &'static str;
    /// Opens the shared circuit for `wait` (its `opens`-th opening in a row),
    /// if it is still at generation `expected`.
    fn trip(&self, breaker: &Arc<Breaker>, expected: u64, wait: Duration, opens: u32);
    /// Asks for a half-open trial lease (moving the shared circuit from open
    /// to half-open when its wait is over). At most one request at a time.
    fn acquire(&self, breaker: &Arc<Breaker>);
    /// Ends a trial that held the shared lease `lease` at `generation`; a
    /// failure reopens the shared circuit for `wait`.
    fn release(
        &self,
        breaker: &Arc<Breaker>,
        generation: u64,
        lease: u64,
        outcome: Outcome,
        wait: Duration,
        opens: u32,
    );
    /// Sets the shared circuit by hand.
    fn set(&self, breaker: &Arc<Breaker>, state: State);
    /// Reads the shared circuit and adopts it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn sync<'a>(
        &'a self,
        breaker: &'a Arc<Breaker>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// The shared circuit as Redis reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct RemoteState {
    pub(crate) generation: u64,
    pub(crate) state: State,
    pub(crate) remaining: Duration,
    pub(crate) opens: u32,
    /// A trial lease granted to this replica.
    pub(crate) granted: Option<u64>,
}

/// What this replica changed locally and must still tell Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Trip,
    Set(State),
}

pub(crate) struct Breaker {
    pub(crate) settings: Arc<Settings>,
    /// The key, for keyed breakers.
    pub(crate) key: Option<Arc<str>>,
    /// Whether calls are timed (`settings.times_calls()`, read once).
    timed: bool,
    base: Instant,
    word: AtomicU64,
    /// Nanoseconds on the breaker's clock; meaningful in the open state.
    open_until: AtomicU64,
    /// What calls write.
    written: Written,
    metrics: Metrics,
    /// The registry's idle tick at the last use.
    pub(crate) seen: AtomicU32,
    /// The registry's creation counter, to evict the oldest of equally idle
    /// breakers first.
    pub(crate) order: AtomicU64,
    pub(crate) remote: Option<Box<dyn Remote>>,
}

/// The parts of a breaker that calls write (the window's lock, the
/// counters), on cache lines of their own: a write there doesn't evict the
/// state word and the settings that every admission reads, on other cores.
/// (The `Arc`'s reference count, which every call also writes, sits alone
/// on the allocation's first line: the breaker is aligned to 64 bytes.)
#[repr(align(64))]
struct Written {
    /// Bad calls in a row, for the consecutive window.
    consecutive: AtomicU32,
    totals: AtomicTotals,
    core: Mutex<Core>,
}

struct Core {
    state: State,
    epoch: u64,
    counts: Counts,
    /// The totals of the calls recorded in `counts`.
    totals: LockedTotals,
    /// Consecutive openings without a close in between (for the growing wait).
    opens: u32,
    rng: u64,
    last_wait: Option<Duration>,
    leases: Vec<LocalLease>,
    trial_successes: u32,
    next_lease: u64,
    // Shared state.
    remote_gen: u64,
    /// Whether Redis has answered once (`remote_gen` is known).
    remote_seen: bool,
    pending: Option<Pending>,
    tokens: Vec<Token>,
    /// Trials running on shared leases: lease id and generation.
    remote_trials: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct LocalLease {
    id: u64,
    expires: u64,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    id: u64,
    generation: u64,
    expires: u64,
}

impl Breaker {
    pub(crate) fn new(settings: Arc<Settings>, key: Option<Arc<str>>) -> Self {
        let salt = key.as_deref().unwrap_or(&settings.name);
        let rng = settings.jitter.seed().unwrap_or_else(|| random_seed(salt));
        let metrics = Metrics::new(
            &settings.name,
            if settings.key_label {
                key.as_deref().unwrap_or("")
            } else {
                ""
            },
        );
        Self {
            timed: settings.times_calls(),
            base: Instant::now(),
            word: AtomicU64::new(pack(State::Closed, 0)),
            open_until: AtomicU64::new(0),
            written: Written {
                consecutive: AtomicU32::new(0),
                totals: AtomicTotals::default(),
                core: Mutex::new(Core {
                    state: State::Closed,
                    epoch: 0,
                    counts: Counts::new(settings.window),
                    totals: LockedTotals::default(),
                    opens: 0,
                    rng,
                    last_wait: None,
                    leases: Vec::new(),
                    trial_successes: 0,
                    // Local lease ids live above the shared ones (below 2^53).
                    next_lease: 1 << 60,
                    remote_gen: 0,
                    remote_seen: false,
                    pending: None,
                    tokens: Vec::new(),
                    remote_trials: Vec::new(),
                }),
            },
            metrics,
            seen: AtomicU32::new(0),
            order: AtomicU64::new(0),
            remote: None,
            settings,
            key,
        }
    }

    /// Links the breaker to shared state. Only before first use.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_remote(mut self, remote: Box<dyn Remote>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The breaker's display name: its key, or the layer's name.
    pub(crate) fn name(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.settings.name)
    }

    fn now(&self) -> u64 {
        nanos(self.base.elapsed())
    }

    /// The state, from the state word.
    pub(crate) fn state(&self) -> State {
        state_of(self.word.load(Ordering::Acquire))
    }

    fn remote_up(&self) -> Option<&dyn Remote> {
        self.remote.as_deref().filter(|r| r.is_up())
    }

    /// What the breaker shows to `/healthz`.
    pub(crate) fn snapshot(&self) -> CircuitSnapshot {
        let now = self.now();
        let mut core = self.written.core.lock();
        let state = core.state;
        let (tally, consecutive) = match self.settings.window {
            WindowKind::Consecutive(_) => (
                Tally::default(),
                Some(self.written.consecutive.load(Ordering::Acquire)),
            ),
            _ => (core.counts.tally(now), None),
        };
        let judged = tally.calls > 0 && tally.calls >= self.settings.minimum_calls;
        let rate = |n: u32| judged.then(|| f64::from(n) * 100.0 / f64::from(tally.calls));
        let open_remaining = (state == State::Open).then(|| {
            Duration::from_nanos(self.open_until.load(Ordering::Acquire).saturating_sub(now))
        });
        let shared = self.remote.as_ref().map(|r| SharedSnapshot {
            redis: r.health(),
            generation: core.remote_gen,
            synced: core.pending.is_none(),
        });
        let snapshot = CircuitSnapshot {
            circuit: self.settings.name.to_string(),
            key: self.key.as_deref().map(str::to_owned),
            state,
            calls_in_window: tally.calls,
            failures_in_window: tally.failures,
            slow_calls_in_window: tally.slow,
            consecutive_failures: consecutive,
            failure_rate: rate(tally.failures),
            slow_call_rate: if self.settings.times_calls() {
                rate(tally.slow)
            } else {
                None
            },
            open_remaining_ms: open_remaining.map(|d| d.as_millis() as u64),
            open_wait_ms: core.last_wait.map(|d| d.as_millis() as u64),
            consecutive_opens: core.opens,
            trials_in_flight: (core.leases.len() + core.remote_trials.len()) as u32,
            trial_successes: core.trial_successes,
            totals: Totals {
                successes: self.written.totals.successes.load(Ordering::Relaxed)
                    + core.totals.successes,
                failures: self.written.totals.failures.load(Ordering::Relaxed)
                    + core.totals.failures,
                ignored: self.written.totals.ignored.load(Ordering::Relaxed),
                slow: self.written.totals.slow.load(Ordering::Relaxed) + core.totals.slow,
                refused: self.written.totals.refused.load(Ordering::Relaxed),
            },
            shared,
        };
        drop(core);
        snapshot
    }

    /// Whether the breaker may be forgotten: closed (or disabled) with no
    /// call judged against a different state.
    pub(crate) fn is_idle_state(&self) -> bool {
        matches!(self.state(), State::Closed | State::Disabled)
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}
