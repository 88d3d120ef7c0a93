//! The sliding windows the rates are computed over.
//!
//! The consecutive-failures count lives in an atomic in the breaker (a
//! success costs one load when the count is already zero); the count and
//! time windows here are behind the breaker's mutex.

use crate::config::WindowKind;

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Tally {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failure);
        self.slow += u32::from(slow);
    }

    fn remove(&mut self, other: Self) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

const FAILURE: u8 = 1;
const SLOW: u8 = 2;
const FILLED: u8 = 4;

#[derive(Debug)]
pub(crate) enum Counts {
    /// Counted in the breaker's atomic.
    Consecutive,
    Count {
        ring: Box<[u8]>,
        next: usize,
        tally: Tally,
    },
    Time {
        buckets: Box<[Tally]>,
        slice: u64,
        head: u64,
        tally: Tally,
    },
}

impl Counts {
    pub(crate) fn new(kind: WindowKind) -> Self {
        match kind {
            WindowKind::Consecutive(_) => Self::Consecutive,
            WindowKind::Count(size) => Self::Count {
                ring: vec![0; size as usize].into_boxed_slice(),
                next: 0,
                tally: Tally::default(),
            },
            WindowKind::Time { window, buckets } => Self::Time {
                buckets: vec![Tally::default(); buckets as usize].into_boxed_slice(),
                slice: u64::try_from(window.as_nanos() / u128::from(buckets))
                    .unwrap_or(u64::MAX)
                    .max(1),
                head: 0,
                tally: Tally::default(),
            },
        }
    }

    /// Forgets every call.
    pub(crate) fn clear(&mut self) {
        match self {
            Self::Consecutive => {}
            Self::Count { ring, next, tally } => {
                ring.fill(0);
                *next = 0;
                *tally = Tally::default();
            }
            Self::Time { buckets, tally, .. } => {
                buckets.fill(Tally::default());
                *tally = Tally::default();
            }
        }
    }

    /// Records a call that ended at `now` (nanoseconds on the breaker's
    /// clock) and returns the window's tally.
    #[inline]
    pub(crate) fn record(&mut self, now: u64, failure: bool, slow: bool) -> Tally {
        match self {
            Self::Consecutive => Tally::default(),
            Self::Count { ring, next, tally } => {
                let Some(slot) = ring.get_mut(*next) else {
                    return *tally;
                };
                let old = *slot;
                if old & FILLED != 0 {
                    tally.remove(Tally {
                        calls: 1,
                        failures: u32::from(old & FAILURE != 0),
                        slow: u32::from(old & SLOW != 0),
                    });
                }
                *slot = FILLED | if failure { FAILURE } else { 0 } | if slow { SLOW } else { 0 };
                tally.add(failure, slow);
                // A compare rather than `%`: no division on the hot path.
                *next += 1;
                if *next == ring.len() {
                    *next = 0;
                }
                *tally
            }
            Self::Time { .. } => {
                self.advance(now);
                let Self::Time {
                    buckets,
                    head,
                    tally,
                    ..
                } = self
                else {
                    return Tally::default();
                };
                let len = buckets.len() as u64;
                if let Some(bucket) = buckets.get_mut((*head % len) as usize) {
                    bucket.add(failure, slow);
                }
                tally.add(failure, slow);
                *tally
            }
        }
    }

    /// The window's tally at `now`.
    pub(crate) fn tally(&mut self, now: u64) -> Tally {
        self.advance(now);
        match self {
            Self::Consecutive => Tally::default(),
            Self::Count { tally, .. } | Self::Time { tally, .. } => *tally,
        }
    }

    /// Drops the slices that have left a time window.
    fn advance(&mut self, now: u64) {
        let Self::Time {
            buckets,
            slice,
            head,
            tally,
        } = self
        else {
            return;
        };
        let current = now / *slice;
        if current <= *head {
            return;
        }
        let len = buckets.len() as u64;
        let steps = (current - *head).min(len);
        for i in 1..=steps {
            if let Some(bucket) = buckets.get_mut(((*head + i) % len) as usize) {
                tally.remove(*bucket);
                *bucket = Tally::default();
            }
        }
        *head = current;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn count_window_slides() {
        let mut w = Counts::new(WindowKind::Count(3));
        assert_eq!(w.record(0, true, false).failures, 1);
        w.record(0, false, true);
        let t = w.record(0, false, false);
        assert_eq!((t.calls, t.failures, t.slow), (3, 1, 1));
        let t = w.record(0, false, false); // the failure leaves
        assert_eq!((t.calls, t.failures, t.slow), (3, 0, 1));
        let t = w.record(0, false, false); // the slow call leaves
        assert_eq!((t.calls, t.failures, t.slow), (3, 0, 0));
        w.clear();
        assert_eq!(w.tally(0), Tally::default());
    }

    #[test]
    fn time_window_drops_old_slices() {
        let s = 1_000_000_000;
        let mut w = Counts::new(WindowKind::Time {
            window: Duration::from_secs(10),
            buckets: 10,
        });
        w.record(0, true, false);
        w.record(5 * s, false, false);
        assert_eq!(w.tally(10 * s - 1).calls, 2);
        // The call recorded at 0 leaves exactly 10 s later.
        assert_eq!(w.tally(10 * s).calls, 1);
        assert_eq!(w.tally(10 * s).failures, 0);
        assert_eq!(w.tally(15 * s).calls, 0);
        // A long gap clears everything.
        w.record(16 * s, true, true);
        assert_eq!(w.tally(1_000 * s), Tally::default());
    }
}
