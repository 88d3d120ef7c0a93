//! Recording a judged call: in the consecutive, count or time window, and
//! the trips and trial endings it causes.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::classify::Outcome;
use crate::config::WindowKind;
use crate::state::State;
use crate::window::Tally;

use super::transition::Event;
use super::{Breaker, Core, Pending, epoch_of, state_of};

impl Breaker {
    /// Records the outcome of a call admitted at `epoch`.
    #[inline]
    pub(super) fn record(
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
}
