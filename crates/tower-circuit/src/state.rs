//! The small types every part of the breaker shares: the [`State`] of a
//! circuit, a manual [`Control`], a [`Transition`] as the callback sees it,
//! and the [`CircuitSnapshot`] a [`CircuitHandle`](crate::CircuitHandle)
//! returns.
//!
//! A leaf: it imports nothing from the rest of the crate, so the settings
//! (`config.rs`), the state machine (`breaker/`) and the handle
//! (`handle.rs`) can all use it without importing each other. The types are
//! re-exported from [`crate::handle`] and from the crate root.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Calls go through and are judged.
    Closed = 0,
    /// Calls are refused (or sent to the fallback) until the open wait is
    /// over.
    Open = 1,
    /// A limited number of trial calls go through; the others are refused.
    HalfOpen = 2,
    /// Opened by hand: every call is refused until it is set otherwise.
    ForcedOpen = 3,
    /// Closed by hand: every call goes through and is counted, but the
    /// circuit never opens.
    ForcedClosed = 4,
    /// Disabled by hand: every call goes through, nothing is recorded.
    Disabled = 5,
}

impl State {
    pub(crate) const fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::ForcedClosed,
            5 => Self::Disabled,
            _ => Self::Closed,
        }
    }

    /// `"closed"`, `"open"`, `"half_open"`, `"forced_open"`,
    /// `"forced_closed"` or `"disabled"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
            Self::Disabled => "disabled",
        }
    }

    /// Whether calls are refused in this state (half-open refuses all but
    /// its trial calls).
    pub const fn refuses(self) -> bool {
        matches!(self, Self::Open | Self::ForcedOpen)
    }

    /// The value of the `tower_ai_circuit_state` gauge: 0 closed, 1 open,
    /// 2 half-open, 3 forced open, 4 forced closed, 5 disabled.
    pub const fn gauge_value(self) -> f64 {
        self as u8 as f64
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A manual action on a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Refuse every call until set otherwise.
    ForceOpen,
    /// Let every call through, counting them, and never open.
    ForceClosed,
    /// Let every call through without recording anything.
    Disable,
    /// Back to closed, with an empty window and the open wait back at its
    /// start.
    Reset,
}

/// A state change, as given to the
/// [`on_transition`](crate::CircuitBreakerBuilder::on_transition) callback.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Transition<'a> {
    /// The layer's name.
    pub circuit: &'a str,
    /// The breaker's key, for keyed breakers.
    pub key: Option<&'a str>,
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Why: `"failure rate"`, `"slow call rate"`, `"consecutive failures"`,
    /// `"trial call failed"`, `"open wait over"`, `"trial calls succeeded"`,
    /// `"set by hand"`, `"shared state"`, …
    pub cause: &'static str,
    /// Calls in the window when it opened (0 otherwise).
    pub calls: u32,
    /// The failure rate in percent when it opened.
    pub failure_rate: Option<f64>,
    /// The slow-call rate in percent when it opened.
    pub slow_call_rate: Option<f64>,
    /// How long it stays open, when it opened.
    pub open_wait: Option<Duration>,
}

/// Calls counted since the breaker was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Calls that counted as neither (abandoned by the client).
    pub ignored: u64,
    /// Calls that were slow (successes and failures).
    pub slow: u64,
    /// Calls refused (answered by the fallback or a 503).
    pub refused: u64,
}

/// The shared-state side of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SharedSnapshot {
    /// `"up"` or `"down"`: whether this replica is using Redis or its local
    /// breaker.
    pub redis: &'static str,
    /// The shared state's generation last seen.
    pub generation: u64,
    /// Whether Redis knows every decision this replica took.
    pub synced: bool,
}

/// A breaker's state, counts and rates at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CircuitSnapshot {
    /// The layer's name.
    pub circuit: String,
    /// The breaker's key, for keyed breakers.
    pub key: Option<String>,
    /// The state.
    pub state: State,
    /// Calls in the sliding window.
    pub calls_in_window: u32,
    /// Failed calls in the sliding window.
    pub failures_in_window: u32,
    /// Slow calls in the sliding window.
    pub slow_calls_in_window: u32,
    /// Bad calls in a row, for the consecutive window.
    pub consecutive_failures: Option<u32>,
    /// The failure rate in percent, once the window holds the minimum
    /// number of calls.
    pub failure_rate: Option<f64>,
    /// The slow-call rate in percent, when slow calls are judged.
    pub slow_call_rate: Option<f64>,
    /// Time left in the open state, in milliseconds.
    pub open_remaining_ms: Option<u64>,
    /// The last open wait, in milliseconds.
    pub open_wait_ms: Option<u64>,
    /// Openings in a row without a close (the open wait grows with them).
    pub consecutive_opens: u32,
    /// Half-open trial calls running now.
    pub trials_in_flight: u32,
    /// Half-open trial calls that succeeded so far.
    pub trial_successes: u32,
    /// Counts since the breaker was created.
    pub totals: Totals,
    /// The shared state, when Redis is configured.
    pub shared: Option<SharedSnapshot>,
}
