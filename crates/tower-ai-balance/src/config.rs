//! How a [`Pool`](crate::Pool) picks and when it retries: the settings every
//! other file reads, validated once when the pool is built.

use std::fmt;
use std::time::Duration;

/// The endpoints one pool holds at most: the prefix index keeps one bit
/// per endpoint in a `u64`.
pub(crate) const MAX_ENDPOINTS: usize = 64;

/// How an endpoint is picked for a request.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Strategy {
    /// Each endpoint in turn, skipping those that are full or cooling down.
    RoundRobin,
    /// The power of two choices over tokens in flight: two endpoints drawn
    /// at random, the one with fewer tokens in flight (per unit of weight)
    /// wins.
    LeastLoaded,
    /// Prefix affinity weighed against load: the endpoint that last served
    /// the longest prefix of this prompt, unless the fleet's load is out of
    /// balance or the match is too short; then the least loaded.
    CacheAware(CacheAware),
}

impl Strategy {
    /// [`Strategy::CacheAware`] with its defaults.
    pub const fn cache_aware() -> Self {
        Self::CacheAware(CacheAware::new())
    }

    /// The strategy's name, as the config and the metrics spell it.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastLoaded => "least_loaded",
            Self::CacheAware(_) => "cache_aware",
        }
    }
}

/// The thresholds of [`Strategy::CacheAware`].
///
/// The load spread is judged on tokens in flight per unit of weight: the
/// fleet is out of balance when the most loaded endpoint carries more than
/// `balance_abs_tokens` beyond the least loaded **and** more than
/// `balance_rel` times it. Out of balance, every request goes to the least
/// loaded endpoint; in balance, to the endpoint holding the longest prefix
/// when it covers at least `match_threshold` of the prompt's blocks, else to
/// the least loaded. A miss never goes to "the endpoint with the smallest
/// cache" regardless of its load: that sends a stream of misses to one
/// server.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CacheAware {
    /// The share of the prompt's blocks (0 to 1) a match must cover to be
    /// followed; default 0.5.
    pub match_threshold: f64,
    /// The absolute spread, in tokens in flight, past which load wins over
    /// affinity; default 131,072 (about 32 requests of 4,000 tokens, the
    /// spread SGLang's router tolerates).
    pub balance_abs_tokens: u64,
    /// The relative spread past which load wins over affinity; default 3.
    pub balance_rel: f64,
}

impl CacheAware {
    /// The defaults.
    pub const fn new() -> Self {
        Self {
            match_threshold: 0.5,
            balance_abs_tokens: 131_072,
            balance_rel: 3.0,
        }
    }

    /// Sets [`match_threshold`](Self::match_threshold).
    #[must_use]
    pub const fn match_threshold(mut self, share: f64) -> Self {
        self.match_threshold = share;
        self
    }

    /// Sets [`balance_abs_tokens`](Self::balance_abs_tokens) and
    /// [`balance_rel`](Self::balance_rel).
    #[must_use]
    pub const fn balance(mut self, abs_tokens: u64, rel: f64) -> Self {
        self.balance_abs_tokens = abs_tokens;
        self.balance_rel = rel;
        self
    }
}

impl Default for CacheAware {
    fn default() -> Self {
        Self::new()
    }
}

/// The settings of a pool, with their defaults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) strategy: Strategy,
    /// Bytes of canonical prompt text per prefix block (64: about 16
    /// tokens, the KV-cache block of vLLM and SGLang).
    pub(crate) block_bytes: usize,
    /// Prefix blocks the index remembers (approximately least recently
    /// used are forgotten first).
    pub(crate) index_capacity: usize,
    /// Output tokens counted for a request that sets no limit.
    pub(crate) default_output_tokens: u64,
    /// The largest request body read; larger ones are refused with `413`.
    pub(crate) max_body: usize,
    /// Attempts after the first.
    pub(crate) retries: u32,
    /// The first backoff; each retry doubles it, up to `backoff_max`.
    pub(crate) backoff: Duration,
    pub(crate) backoff_max: Duration,
    /// The longest a retry waits for an endpoint to come back (a
    /// `Retry-After`, a cooldown); past it the last answer is returned.
    pub(crate) max_retry_wait: Duration,
    /// Consecutive failures that cool an endpoint down.
    pub(crate) cooldown_after: u32,
    /// How long a cooldown lasts.
    pub(crate) cooldown: Duration,
    /// The longest a `Retry-After` from an endpoint keeps it cooled.
    pub(crate) max_cooldown: Duration,
    /// How long a request waits for a free permit when every endpoint is
    /// full.
    pub(crate) queue_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            strategy: Strategy::cache_aware(),
            block_bytes: 64,
            index_capacity: 1 << 18,
            default_output_tokens: 256,
            max_body: 1 << 20,
            retries: 2,
            backoff: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
            max_retry_wait: Duration::from_secs(5),
            cooldown_after: 3,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(10),
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self, endpoints: usize) -> Result<(), ConfigError> {
        if endpoints == 0 {
            return Err(ConfigError::NoEndpoints);
        }
        if endpoints > MAX_ENDPOINTS {
            return Err(ConfigError::TooManyEndpoints(endpoints));
        }
        if self.block_bytes == 0 {
            return Err(ConfigError::Invalid("block_bytes must be at least 1"));
        }
        if self.index_capacity < 2 {
            return Err(ConfigError::Invalid("index_capacity must be at least 2"));
        }
        if self.cooldown_after == 0 {
            return Err(ConfigError::Invalid("cooldown_after must be at least 1"));
        }
        if let Strategy::CacheAware(c) = self.strategy {
            if !(0.0..=1.0).contains(&c.match_threshold) {
                return Err(ConfigError::Invalid(
                    "match_threshold must be between 0 and 1",
                ));
            }
            if c.balance_rel.is_nan() || c.balance_rel < 1.0 {
                return Err(ConfigError::Invalid("balance_rel must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A pool that can't be built as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A pool needs at least one endpoint.
    NoEndpoints,
    /// More endpoints than one pool holds (64).
    TooManyEndpoints(usize),
    /// Two endpoints share a name.
    DuplicateName(String),
    /// An endpoint with a concurrency limit or weight of 0.
    ZeroLimit(String),
    /// A setting out of its range.
    Invalid(&'static str),
    /// Shared state needs a Tokio runtime to build the pool in.
    NoRuntime,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoEndpoints => f.write_str("a pool needs at least one endpoint"),
            Self::TooManyEndpoints(n) => {
                write!(f, "{n} endpoints: a pool holds at most {}", MAX_ENDPOINTS)
            }
            Self::DuplicateName(name) => write!(f, "two endpoints are named {name:?}"),
            Self::ZeroLimit(name) => write!(
                f,
                "endpoint {name:?}: max_concurrency and weight must be at least 1"
            ),
            Self::Invalid(why) => f.write_str(why),
            Self::NoRuntime => f.write_str("shared state must be set up inside a Tokio runtime"),
        }
    }
}

impl std::error::Error for ConfigError {}
