//! One circuit: the state machine, the admission check and the recording of
//! outcomes.
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
//! Imports: only the leaf modules (`config`, `state`, `window`,
//! `classify`); the registry and the handle build on this file, never the
//! other way round.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::classify::Outcome;
use crate::config::{Settings, WindowKind, random_seed};
use crate::state::{CircuitSnapshot, Control, SharedSnapshot, State, Totals, Transition};
use crate::window::{Counts, Tally};

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

/// Totals counted with atomic operations: refused and ignored calls, and
/// the outcomes of calls that don't go into a window under the lock
/// (consecutive window, trials, calls admitted before a transition).
#[derive(Default)]
struct AtomicTotals {
    successes: AtomicU64,
    failures: AtomicU64,
    ignored: AtomicU64,
    slow: AtomicU64,
    refused: AtomicU64,
}

impl AtomicTotals {
    fn add(&self, failure: bool, slow: bool) {
        if failure {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.successes.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Totals counted under the lock, with the count and time windows.
#[derive(Debug, Clone, Copy, Default)]
struct LockedTotals {
    successes: u64,
    failures: u64,
    slow: u64,
}

impl LockedTotals {
    #[inline]
    fn add(&mut self, failure: bool, slow: bool) {
        if failure {
            self.failures += 1;
        } else {
            self.successes += 1;
        }
        self.slow += u64::from(slow);
    }
}

struct Metrics {
    success: metrics::Counter,
    failure: metrics::Counter,
    ignored: metrics::Counter,
    slow: metrics::Counter,
    refused: metrics::Counter,
    state: metrics::Gauge,
    labels: [(&'static str, String); 2],
}

impl Metrics {
    fn new(circuit: &str, key: &str) -> Self {
        let labels = [("circuit", circuit.to_owned()), ("key", key.to_owned())];
        let calls = |outcome: &'static str| {
            metrics::counter!(
                "tower_ai_circuit_calls_total",
                "circuit" => labels[0].1.clone(),
                "key" => labels[1].1.clone(),
                "outcome" => outcome
            )
        };
        let metrics = Self {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            slow: metrics::counter!("tower_ai_circuit_slow_calls_total", &labels),
            refused: metrics::counter!("tower_ai_circuit_refused_total", &labels),
            state: metrics::gauge!("tower_ai_circuit_state", &labels),
            labels,
        };
        metrics.state.set(State::Closed.gauge_value());
        metrics
    }
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) state: State,
    pub(crate) retry_after: Duration,
}

pub(crate) enum Admission {
    /// Call the service, and record the outcome with the permit.
    Call(Permit),
    /// Call the service without recording anything (disabled).
    Pass,
    /// Refuse.
    Refuse(Refused),
}

/// A local decision to send to Redis.
#[derive(Debug, Clone, Copy)]
struct Push {
    pending: Pending,
    generation: u64,
    wait: Duration,
    opens: u32,
}

/// What a transition reports once the mutex is released.
struct Event {
    from: State,
    to: State,
    tally: Tally,
    open_wait: Option<Duration>,
    cause: &'static str,
    push: Option<Pending>,
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

    /// Whether a call may go through now. A permit holds a clone of the
    /// `Arc`.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let word = self.word.load(Ordering::Acquire);
        match state_of(word) {
            State::Closed | State::ForcedClosed => {
                Admission::Call(Self::permit(Arc::clone(self), epoch_of(word), None))
            }
            _ => self.admit_other(word),
        }
    }

    /// The closed-state half of [`admit`](Self::admit), for a caller that
    /// owns an `Arc` it doesn't need afterwards (a keyed breaker just looked
    /// up): the permit takes it, with no second reference count increment.
    /// In any other state the `Arc` comes back, for [`admit`](Self::admit).
    #[inline]
    pub(crate) fn admit_owned(self: Arc<Self>) -> Result<Permit, Arc<Self>> {
        let word = self.word.load(Ordering::Acquire);
        match state_of(word) {
            State::Closed | State::ForcedClosed => Ok(Self::permit(self, epoch_of(word), None)),
            _ => Err(self),
        }
    }

    /// Admission outside the closed states.
    fn admit_other(self: &Arc<Self>, word: u64) -> Admission {
        match state_of(word) {
            State::Closed | State::ForcedClosed => {
                Admission::Call(Self::permit(Arc::clone(self), epoch_of(word), None))
            }
            State::Disabled => Admission::Pass,
            State::ForcedOpen => self.refuse(State::ForcedOpen, self.settings.open_wait),
            State::Open => {
                let now = self.now();
                let until = self.open_until.load(Ordering::Acquire);
                if now < until {
                    self.refuse(State::Open, Duration::from_nanos(until - now))
                } else {
                    self.admit_slow(now)
                }
            }
            State::HalfOpen => self.admit_slow(self.now()),
        }
    }

    fn refuse(&self, state: State, retry_after: Duration) -> Admission {
        self.written.totals.refused.fetch_add(1, Ordering::Relaxed);
        self.metrics.refused.increment(1);
        Admission::Refuse(Refused { state, retry_after })
    }

    #[inline]
    fn permit(breaker: Arc<Self>, epoch: u64, lease: Option<NonZeroU64>) -> Permit {
        let start = if breaker.timed {
            breaker.now().saturating_add(1)
        } else {
            0
        };
        Permit {
            breaker,
            epoch,
            lease,
            start,
            first_byte: 0,
        }
    }

    /// Admission when the circuit is open with its wait over, or half-open.
    fn admit_slow(self: &Arc<Self>, now: u64) -> Admission {
        let mut core = self.written.core.lock();
        let mut event = None;
        if core.state == State::Open {
            let until = self.open_until.load(Ordering::Acquire);
            if now < until {
                drop(core);
                return self.refuse(State::Open, Duration::from_nanos(until - now));
            }
            if let Some(remote) = self.remote_up() {
                // The fleet moves to half-open in Redis, which grants the
                // trial leases; this call is refused while we ask.
                drop(core);
                remote.acquire(self);
                return self.refuse(State::Open, HALF_OPEN_RETRY);
            }
            event = Some(self.set_state(&mut core, State::HalfOpen, now, None, "open wait over"));
        }
        let admission = match core.state {
            State::Closed | State::ForcedClosed => {
                Admission::Call(Self::permit(Arc::clone(self), core.epoch, None))
            }
            State::Disabled => Admission::Pass,
            State::ForcedOpen => {
                drop(core);
                self.emit(event);
                return self.refuse(State::ForcedOpen, self.settings.open_wait);
            }
            State::Open => {
                let until = self.open_until.load(Ordering::Acquire);
                drop(core);
                self.emit(event);
                return self.refuse(State::Open, Duration::from_nanos(until.saturating_sub(now)));
            }
            State::HalfOpen => {
                if let Some(remote) = self.remote_up() {
                    let generation = core.remote_gen;
                    core.tokens
                        .retain(|t| t.expires > now && t.generation == generation);
                    match core.tokens.pop() {
                        Some(token) => {
                            core.remote_trials.push((token.id, token.generation));
                            Admission::Call(Self::permit(
                                Arc::clone(self),
                                core.epoch,
                                NonZeroU64::new(token.id),
                            ))
                        }
                        None => {
                            drop(core);
                            self.emit(event);
                            remote.acquire(self);
                            return self.refuse(State::HalfOpen, HALF_OPEN_RETRY);
                        }
                    }
                } else {
                    // A trial that never finished gives its slot back when
                    // its lease runs out.
                    core.leases.retain(|l| l.expires > now);
                    let used = core.leases.len() as u64 + u64::from(core.trial_successes);
                    if used < u64::from(self.settings.trials) {
                        let id = core.next_lease;
                        core.next_lease += 1;
                        core.leases.push(LocalLease {
                            id,
                            expires: now.saturating_add(nanos(self.settings.trial_lease)),
                        });
                        Admission::Call(Self::permit(
                            Arc::clone(self),
                            core.epoch,
                            NonZeroU64::new(id),
                        ))
                    } else {
                        drop(core);
                        self.emit(event);
                        return self.refuse(State::HalfOpen, HALF_OPEN_RETRY);
                    }
                }
            }
        };
        drop(core);
        self.emit(event);
        admission
    }

    /// Records the outcome of a call admitted at `epoch`.
    #[inline]
    fn record(
        self: &Arc<Self>,
        epoch: u64,
        lease: Option<NonZeroU64>,
        outcome: Outcome,
        start: u64,
        first_byte: u64,
    ) {
        if outcome == Outcome::Ignored && lease.is_none() {
            // Abandoned by the client: counted, and nothing else to do.
            self.written.totals.ignored.fetch_add(1, Ordering::Relaxed);
            self.metrics.ignored.increment(1);
            return;
        }
        self.record_outcome(epoch, lease, outcome, start, first_byte);
    }

    /// [`record`](Self::record), out of line: a judged call or a trial.
    fn record_outcome(
        self: &Arc<Self>,
        epoch: u64,
        lease: Option<NonZeroU64>,
        outcome: Outcome,
        start: u64,
        first_byte: u64,
    ) {
        if outcome == Outcome::Ignored {
            self.written.totals.ignored.fetch_add(1, Ordering::Relaxed);
            self.metrics.ignored.increment(1);
            if let Some(lease) = lease {
                self.finish_trial(epoch, lease, outcome, false);
            }
            return;
        }
        let slow = self.is_slow(start, first_byte);
        let failure = outcome == Outcome::Failure;
        if failure {
            self.metrics.failure.increment(1);
        } else {
            self.metrics.success.increment(1);
        }
        if slow {
            self.metrics.slow.increment(1);
        }
        if let Some(lease) = lease {
            self.written.totals.add(failure, slow);
            self.finish_trial(epoch, lease, outcome, slow);
        } else if let WindowKind::Consecutive(threshold) = self.settings.window {
            self.written.totals.add(failure, slow);
            self.record_consecutive(epoch, threshold, failure, slow);
        } else if !self.record_in_window(epoch, failure, slow) {
            // Admitted before the last transition: counted, not judged.
            self.written.totals.add(failure, slow);
        }
    }

    /// Records a call admitted at `epoch` in the consecutive window: one
    /// atomic operation for a bad call, a load for a good one.
    #[inline]
    fn record_consecutive(self: &Arc<Self>, epoch: u64, threshold: u32, failure: bool, slow: bool) {
        let word = self.word.load(Ordering::Acquire);
        let state = state_of(word);
        // A call admitted before the last transition says nothing about the
        // circuit as it is now.
        if epoch_of(word) != epoch || !matches!(state, State::Closed | State::ForcedClosed) {
            return;
        }
        if failure || slow {
            let bad = self.written.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
            if bad >= threshold && state == State::Closed {
                let tally = Tally {
                    calls: bad,
                    failures: if failure { bad } else { 0 },
                    slow: if failure { 0 } else { bad },
                };
                self.trip(
                    epoch,
                    tally,
                    if failure {
                        "consecutive failures"
                    } else {
                        "consecutive slow calls"
                    },
                );
            }
        } else if self.written.consecutive.load(Ordering::Relaxed) != 0 {
            self.written.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Records a call admitted at `epoch` in the count or time window, and
    /// in the totals, under the one lock the window needs anyway (so the
    /// totals cost no atomic operation of their own). Returns `false`, with
    /// nothing recorded, for a call admitted before the last transition.
    #[inline]
    fn record_in_window(self: &Arc<Self>, epoch: u64, failure: bool, slow: bool) -> bool {
        let now = match self.settings.window {
            WindowKind::Time { .. } => self.now(),
            _ => 0,
        };
        let mut core = self.written.core.lock();
        // A permit without a lease is only given in the closed and forced
        // closed states: the same epoch means the same state.
        if core.epoch != epoch {
            return false;
        }
        core.totals.add(failure, slow);
        let tally = core.counts.record(now, failure, slow);
        if core.state != State::Closed {
            return true;
        }
        let Some(cause) = self.tripped(tally) else {
            return true;
        };
        let event = self.open(&mut core, tally, cause);
        drop(core);
        self.emit(Some(event));
        true
    }

    /// Whether a call timed from `start` (the breaker's clock plus one; 0:
    /// not timed) is slow, to its end now or to its `first_byte`.
    fn is_slow(&self, start: u64, first_byte: u64) -> bool {
        if start == 0 {
            return false;
        }
        let now = self.now().saturating_add(1);
        let total = Duration::from_nanos(now.saturating_sub(start));
        if self.settings.slow_call.is_some_and(|limit| total >= limit) {
            return true;
        }
        let first = if first_byte == 0 { now } else { first_byte };
        self.settings
            .slow_first_byte
            .is_some_and(|limit| Duration::from_nanos(first.saturating_sub(start)) >= limit)
    }

    /// Whether the window's rates reach a threshold.
    #[inline]
    fn tripped(&self, tally: Tally) -> Option<&'static str> {
        let s = &self.settings;
        // Both thresholds are above zero: a window without a bad call never
        // reaches them (the usual case, decided without arithmetic).
        if (tally.failures == 0 && tally.slow == 0)
            || tally.calls == 0
            || tally.calls < s.minimum_calls
        {
            return None;
        }
        let calls = f64::from(tally.calls);
        if f64::from(tally.failures) * 100.0 >= s.failure_rate * calls {
            return Some("failure rate");
        }
        if s.times_calls() && f64::from(tally.slow) * 100.0 >= s.slow_rate * calls {
            return Some("slow call rate");
        }
        None
    }

    /// Opens the circuit from the closed state at `epoch` (consecutive window).
    fn trip(self: &Arc<Self>, epoch: u64, tally: Tally, cause: &'static str) {
        let mut core = self.written.core.lock();
        if core.epoch != epoch || core.state != State::Closed {
            return;
        }
        let event = self.open(&mut core, tally, cause);
        drop(core);
        self.emit(Some(event));
    }

    /// Opens the circuit, for the wait that `core.opens` earlier openings
    /// call for.
    fn open(&self, core: &mut Core, tally: Tally, cause: &'static str) -> Event {
        let s = &self.settings;
        let wait = s.jitter.apply(
            s.open_wait_for(core.opens),
            s.open_wait_cap(),
            &mut core.rng,
        );
        let mut event = self.set_state(core, State::Open, self.now(), Some(wait), cause);
        event.tally = tally;
        if self.remote.is_some() {
            core.pending = Some(Pending::Trip);
            event.push = Some(Pending::Trip);
        }
        event
    }

    fn finish_trial(self: &Arc<Self>, epoch: u64, lease: NonZeroU64, outcome: Outcome, slow: bool) {
        let bad = outcome == Outcome::Failure || (outcome == Outcome::Success && slow);
        let lease = lease.get();
        let mut core = self.written.core.lock();
        let mut event = None;
        let remote = core.remote_trials.iter().position(|(id, _)| *id == lease);
        if let Some(i) = remote {
            let (_, generation) = core.remote_trials.swap_remove(i);
            // The fleet's decision is Redis's; a failure reopens here at once
            // (protecting the upstream) and Redis confirms it.
            if bad && core.epoch == epoch && core.state == State::HalfOpen {
                core.opens = core.opens.saturating_add(1);
                event = Some(self.open(&mut core, Tally::default(), "trial call failed"));
                // The release below carries the failure; no separate trip.
                if let Some(e) = event.as_mut() {
                    e.push = None;
                }
            }
            let wait = core.last_wait.unwrap_or(self.settings.open_wait);
            let opens = core.opens;
            drop(core);
            self.emit(event);
            if let Some(remote) = &self.remote {
                let outcome = if bad { Outcome::Failure } else { outcome };
                remote.release(self, generation, lease, outcome, wait, opens);
            }
            return;
        }
        let Some(i) = core.leases.iter().position(|l| l.id == lease) else {
            // The lease ran out and the slot went to another call.
            return;
        };
        core.leases.swap_remove(i);
        if core.epoch != epoch || core.state != State::HalfOpen || outcome == Outcome::Ignored {
            return;
        }
        if bad {
            core.opens = core.opens.saturating_add(1);
            event = Some(self.open(&mut core, Tally::default(), "trial call failed"));
        } else {
            core.trial_successes += 1;
            if core.trial_successes >= self.settings.trials {
                let now = self.now();
                event = Some(self.set_state(
                    &mut core,
                    State::Closed,
                    now,
                    None,
                    "trial calls succeeded",
                ));
            }
        }
        drop(core);
        self.emit(event);
    }

    /// Moves to `to`; the caller holds the mutex and emits the event after
    /// releasing it.
    fn set_state(
        &self,
        core: &mut Core,
        to: State,
        now: u64,
        open_wait: Option<Duration>,
        cause: &'static str,
    ) -> Event {
        let from = core.state;
        core.state = to;
        core.epoch += 1;
        match to {
            State::Open => {
                core.last_wait = open_wait;
                let wait = open_wait.unwrap_or(self.settings.open_wait);
                self.open_until
                    .store(now.saturating_add(nanos(wait)), Ordering::Release);
            }
            State::Closed => core.opens = 0,
            _ => {}
        }
        if to != State::ForcedClosed || from != State::Closed {
            core.counts.clear();
            self.written.consecutive.store(0, Ordering::Release);
        }
        core.leases.clear();
        core.tokens.clear();
        core.trial_successes = 0;
        self.word.store(pack(to, core.epoch), Ordering::Release);
        Event {
            from,
            to,
            tally: Tally::default(),
            open_wait: if to == State::Open { open_wait } else { None },
            cause,
            push: None,
        }
    }

    fn emit(self: &Arc<Self>, event: Option<Event>) {
        let Some(event) = event else { return };
        let s = &self.settings;
        let rate = |n: u32| {
            (event.tally.calls > 0).then(|| f64::from(n) * 100.0 / f64::from(event.tally.calls))
        };
        let transition = Transition {
            circuit: &s.name,
            key: self.key.as_deref(),
            from: event.from,
            to: event.to,
            cause: event.cause,
            calls: event.tally.calls,
            failure_rate: rate(event.tally.failures),
            slow_call_rate: rate(event.tally.slow),
            open_wait: event.open_wait,
        };
        if event.to == State::Open {
            tracing::warn!(
                circuit = %s.name,
                key = self.key.as_deref().unwrap_or(""),
                from = event.from.as_str(),
                to = event.to.as_str(),
                cause = event.cause,
                calls = event.tally.calls,
                failures = event.tally.failures,
                slow_calls = event.tally.slow,
                open_wait_ms = event.open_wait.map_or(0, |w| w.as_millis() as u64),
                "circuit opened"
            );
        } else {
            tracing::info!(
                circuit = %s.name,
                key = self.key.as_deref().unwrap_or(""),
                from = event.from.as_str(),
                to = event.to.as_str(),
                cause = event.cause,
                "circuit state changed"
            );
        }
        self.metrics.state.set(event.to.gauge_value());
        let [circuit, key] = &self.metrics.labels;
        metrics::counter!(
            "tower_ai_circuit_transitions_total",
            "circuit" => circuit.1.clone(),
            "key" => key.1.clone(),
            "to" => event.to.as_str()
        )
        .increment(1);
        if let Some(callback) = &s.on_transition {
            callback(&transition);
        }
        if let Some(pending) = event.push {
            let core = self.written.core.lock();
            let push = self.push_args(&core, pending);
            drop(core);
            self.push(push);
        }
    }

    fn push_args(&self, core: &Core, pending: Pending) -> Push {
        Push {
            pending,
            // Before the first sync this replica knows no generation: its
            // trip may open any closed circuit.
            generation: if core.remote_seen {
                core.remote_gen
            } else {
                ANY_GENERATION
            },
            wait: core.last_wait.unwrap_or(self.settings.open_wait),
            opens: core.opens,
        }
    }

    /// Tells Redis about a local decision.
    fn push(self: &Arc<Self>, push: Push) {
        let Some(remote) = &self.remote else { return };
        match push.pending {
            Pending::Trip => remote.trip(self, push.generation, push.wait, push.opens),
            Pending::Set(state) => remote.set(self, state),
        }
    }

    /// Sets the circuit by hand.
    pub(crate) fn control(self: &Arc<Self>, control: Control) {
        let to = match control {
            Control::ForceOpen => State::ForcedOpen,
            Control::ForceClosed => State::ForcedClosed,
            Control::Disable => State::Disabled,
            Control::Reset => State::Closed,
        };
        let mut core = self.written.core.lock();
        if control == Control::Reset {
            core.opens = 0;
        }
        let mut event = self.set_state(&mut core, to, self.now(), None, "set by hand");
        if self.remote.is_some() {
            core.pending = Some(Pending::Set(to));
            event.push = Some(Pending::Set(to));
        }
        drop(core);
        self.emit(Some(event));
    }

    /// Takes on the shared circuit's state, as Redis reported it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn adopt(self: &Arc<Self>, remote: RemoteState) {
        let mut core = self.written.core.lock();
        if core.remote_seen && remote.generation < core.remote_gen {
            return; // a reply older than one already seen
        }
        let same = core.remote_seen && remote.generation == core.remote_gen;
        core.remote_gen = remote.generation;
        core.remote_seen = true;
        if same {
            // A trip can only apply to a closed or half-open circuit; a
            // decision by hand always applies.
            let applies = match core.pending {
                Some(Pending::Trip) => matches!(remote.state, State::Closed | State::HalfOpen),
                Some(Pending::Set(_)) => true,
                None => false,
            };
            if let (true, Some(pending)) = (applies, core.pending) {
                // Redis hasn't seen what this replica decided (it was down,
                // or the reply is still on its way): tell it again.
                let push = self.push_args(&core, pending);
                drop(core);
                self.push(push);
                return;
            }
        }
        core.pending = None;
        let now = self.now();
        let mut event = None;
        if remote.state == State::Open {
            if core.state == State::Open {
                // Converge on the fleet's wait.
                self.open_until.store(
                    now.saturating_add(nanos(remote.remaining)),
                    Ordering::Release,
                );
                core.last_wait = Some(remote.remaining);
            } else {
                core.opens = remote.opens;
                event = Some(self.set_state(
                    &mut core,
                    State::Open,
                    now,
                    Some(remote.remaining),
                    "shared state",
                ));
            }
            core.opens = remote.opens;
        } else if core.state != remote.state {
            event = Some(self.set_state(&mut core, remote.state, now, None, "shared state"));
        }
        if let Some(id) = remote.granted
            && core.state == State::HalfOpen
        {
            core.tokens.push(Token {
                id,
                generation: remote.generation,
                expires: now.saturating_add(nanos(self.settings.trial_lease)),
            });
        }
        drop(core);
        self.emit(event);
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

/// The right to make one call; records its outcome once.
///
/// Dropped without [`finish`](Self::finish), it records the call as
/// [`Outcome::Ignored`] and gives a half-open trial slot back.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    /// The epoch the call was admitted in; [`DONE`] once recorded.
    epoch: u64,
    /// The half-open trial lease, if the call is a trial.
    lease: Option<NonZeroU64>,
    /// Nanoseconds on the breaker's clock plus one when the call started
    /// (0: not timed), and when its first body byte came (0: not yet).
    start: u64,
    first_byte: u64,
}

/// The epoch of a permit whose outcome is recorded (epochs never get there).
const DONE: u64 = u64::MAX;

impl Permit {
    /// Notes the first byte of the body (for the time-to-first-byte limit).
    #[inline]
    pub(crate) fn first_byte(&mut self) {
        if self.start != 0 && self.first_byte == 0 {
            self.first_byte = self.breaker.now().saturating_add(1);
        }
    }

    /// Records the outcome.
    #[inline]
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        let epoch = std::mem::replace(&mut self.epoch, DONE);
        if epoch != DONE {
            self.breaker
                .record(epoch, self.lease, outcome, self.start, self.first_byte);
        }
    }

    /// The breaker this permit belongs to.
    pub(crate) fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.finish(Outcome::Ignored);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name())
            .field("epoch", &self.epoch)
            .field("trial", &self.lease.is_some())
            .finish()
    }
}
