//! Moving between states: on a trip, by hand, or as Redis reports the
//! shared circuit; and telling the logs, the metrics, the callback and
//! Redis.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::state::{Control, State, Transition};
use crate::window::Tally;

use super::{ANY_GENERATION, Breaker, Core, Pending, RemoteState, Token, nanos, pack};

/// A local decision to send to Redis.
#[derive(Debug, Clone, Copy)]
struct Push {
    pending: Pending,
    generation: u64,
    wait: Duration,
    opens: u32,
}

/// What a transition reports once the mutex is released.
pub(super) struct Event {
    from: State,
    to: State,
    pub(super) tally: Tally,
    open_wait: Option<Duration>,
    cause: &'static str,
    pub(super) push: Option<Pending>,
}

impl Breaker {
    /// Moves to `to`; the caller holds the mutex and emits the event after
    /// releasing it.
    pub(super) fn set_state(
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

    pub(super) fn emit(self: &Arc<Self>, event: Option<Event>) {
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
}
