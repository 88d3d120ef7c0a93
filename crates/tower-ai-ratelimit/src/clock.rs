//! Where the in-memory limiter reads the time. The Redis backend reads
//! `redis.call('TIME')` instead, so every replica shares one clock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic clock, in nanoseconds since an arbitrary start.
pub trait Clock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> u64;
}

/// The system's monotonic clock (through `quanta`, which reads it in a few
/// nanoseconds).
#[derive(Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    start: u64,
}

impl SystemClock {
    /// The clock.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        Self { clock, start }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SystemClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemClock")
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        // Offset by an hour so that "long ago" (0) is never in the window.
        self.clock
            .delta_as_nanos(self.start, self.clock.raw())
            .saturating_add(3_600_000_000_000)
    }
}

/// Tokio's clock, so tests can pause and advance time
/// (`tokio::time::pause`).
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    /// The clock, starting now.
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> u64 {
        (self.start.elapsed().as_nanos() as u64).saturating_add(3_600_000_000_000)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at an hour past its start.
    pub fn new() -> Self {
        Self {
            now: Arc::new(AtomicU64::new(3_600_000_000_000)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_nanos() as u64, Ordering::AcqRel);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }
}
