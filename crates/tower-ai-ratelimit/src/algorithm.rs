//! The algorithms as pure state machines over (state, now, cost). The memory
//! store runs these; the Redis scripts in `store/redis.lua` are their
//! transcription, and the shared test suite holds both to the same answers.

use std::collections::VecDeque;
use std::time::Duration;

use crate::policy::{Algorithm, Policy};

/// The verdict of one policy on one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    limit: u64,
    /// What is left is `room / unit`: buckets keep it in nanoseconds of
    /// refill and divide only when asked (a division costs more than the
    /// rest of a check).
    room: u64,
    unit: u64,
    reset_ns: u64,
    retry_ns: u64,
}

impl Decision {
    pub(crate) fn new(
        allowed: bool,
        limit: u64,
        remaining: u64,
        reset: Duration,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            allowed,
            limit,
            room: remaining,
            unit: 1,
            reset_ns: reset.as_nanos() as u64,
            retry_ns: retry_after.map_or(0, |d| d.as_nanos() as u64),
        }
    }

    fn bucket(
        allowed: bool,
        limit: u64,
        room_ns: u64,
        period: u64,
        reset_ns: u64,
        retry_ns: u64,
    ) -> Self {
        Self {
            allowed,
            limit,
            room: room_ns,
            unit: period.max(1),
            reset_ns,
            retry_ns,
        }
    }

    /// Whether the request fits.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The policy's capacity.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What is left after this request (or now, when refused).
    pub fn remaining(&self) -> u64 {
        self.room / self.unit.max(1)
    }

    /// Until the policy is back to full capacity.
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset_ns)
    }

    /// When refused: until the request would fit.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.allowed).then(|| Duration::from_nanos(self.retry_ns))
    }

    pub(crate) fn admitted(mut self) -> Self {
        self.allowed = true;
        self
    }
}

/// The compiled numbers of a policy, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    kind: Kind,
    capacity: u64,
    /// Emission interval (buckets) or window length (windows), in ns.
    period: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    TokenBucket,
    LeakyBucket,
    FixedWindow,
    SlidingLog,
    SlidingWindow,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl Kind {
    /// The number the Lua scripts know the algorithm by.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::TokenBucket => 1,
            Self::LeakyBucket => 2,
            Self::FixedWindow => 3,
            Self::SlidingLog => 4,
            Self::SlidingWindow => 5,
        }
    }
}

impl Spec {
    pub(crate) fn of(policy: &Policy) -> Self {
        let (kind, period) = match policy.algorithm() {
            Algorithm::TokenBucket { refill } => (Kind::TokenBucket, refill.interval_ns()),
            Algorithm::LeakyBucket { drain } => (Kind::LeakyBucket, drain.interval_ns()),
            Algorithm::FixedWindow { window } => (Kind::FixedWindow, window.as_nanos() as f64),
            Algorithm::SlidingLog { window } => (Kind::SlidingLog, window.as_nanos() as f64),
            Algorithm::SlidingWindow { window } => (Kind::SlidingWindow, window.as_nanos() as f64),
        };
        Self {
            kind,
            capacity: policy.capacity(),
            period: (period.round() as u64).max(1),
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn period_ns(&self) -> u64 {
        self.period
    }

    /// Bucket tolerance: the time a full bucket takes to refill.
    fn tau(&self) -> u64 {
        self.capacity.saturating_mul(self.period)
    }
}

/// The state of one policy for one key.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Theoretical arrival time.
    TokenBucket {
        tat: u64,
    },
    /// Fill level as nanoseconds of draining, at `last`.
    LeakyBucket {
        level: u64,
        last: u64,
    },
    FixedWindow {
        start: u64,
        count: u64,
    },
    SlidingLog {
        entries: VecDeque<(u64, u64)>,
        sum: u64,
    },
    SlidingWindow {
        start: u64,
        current: u64,
        previous: u64,
    },
}

fn ns(d: u64) -> Duration {
    Duration::from_nanos(d)
}

impl State {
    pub(crate) fn new(spec: &Spec) -> Self {
        match spec.kind {
            Kind::TokenBucket => Self::TokenBucket { tat: 0 },
            Kind::LeakyBucket => Self::LeakyBucket { level: 0, last: 0 },
            Kind::FixedWindow => Self::FixedWindow { start: 0, count: 0 },
            Kind::SlidingLog => Self::SlidingLog {
                entries: VecDeque::new(),
                sum: 0,
            },
            Kind::SlidingWindow => Self::SlidingWindow {
                start: 0,
                current: 0,
                previous: 0,
            },
        }
    }

    /// Brings the state up to `now` (drains, rolls windows, forgets what
    /// left the window). Changes no verdict: it can run before a refusal.
    pub(crate) fn advance(&mut self, spec: &Spec, now: u64) {
        match self {
            Self::TokenBucket { .. } => {}
            Self::LeakyBucket { level, last } => {
                *level = level.saturating_sub(now.saturating_sub(*last));
                *last = now;
            }
            Self::FixedWindow { start, count } => {
                let aligned = now - now % spec.period;
                if aligned != *start {
                    *start = aligned;
                    *count = 0;
                }
            }
            Self::SlidingLog { entries, sum } => {
                while let Some(&(at, cost)) = entries.front() {
                    if at + spec.period > now {
                        break;
                    }
                    *sum -= cost;
                    entries.pop_front();
                }
            }
            Self::SlidingWindow {
                start,
                current,
                previous,
            } => {
                let aligned = now - now % spec.period;
                if aligned == *start {
                } else if aligned == *start + spec.period {
                    *previous = *current;
                    *current = 0;
                    *start = aligned;
                } else {
                    *previous = 0;
                    *current = 0;
                    *start = aligned;
                }
            }
        }
    }

    /// The verdict on `cost` at `now` (after [`State::advance`]), without
    /// charging it.
    pub(crate) fn decide(&self, spec: &Spec, now: u64, cost: u64) -> Decision {
        let cap = spec.capacity;
        match self {
            Self::TokenBucket { tat } => bucket_decision(spec, (*tat).max(now) - now, cost),
            Self::LeakyBucket { level, .. } => bucket_decision(spec, *level, cost),
            Self::FixedWindow { start, count } => {
                let left = (*start + spec.period).saturating_sub(now);
                let allowed = count + cost <= cap;
                let used = if allowed { count + cost } else { *count };
                Decision::new(
                    allowed,
                    cap,
                    cap.saturating_sub(used),
                    if used > 0 { ns(left) } else { Duration::ZERO },
                    (!allowed).then(|| ns(if cost > cap { spec.period } else { left })),
                )
            }
            Self::SlidingLog { entries, sum } => {
                let allowed = sum + cost <= cap;
                let used = if allowed { sum + cost } else { *sum };
                let newest = if allowed {
                    Some(now)
                } else {
                    entries.back().map(|e| e.0)
                };
                let reset = newest.map_or(Duration::ZERO, |at| {
                    ns((at + spec.period).saturating_sub(now))
                });
                let retry_after = (!allowed).then(|| {
                    if cost > cap {
                        return ns(spec.period);
                    }
                    // Wait until enough of the oldest records leave the window.
                    let mut to_free = sum + cost - cap;
                    for &(at, c) in entries {
                        if c >= to_free {
                            return ns((at + spec.period).saturating_sub(now));
                        }
                        to_free -= c;
                    }
                    ns(spec.period)
                });
                Decision::new(allowed, cap, cap.saturating_sub(used), reset, retry_after)
            }
            Self::SlidingWindow {
                start,
                current,
                previous,
            } => {
                let w = spec.period as f64;
                let elapsed = now.saturating_sub(*start) as f64;
                let weight = ((w - elapsed) / w).clamp(0.0, 1.0);
                let estimate = *previous as f64 * weight + *current as f64;
                let allowed = estimate + cost as f64 <= cap as f64;
                let used = if allowed {
                    estimate + cost as f64
                } else {
                    estimate
                };
                let current_after = if allowed { current + cost } else { *current };
                let reset = if current_after > 0 {
                    ns((*start + 2 * spec.period).saturating_sub(now))
                } else if *previous > 0 {
                    ns((*start + spec.period).saturating_sub(now))
                } else {
                    Duration::ZERO
                };
                let retry_after = (!allowed).then(|| {
                    if cost > cap {
                        return ns(spec.period);
                    }
                    let room = (cap - cost) as f64;
                    if (*current as f64) <= room && *previous > 0 {
                        // Wait in this window until the previous one weighs little enough.
                        let x = 1.0 - (room - *current as f64) / *previous as f64;
                        let at = *start as f64 + x * w;
                        ns((at - now as f64).max(1.0).ceil() as u64)
                    } else {
                        // Wait into the next window, where this one is the previous.
                        let x = if *current == 0 {
                            0.0
                        } else {
                            (1.0 - room / *current as f64).max(0.0)
                        };
                        let at = (*start + spec.period) as f64 + x * w;
                        ns((at - now as f64).max(1.0).ceil() as u64)
                    }
                });
                Decision::new(
                    allowed,
                    cap,
                    (cap as f64 - used).max(0.0).floor() as u64,
                    reset,
                    retry_after,
                )
            }
        }
    }

    /// Charges `cost` at `now` (after [`State::advance`]), whether or not it
    /// fits: callers charge only what [`State::decide`] allowed, and
    /// reconciliation may charge past the capacity.
    pub(crate) fn charge(&mut self, spec: &Spec, now: u64, cost: u64) {
        match self {
            Self::TokenBucket { tat } => {
                *tat = (*tat).max(now) + cost.saturating_mul(spec.period);
            }
            Self::LeakyBucket { level, .. } => {
                *level += cost.saturating_mul(spec.period);
            }
            Self::FixedWindow { count, .. } => *count += cost,
            Self::SlidingLog { entries, sum } => {
                if cost > 0 {
                    entries.push_back((now, cost));
                    *sum += cost;
                }
            }
            Self::SlidingWindow { current, .. } => *current += cost,
        }
    }

    /// Gives back `refund` (a reconciliation that found the estimate too
    /// high). Never below empty.
    pub(crate) fn refund(&mut self, spec: &Spec, now: u64, refund: u64) {
        match self {
            Self::TokenBucket { tat } => {
                *tat = tat
                    .saturating_sub(refund.saturating_mul(spec.period))
                    .max(now);
            }
            Self::LeakyBucket { level, .. } => {
                *level = level.saturating_sub(refund.saturating_mul(spec.period));
            }
            Self::FixedWindow { count, .. } => *count = count.saturating_sub(refund),
            Self::SlidingLog { entries, sum } => {
                let mut left = refund;
                while left > 0 {
                    let Some(last) = entries.back_mut() else {
                        break;
                    };
                    let take = last.1.min(left);
                    last.1 -= take;
                    *sum -= take;
                    left -= take;
                    if last.1 == 0 {
                        entries.pop_back();
                    }
                }
            }
            Self::SlidingWindow { current, .. } => *current = current.saturating_sub(refund),
        }
    }

    /// Whether the state is the same as a fresh one (after
    /// [`State::advance`]): such a key can be forgotten.
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        match self {
            Self::TokenBucket { tat } => *tat <= now,
            Self::LeakyBucket { level, .. } => *level == 0,
            Self::FixedWindow { count, .. } => *count == 0,
            Self::SlidingLog { entries, .. } => entries.is_empty(),
            Self::SlidingWindow {
                current, previous, ..
            } => *current == 0 && *previous == 0,
        }
    }
}

/// Token and leaky buckets share one rule: the bucket holds `used` ns of
/// refill time, and a request of `cost` fits if the total stays within the
/// tolerance.
fn bucket_decision(spec: &Spec, used: u64, cost: u64) -> Decision {
    let tau = spec.tau();
    let after = used.saturating_add(cost.saturating_mul(spec.period));
    let allowed = after <= tau;
    let held = if allowed { after } else { used };
    Decision::bucket(
        allowed,
        spec.capacity,
        tau - held.min(tau),
        spec.period,
        held,
        if allowed { 0 } else { after - tau },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rate;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 3_600 * S;

    fn run(policy: &Policy, script: &[(u64, u64)]) -> Vec<Decision> {
        let spec = Spec::of(policy);
        let mut state = State::new(&spec);
        script
            .iter()
            .map(|&(at, cost)| {
                let now = T0 + at;
                state.advance(&spec, now);
                let d = state.decide(&spec, now, cost);
                if d.allowed() {
                    state.charge(&spec, now, cost);
                }
                d
            })
            .collect()
    }

    fn allowed(ds: &[Decision]) -> Vec<bool> {
        ds.iter().map(|d| d.allowed()).collect()
    }

    #[test]
    fn token_bucket_bursts_then_refills() {
        let p = Policy::token_bucket(3, Rate::per_second(1.0));
        let ds = run(
            &p,
            &[(0, 1), (0, 1), (0, 1), (0, 1), (S / 2, 1), (S, 1), (S, 1)],
        );
        assert_eq!(allowed(&ds), [true, true, true, false, false, true, false]);
        assert_eq!(ds[0].remaining(), 2);
        assert_eq!(ds[2].remaining(), 0);
        assert_eq!(ds[2].reset(), Duration::from_secs(3));
        assert_eq!(ds[3].retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(ds[4].retry_after(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn token_bucket_costs() {
        let p = Policy::token_bucket(10, Rate::per_second(10.0));
        let ds = run(&p, &[(0, 7), (0, 4), (0, 3), (S / 10, 1)]);
        assert_eq!(allowed(&ds), [true, false, true, true]);
        assert_eq!(ds[1].retry_after(), Some(Duration::from_millis(100)));
        assert_eq!(ds[1].remaining(), 3);
    }

    #[test]
    fn leaky_bucket_admits_as_the_token_bucket() {
        let script: Vec<(u64, u64)> = (0..40).map(|i| (i * S / 7, 1 + i % 3)).collect();
        let a = run(&Policy::token_bucket(5, Rate::per_second(2.0)), &script);
        let b = run(&Policy::leaky_bucket(5, Rate::per_second(2.0)), &script);
        assert_eq!(a, b);
    }

    #[test]
    fn fixed_window_resets_on_the_boundary() {
        let p = Policy::fixed_window(2, Duration::from_secs(10));
        // T0 is a multiple of 10 s: windows are [T0, T0+10s), ...
        let ds = run(
            &p,
            &[(0, 1), (9 * S, 1), (9 * S, 1), (10 * S - 1, 1), (10 * S, 1)],
        );
        assert_eq!(allowed(&ds), [true, true, false, false, true]);
        assert_eq!(ds[2].retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(ds[3].retry_after(), Some(Duration::from_nanos(1)));
        assert_eq!(ds[4].remaining(), 1);
        assert_eq!(ds[4].reset(), Duration::from_secs(10));
    }

    #[test]
    fn sliding_log_is_exact() {
        let p = Policy::sliding_log(3, Duration::from_secs(10));
        let ds = run(
            &p,
            &[
                (0, 1),
                (2 * S, 1),
                (4 * S, 1),
                (9 * S, 1),
                (10 * S, 1),
                (11 * S, 1),
                (12 * S, 1),
            ],
        );
        assert_eq!(allowed(&ds), [true, true, true, false, true, false, true]);
        assert_eq!(ds[3].retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(ds[5].retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let p = Policy::sliding_window(10, Duration::from_secs(10));
        // 10 in the first window; at 15 s the previous one weighs 50%: 5 fit.
        let mut script = vec![(S, 10)];
        script.extend((0..6).map(|_| (15 * S, 1)));
        let ds = run(&p, &script);
        assert_eq!(allowed(&ds), [true, true, true, true, true, true, false]);
        // The sixth waits until the previous window weighs 40%: at 16 s.
        assert_eq!(ds[6].retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn refunds_never_go_below_empty() {
        for p in [
            Policy::token_bucket(10, Rate::per_second(1.0)),
            Policy::leaky_bucket(10, Rate::per_second(1.0)),
            Policy::fixed_window(10, Duration::from_secs(60)),
            Policy::sliding_log(10, Duration::from_secs(60)),
            Policy::sliding_window(10, Duration::from_secs(60)),
        ] {
            let spec = Spec::of(&p);
            let mut state = State::new(&spec);
            state.advance(&spec, T0);
            state.charge(&spec, T0, 8);
            state.refund(&spec, T0, 5);
            assert_eq!(state.decide(&spec, T0, 0).remaining(), 7, "{p:?}");
            state.refund(&spec, T0, 50);
            assert!(state.is_idle(T0), "{p:?}");
            assert!(state.decide(&spec, T0, 10).allowed(), "{p:?}");
        }
    }
}
