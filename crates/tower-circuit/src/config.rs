//! The breaker's settings: window, thresholds, open wait, half-open trials.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::state::Transition;

/// Which recent calls the failure and slow-call rates are computed over.
///
/// - [`Window::consecutive`]: the circuit opens after `n` bad calls in a
///   row (a failure, or a slow call when slow calls are judged); a success
///   resets the count. The rate thresholds and the minimum number of calls
///   don't apply.
/// - [`Window::count`]: the last `size` calls.
/// - [`Window::time`]: the calls that ended in the last `window`, kept in
///   slices of `window / buckets` (an outcome leaves the window when its
///   slice does: between `window - window / buckets` and `window` after it was
///   recorded, exactly `window` after when recorded at the start of a slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(pub(crate) WindowKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Consecutive(u32),
    Count(u32),
    Time { window: Duration, buckets: u32 },
}

impl Window {
    /// Opens after `n` bad calls in a row.
    pub const fn consecutive(n: u32) -> Self {
        Self(WindowKind::Consecutive(n))
    }

    /// Rates over the last `size` calls.
    pub const fn count(size: u32) -> Self {
        Self(WindowKind::Count(size))
    }

    /// Rates over the calls of the last `window`, in 10 slices.
    pub const fn time(window: Duration) -> Self {
        Self::time_with_buckets(window, 10)
    }

    /// Rates over the calls of the last `window`, in `buckets` slices (more
    /// slices: a smoother window, a little more memory).
    pub const fn time_with_buckets(window: Duration, buckets: u32) -> Self {
        Self(WindowKind::Time { window, buckets })
    }
}

impl Default for Window {
    /// The last 100 calls.
    fn default() -> Self {
        Self::count(100)
    }
}

/// Randomness added to the open wait, so that replicas (or breakers) that
/// opened together don't probe the upstream together.
///
/// [`Jitter::ratio`] draws the wait from `wait × (1 ± ratio)` (never above
/// the cap); [`Jitter::seeded`] does the same from a fixed seed, for tests;
/// [`Jitter::from_fn`] lets you compute it.
#[derive(Clone, Default)]
pub struct Jitter(pub(crate) JitterKind);

#[derive(Clone, Default)]
pub(crate) enum JitterKind {
    #[default]
    None,
    Ratio {
        ratio: f64,
        seed: Option<u64>,
    },
    Fn(Arc<dyn Fn(Duration) -> Duration + Send + Sync>),
}

impl Jitter {
    /// No jitter: the wait is exactly the computed one.
    pub const fn none() -> Self {
        Self(JitterKind::None)
    }

    /// A random wait in `wait × (1 - ratio) ..= wait × (1 + ratio)`, capped
    /// at the maximum wait. `ratio` is clamped to `0..=1`.
    pub fn ratio(ratio: f64) -> Self {
        Self(JitterKind::Ratio {
            ratio: clamp_ratio(ratio),
            seed: None,
        })
    }

    /// Like [`Jitter::ratio`], with a pseudo-random sequence from `seed`:
    /// the same seed gives the same waits.
    pub fn seeded(ratio: f64, seed: u64) -> Self {
        Self(JitterKind::Ratio {
            ratio: clamp_ratio(ratio),
            seed: Some(seed),
        })
    }

    /// The wait is `f(wait)` (capped at the maximum wait).
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(Duration) -> Duration + Send + Sync + 'static,
    {
        Self(JitterKind::Fn(Arc::new(f)))
    }

    pub(crate) fn seed(&self) -> Option<u64> {
        match &self.0 {
            JitterKind::Ratio { seed, .. } => *seed,
            _ => None,
        }
    }

    /// Applies the jitter; `rng` is the breaker's generator state.
    pub(crate) fn apply(&self, wait: Duration, max: Duration, rng: &mut u64) -> Duration {
        let jittered = match &self.0 {
            JitterKind::None => wait,
            JitterKind::Ratio { ratio, .. } => {
                // u in [-1, 1)
                let u = (next_random(rng) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                // (Never panics: the factor is in 0..=2, an overflow caps.)
                Duration::try_from_secs_f64(wait.as_secs_f64() * (1.0 + ratio * u).max(0.0))
                    .unwrap_or(max)
            }
            JitterKind::Fn(f) => f(wait),
        };
        jittered.min(max)
    }
}

impl fmt::Debug for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            JitterKind::None => f.write_str("Jitter::none()"),
            JitterKind::Ratio { ratio, seed } => f
                .debug_struct("Jitter")
                .field("ratio", ratio)
                .field("seed", seed)
                .finish(),
            JitterKind::Fn(_) => f.write_str("Jitter::from_fn(..)"),
        }
    }
}

fn clamp_ratio(ratio: f64) -> f64 {
    if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

/// splitmix64: small, fast, good enough for jitter.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for breakers without a fixed one: different per process and per
/// breaker.
pub(crate) fn random_seed(salt: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(salt.as_bytes());
    h.finish()
}

/// A setting that can't be used, from [`CircuitBreakerBuilder::build`](crate::CircuitBreakerBuilder::build).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A window of zero calls, zero duration or zero slices, or more slices
    /// than nanoseconds.
    EmptyWindow,
    /// A rate threshold outside `(0, 100]` percent.
    Threshold {
        /// `"failure_rate_threshold"` or `"slow_call_rate_threshold"`.
        setting: &'static str,
        /// The value given.
        value: f64,
    },
    /// A count window smaller than the minimum number of calls: the rate
    /// would never be judged.
    MinimumCallsAboveWindow {
        /// The minimum number of calls.
        minimum_calls: u32,
        /// The window size.
        window: u32,
    },
    /// A duration that must be positive is zero (`setting` names it).
    ZeroDuration {
        /// The setting.
        setting: &'static str,
    },
    /// The open wait's growth factor is below 1 or not finite.
    Growth(f64),
    /// Zero half-open trial calls: the circuit could never close again.
    NoTrialCalls,
    /// Zero breakers allowed.
    NoBreakers,
    /// Shared state needs a Tokio runtime at build time (to start its
    /// synchronisation task).
    NoRuntime,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyWindow => f.write_str("the sliding window is empty"),
            Self::Threshold { setting, value } => {
                write!(f, "{setting} must be in (0, 100] percent, got {value}")
            }
            Self::MinimumCallsAboveWindow {
                minimum_calls,
                window,
            } => write!(
                f,
                "minimum_calls ({minimum_calls}) is larger than the count window ({window})"
            ),
            Self::ZeroDuration { setting } => write!(f, "{setting} must be greater than zero"),
            Self::Growth(g) => write!(f, "the open wait growth must be at least 1, got {g}"),
            Self::NoTrialCalls => f.write_str("half_open_trials must be at least 1"),
            Self::NoBreakers => f.write_str("max_breakers must be at least 1"),
            Self::NoRuntime => f.write_str("shared state must be set up inside a Tokio runtime"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The transition callback.
pub(crate) type OnTransition = Arc<dyn Fn(&Transition<'_>) + Send + Sync>;

/// What the builder collects; validated into [`Settings`].
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) window: WindowKind,
    pub(crate) failure_rate: f64,
    pub(crate) slow_rate: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) slow_call: Option<Duration>,
    pub(crate) slow_first_byte: Option<Duration>,
    pub(crate) open_wait: Duration,
    pub(crate) growth: f64,
    pub(crate) max_open_wait: Duration,
    pub(crate) jitter: Jitter,
    pub(crate) trials: u32,
    pub(crate) trial_lease: Duration,
    pub(crate) max_breakers: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) key_label: bool,
    pub(crate) on_transition: Option<OnTransition>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            window: Window::default().0,
            failure_rate: 50.0,
            slow_rate: 100.0,
            minimum_calls: 10,
            slow_call: None,
            slow_first_byte: None,
            open_wait: Duration::from_secs(30),
            growth: 1.0,
            max_open_wait: Duration::from_secs(30),
            jitter: Jitter::none(),
            trials: 3,
            trial_lease: Duration::from_secs(60),
            max_breakers: 1024,
            idle_timeout: Duration::from_secs(600),
            key_label: true,
            on_transition: None,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("window", &self.window)
            .field("failure_rate", &self.failure_rate)
            .field("slow_rate", &self.slow_rate)
            .field("minimum_calls", &self.minimum_calls)
            .field("slow_call", &self.slow_call)
            .field("slow_first_byte", &self.slow_first_byte)
            .field("open_wait", &self.open_wait)
            .field("growth", &self.growth)
            .field("max_open_wait", &self.max_open_wait)
            .field("jitter", &self.jitter)
            .field("trials", &self.trials)
            .field("trial_lease", &self.trial_lease)
            .field("max_breakers", &self.max_breakers)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self.window {
            WindowKind::Consecutive(0) | WindowKind::Count(0) => {
                return Err(ConfigError::EmptyWindow);
            }
            WindowKind::Time { window, buckets }
                if buckets == 0 || window.as_nanos() < u128::from(buckets) =>
            {
                return Err(ConfigError::EmptyWindow);
            }
            WindowKind::Count(size) if self.minimum_calls > size => {
                return Err(ConfigError::MinimumCallsAboveWindow {
                    minimum_calls: self.minimum_calls,
                    window: size,
                });
            }
            _ => {}
        }
        for (setting, value) in [
            ("failure_rate_threshold", self.failure_rate),
            ("slow_call_rate_threshold", self.slow_rate),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                return Err(ConfigError::Threshold { setting, value });
            }
        }
        for (setting, d) in [
            ("open_wait", Some(self.open_wait)),
            ("trial_lease", Some(self.trial_lease)),
            ("idle_timeout", Some(self.idle_timeout)),
            ("slow_call_duration", self.slow_call),
            ("slow_first_byte", self.slow_first_byte),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(ConfigError::ZeroDuration { setting });
            }
        }
        if !(self.growth.is_finite() && self.growth >= 1.0) {
            return Err(ConfigError::Growth(self.growth));
        }
        if self.trials == 0 {
            return Err(ConfigError::NoTrialCalls);
        }
        if self.max_breakers == 0 {
            return Err(ConfigError::NoBreakers);
        }
        Ok(())
    }

    /// Whether calls are timed (slow-call judging is on).
    pub(crate) fn times_calls(&self) -> bool {
        self.slow_call.is_some() || self.slow_first_byte.is_some()
    }

    /// The open wait after `opens` earlier consecutive openings, before
    /// jitter: `open_wait × growth^opens`, capped.
    pub(crate) fn open_wait_for(&self, opens: u32) -> Duration {
        let max = self.max_open_wait.max(self.open_wait);
        let factor = self.growth.powi(i32::try_from(opens).unwrap_or(i32::MAX));
        if !factor.is_finite() {
            return max;
        }
        let secs = self.open_wait.as_secs_f64() * factor;
        if secs >= max.as_secs_f64() {
            max
        } else {
            Duration::try_from_secs_f64(secs).unwrap_or(max)
        }
    }

    /// The cap of the open wait.
    pub(crate) fn open_wait_cap(&self) -> Duration {
        self.max_open_wait.max(self.open_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_wait_grows_and_is_capped() {
        let s = Settings {
            open_wait: Duration::from_secs(1),
            growth: 2.0,
            max_open_wait: Duration::from_secs(5),
            ..Settings::default()
        };
        let waits: Vec<u64> = (0..5).map(|n| s.open_wait_for(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(s.open_wait_for(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn seeded_jitter_is_deterministic_and_bounded() {
        let j = Jitter::seeded(0.2, 7);
        let (mut a, mut b) = (7u64, 7u64);
        let max = Duration::from_secs(11);
        for _ in 0..100 {
            let w = j.apply(Duration::from_secs(10), max, &mut a);
            assert_eq!(w, j.apply(Duration::from_secs(10), max, &mut b));
            assert!(w >= Duration::from_secs(8) && w <= max, "{w:?}");
        }
    }

    #[test]
    fn validation() {
        let ok = Settings::default();
        assert!(ok.validate().is_ok());
        let bad = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validate()
        };
        assert_eq!(
            bad(|s| s.window = WindowKind::Count(0)),
            Err(ConfigError::EmptyWindow)
        );
        assert_eq!(
            bad(|s| s.window = WindowKind::Count(5)),
            Err(ConfigError::MinimumCallsAboveWindow {
                minimum_calls: 10,
                window: 5
            })
        );
        assert!(matches!(
            bad(|s| s.failure_rate = 0.0),
            Err(ConfigError::Threshold { .. })
        ));
        assert!(matches!(
            bad(|s| s.slow_rate = 101.0),
            Err(ConfigError::Threshold { .. })
        ));
        assert!(matches!(
            bad(|s| s.failure_rate = f64::NAN),
            Err(ConfigError::Threshold { .. })
        ));
        assert_eq!(
            bad(|s| s.open_wait = Duration::ZERO),
            Err(ConfigError::ZeroDuration {
                setting: "open_wait"
            })
        );
        assert_eq!(bad(|s| s.growth = 0.5), Err(ConfigError::Growth(0.5)));
        assert_eq!(bad(|s| s.trials = 0), Err(ConfigError::NoTrialCalls));
        assert_eq!(bad(|s| s.max_breakers = 0), Err(ConfigError::NoBreakers));
        assert_eq!(
            bad(|s| s.window = WindowKind::Time {
                window: Duration::from_secs(1),
                buckets: 0
            }),
            Err(ConfigError::EmptyWindow)
        );
    }
}
