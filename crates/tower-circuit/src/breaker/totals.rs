//! What a breaker counts: its totals, for snapshots, and its metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::State;

/// Totals counted with atomic operations: refused and ignored calls, and
/// the outcomes of calls that don't go into a window under the lock
/// (consecutive window, trials, calls admitted before a transition).
#[derive(Default)]
pub(super) struct AtomicTotals {
    pub(super) successes: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) ignored: AtomicU64,
    pub(super) slow: AtomicU64,
    pub(super) refused: AtomicU64,
}

impl AtomicTotals {
    pub(super) fn add(&self, failure: bool, slow: bool) {
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
pub(super) struct LockedTotals {
    pub(super) successes: u64,
    pub(super) failures: u64,
    pub(super) slow: u64,
}

impl LockedTotals {
    #[inline]
    pub(super) fn add(&mut self, failure: bool, slow: bool) {
        if failure {
            self.failures += 1;
        } else {
            self.successes += 1;
        }
        self.slow += u64::from(slow);
    }
}

pub(super) struct Metrics {
    pub(super) success: metrics::Counter,
    pub(super) failure: metrics::Counter,
    pub(super) ignored: metrics::Counter,
    pub(super) slow: metrics::Counter,
    pub(super) refused: metrics::Counter,
    pub(super) state: metrics::Gauge,
    pub(super) labels: [(&'static str, String); 2],
}

impl Metrics {
    pub(super) fn new(circuit: &str, key: &str) -> Self {
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
