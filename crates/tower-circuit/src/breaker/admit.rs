//! Admission: whether a call may go through now, and the permit that
//! records its outcome.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::classify::Outcome;
use crate::state::State;

use super::{Breaker, HALF_OPEN_RETRY, LocalLease, epoch_of, nanos, state_of};

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

impl Breaker {
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
