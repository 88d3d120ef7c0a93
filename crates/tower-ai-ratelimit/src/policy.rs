//! What a limit is: an algorithm, a capacity and a refill or window, counted
//! in requests or in LLM tokens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

/// How fast a bucket refills (or drains): an amount per period.
///
/// Says plainly what it means, so nobody mistakes "n per second" for "one
/// every n seconds":
///
/// ```
/// use std::time::Duration;
/// use tower_ai_ratelimit::Rate;
///
/// assert_eq!(Rate::per_second(10.0).interval(), Duration::from_millis(100));
/// assert_eq!(Rate::every(Duration::from_secs(10)).interval(), Duration::from_secs(10));
/// assert_eq!(Rate::per(20_000, Duration::from_secs(60)).interval(), Duration::from_millis(3));
/// ```
#[derive(Clone, Copy, PartialEq)]
pub struct Rate {
    /// Nanoseconds per unit.
    interval_ns: f64,
}

impl Rate {
    /// `amount` units per second (may be fractional: `0.1` is one every 10 s).
    pub fn per_second(amount: f64) -> Self {
        Self {
            interval_ns: 1e9 / amount,
        }
    }

    /// `amount` units per minute.
    pub fn per_minute(amount: f64) -> Self {
        Self {
            interval_ns: 60e9 / amount,
        }
    }

    /// `amount` units per `period`.
    pub fn per(amount: u64, period: Duration) -> Self {
        Self {
            interval_ns: period.as_nanos() as f64 / amount as f64,
        }
    }

    /// One unit every `period`.
    pub fn every(period: Duration) -> Self {
        Self::per(1, period)
    }

    /// The time one unit takes to come back.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns.round() as u64)
    }

    /// Units per second.
    pub fn per_second_f64(&self) -> f64 {
        1e9 / self.interval_ns
    }

    pub(crate) fn interval_ns(&self) -> f64 {
        self.interval_ns
    }

    fn is_valid(&self) -> bool {
        self.interval_ns.is_finite() && self.interval_ns >= 1.0
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({}/s)", self.per_second_f64())
    }
}

/// The algorithm of a [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Algorithm {
    /// GCRA, the token bucket: up to `capacity` at once, refilled at a rate.
    TokenBucket {
        /// The refill rate.
        refill: Rate,
    },
    /// The leaky bucket as a meter: each request pours its cost into a
    /// bucket of `capacity` that drains at a rate; a request that would
    /// overflow it is refused. It admits what the token bucket admits; its
    /// state reads as a fill level. For the queue form, which delays requests
    /// to a steady pace, add [`throttle`](crate::RateLimitBuilder::throttle).
    LeakyBucket {
        /// The drain rate.
        drain: Rate,
    },
    /// `capacity` per window, windows aligned to multiples of their length
    /// (so every replica agrees where one starts).
    FixedWindow {
        /// The window length.
        window: Duration,
    },
    /// The sliding-window log: at most `capacity` within any span of
    /// `window`, exactly; keeps one record per admitted request.
    SlidingLog {
        /// The window length.
        window: Duration,
    },
    /// The sliding-window counter: the previous fixed window's count,
    /// weighted by how much of it still overlaps the sliding window, plus
    /// the current one's. Two counters per key; an approximation of the log.
    SlidingWindow {
        /// The window length.
        window: Duration,
    },
}

/// What a policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unit {
    /// Requests: each costs 1 unless a cost function says otherwise.
    Requests,
    /// LLM tokens: estimated before the call and reconciled with the
    /// reported `usage` after it.
    Tokens,
}

impl Unit {
    /// `"requests"` or `"tokens"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// One limit.
///
/// ```
/// use std::time::Duration;
/// use tower_ai_ratelimit::{Policy, Rate};
///
/// let chat = Policy::token_bucket(5, Rate::per_second(0.1)).named("chat");
/// let tokens = Policy::token_bucket(20_000, Rate::per_minute(20_000.0)).named("chat-tokens").tokens();
/// let daily = Policy::fixed_window(1_000, Duration::from_secs(86_400)).named("daily");
/// assert_eq!(tokens.capacity(), 20_000);
/// ```
#[derive(Clone, PartialEq)]
pub struct Policy {
    name: Arc<str>,
    algorithm: Algorithm,
    capacity: u64,
    unit: Unit,
}

impl Policy {
    fn new(algorithm: Algorithm, capacity: u64, name: &str) -> Self {
        Self {
            name: name.into(),
            algorithm,
            capacity,
            unit: Unit::Requests,
        }
    }

    /// A token bucket (GCRA) of `capacity`, refilled at `refill`.
    pub fn token_bucket(capacity: u64, refill: Rate) -> Self {
        Self::new(Algorithm::TokenBucket { refill }, capacity, "token-bucket")
    }

    /// A leaky bucket of `capacity`, drained at `drain`.
    pub fn leaky_bucket(capacity: u64, drain: Rate) -> Self {
        Self::new(Algorithm::LeakyBucket { drain }, capacity, "leaky-bucket")
    }

    /// `capacity` per fixed `window`.
    pub fn fixed_window(capacity: u64, window: Duration) -> Self {
        Self::new(Algorithm::FixedWindow { window }, capacity, "fixed-window")
    }

    /// At most `capacity` within any `window`, by the sliding-window log.
    pub fn sliding_log(capacity: u64, window: Duration) -> Self {
        Self::new(Algorithm::SlidingLog { window }, capacity, "sliding-log")
    }

    /// About `capacity` within any `window`, by the sliding-window counter.
    pub fn sliding_window(capacity: u64, window: Duration) -> Self {
        Self::new(
            Algorithm::SlidingWindow { window },
            capacity,
            "sliding-window",
        )
    }

    /// Names the policy (in headers, logs, metrics and store keys; it must
    /// not come from a request).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Counts LLM tokens instead of requests.
    #[must_use]
    pub fn tokens(mut self) -> Self {
        self.unit = Unit::Tokens;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The capacity: the burst for buckets, the count per window for
    /// windows.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// What the policy counts.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The window a client sees in the IETF `RateLimit-Policy` field: the
    /// window length, or for buckets the time to refill from empty.
    pub fn window(&self) -> Duration {
        match self.algorithm {
            Algorithm::TokenBucket { refill: rate } | Algorithm::LeakyBucket { drain: rate } => {
                Duration::from_nanos((rate.interval_ns() * self.capacity as f64) as u64)
            }
            Algorithm::FixedWindow { window }
            | Algorithm::SlidingLog { window }
            | Algorithm::SlidingWindow { window } => window,
        }
    }

    /// The limit in words, e.g. `5 requests at once, refilled at 0.1/s` or
    /// `1000 requests per 86400 s`.
    pub fn describe(&self) -> String {
        let unit = self.unit.as_str();
        match self.algorithm {
            Algorithm::TokenBucket { refill: rate } | Algorithm::LeakyBucket { drain: rate } => {
                format!(
                    "{} {unit} at once, refilled at {}/s",
                    self.capacity,
                    trim_float(rate.per_second_f64())
                )
            }
            Algorithm::FixedWindow { window }
            | Algorithm::SlidingLog { window }
            | Algorithm::SlidingWindow { window } => {
                format!(
                    "{} {unit} per {} s",
                    self.capacity,
                    trim_float(window.as_secs_f64())
                )
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let policy = || self.name.to_string();
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity { policy: policy() });
        }
        if self.name.is_empty() || self.name.len() > 64 || self.name.contains(['{', '}', ':', '"'])
        {
            return Err(ConfigError::InvalidPolicyName { name: policy() });
        }
        match self.algorithm {
            Algorithm::TokenBucket { refill: rate } | Algorithm::LeakyBucket { drain: rate } => {
                if !rate.is_valid() {
                    return Err(ConfigError::InvalidRate { policy: policy() });
                }
            }
            Algorithm::FixedWindow { window }
            | Algorithm::SlidingLog { window }
            | Algorithm::SlidingWindow { window } => {
                if window < Duration::from_millis(1) {
                    return Err(ConfigError::InvalidWindow { policy: policy() });
                }
            }
        }
        Ok(())
    }
}

/// A number without trailing zeros: `0.1`, `10`, `333.33`.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("capacity", &self.capacity)
            .field("unit", &self.unit)
            .finish()
    }
}
