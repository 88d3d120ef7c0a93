//! Injected faults and the deterministic failure selection.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Faults the mock injects into model route requests: chat completions, completions,
/// embeddings, responses and messages (`fail_rate` and `latency_ms` apply to all of them,
/// `break_after_tokens` and `error_event` to their streams; `GET /v1/models` is never faulted).
///
/// Set with [`MockLlm::set_fault`](crate::MockLlm::set_fault),
/// [`MockHandle::set_fault`](crate::MockHandle::set_fault) or `POST /admin/fault` (this struct is
/// the JSON body; every field is optional and `{}` clears all faults). A change applies to the
/// requests that arrive after it; a stream that has started keeps the faults it started with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Share of model requests (`0.0..=1.0`) answered with `500` and an error in the route's
    /// shape (OpenAI's `server_error`, Anthropic's `api_error` on `/v1/messages`).
    ///
    /// The selection is deterministic: the rate is added to an accumulator on every valid
    /// request, which fails when the accumulator reaches 1 (then 1 is subtracted). So `1.0`
    /// fails every request, `0.5` every second one (the 2nd, 4th, ...), `0.25` every fourth.
    /// The accumulator is shared by every route. Setting a fault resets it.
    pub fail_rate: f64,
    /// Every model request (valid or not) stalls this long before it is answered.
    pub latency_ms: u64,
    /// Streams end abruptly after this many token events: the body errors and the connection is
    /// closed without the finish events (`[DONE]`, `response.completed`, `message_stop`, ...).
    /// An answer with fewer tokens completes normally.
    pub break_after_tokens: Option<u64>,
    /// Streams send an in-band error event in place of the finish events (after
    /// `break_after_tokens` tokens if that is set, else after the whole answer), and then end.
    /// The status stays `200`. The event is the route API's own:
    /// `data: {"error":{"message":"...","type":"server_error"}}` without `[DONE]` (chat,
    /// completions); `event: error` with `{"type":"error","code":"server_error","message",
    /// "param":null,"sequence_number"}` (responses); `event: error` with
    /// `{"type":"error","error":{"type":"overloaded_error","message"}}` (messages).
    pub error_event: bool,
}

impl Fault {
    /// No faults (the same as [`Fault::default`]).
    pub fn none() -> Self {
        Self::default()
    }

    /// The stall before each answer, [`latency_ms`](Self::latency_ms) as a [`Duration`].
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// Checks the values an HTTP client sent; `Err` carries the message for the 400.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.fail_rate.is_finite() && (0.0..=1.0).contains(&self.fail_rate) {
            Ok(())
        } else {
            Err(format!(
                "fail_rate must be a number between 0.0 and 1.0, got {}",
                self.fail_rate
            ))
        }
    }

    /// The same fault with `fail_rate` forced into `0.0..=1.0` (NaN becomes 0).
    pub(crate) fn sanitized(mut self) -> Self {
        self.fail_rate = if self.fail_rate.is_nan() {
            0.0
        } else {
            self.fail_rate.clamp(0.0, 1.0)
        };
        self
    }
}

/// Parts per million: the accumulator works in integers so that the pattern is exact.
const ONE: u64 = 1_000_000;

/// The current fault and the failure accumulator, behind the mock's mutex.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    fault: Fault,
    accumulator: u64,
}

impl FaultState {
    pub(crate) fn new(fault: Fault) -> Self {
        Self {
            fault: fault.sanitized(),
            accumulator: 0,
        }
    }

    pub(crate) fn fault(&self) -> Fault {
        self.fault
    }

    pub(crate) fn set(&mut self, fault: Fault) {
        self.fault = fault.sanitized();
        self.accumulator = 0;
    }

    /// Whether this request is one of the `fail_rate` share that fails.
    pub(crate) fn should_fail(&mut self) -> bool {
        // `fail_rate` is sanitized to 0..=1, so this is 0..=ONE.
        let rate = (self.fault.fail_rate * ONE as f64).round() as u64;
        if rate == 0 {
            return false;
        }
        self.accumulator += rate;
        if self.accumulator >= ONE {
            self.accumulator -= ONE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(rate: f64, n: usize) -> Vec<bool> {
        let mut state = FaultState::new(Fault {
            fail_rate: rate,
            ..Fault::default()
        });
        (0..n).map(|_| state.should_fail()).collect()
    }

    #[test]
    fn selection_is_deterministic() {
        assert_eq!(pattern(0.0, 4), [false; 4]);
        assert_eq!(pattern(1.0, 4), [true; 4]);
        assert_eq!(pattern(0.5, 4), [false, true, false, true]);
        assert_eq!(pattern(0.1, 20).iter().filter(|f| **f).count(), 2);
        assert_eq!(
            pattern(0.25, 8),
            [false, false, false, true, false, false, false, true]
        );
    }

    #[test]
    fn validation() {
        assert!(Fault::default().validate().is_ok());
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let fault = Fault {
                fail_rate: bad,
                ..Fault::default()
            };
            assert!(fault.validate().is_err());
            assert!(fault.sanitized().validate().is_ok());
        }
    }
}
