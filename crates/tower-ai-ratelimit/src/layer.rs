use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_ai_core::key::{ApiKey, KeyExtractor, KeyExtractorExt, PeerIp, RequestHead};
use tower_ai_core::reject::Refusal;
use tower_layer::Layer;

use crate::config::{CostFn, DefaultKey, HeaderStyle, MissingKey, RefusalFn, Refused, Shared};
use crate::error::ConfigError;
use crate::policy::Policy;
use crate::resolver::Policies;
use crate::service::RateLimit;
use crate::store::{Backend, MemoryStore};

/// The [`Layer`] that wraps services in [`RateLimit`]. Cheap to clone; every
/// clone (and every service it makes) shares the same counts.
pub struct RateLimitLayer<K = DefaultKey> {
    pub(crate) shared: Arc<Shared<K>>,
}

impl<K> Clone for RateLimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for RateLimitLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.shared.resolver)
            .field("backend", &self.shared.backend)
            .field("missing_key", &self.shared.missing_key)
            .field("throttle", &self.shared.throttle)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A builder, keyed by the API key (`Authorization: Bearer`,
    /// `X-API-Key`) or else the peer address, in memory.
    pub fn builder() -> RateLimitBuilder<DefaultKey> {
        RateLimitBuilder {
            key: ApiKey::new().or(PeerIp::new()),
            settings: Settings {
                policies: Policies::new(),
                default: Vec::new(),
                backend: None,
                missing_key: MissingKey::default(),
                throttle: None,
                headers: HeaderStyle::default(),
                cost: None,
                refusal: None,
                default_tokens: 1_024,
                usage_body_limit: 1 << 20,
            },
        }
    }
}

impl<K> RateLimitLayer<K> {
    /// The in-memory store or the Redis store's health, for health checks.
    #[cfg(feature = "redis")]
    pub fn redis_health(&self) -> Option<&tower_ai_core::redis::Degrade> {
        match &self.shared.backend {
            Backend::Redis(r) => Some(r.health()),
            Backend::Memory(_) => None,
        }
    }
}

impl<S, K> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}

/// Builds a [`RateLimitLayer`].
#[must_use]
pub struct RateLimitBuilder<K> {
    key: K,
    settings: Settings,
}

/// What a [`RateLimitBuilder`] holds besides the key, kept apart so that
/// [`RateLimitBuilder::key`] moves it as one to a builder of another key.
struct Settings {
    policies: Policies,
    default: Vec<Policy>,
    backend: Option<Backend>,
    missing_key: MissingKey,
    throttle: Option<Duration>,
    headers: HeaderStyle,
    cost: Option<CostFn>,
    refusal: Option<RefusalFn>,
    default_tokens: u64,
    usage_body_limit: usize,
}

impl<K> fmt::Debug for RateLimitBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("policies", &self.settings.policies)
            .field("default", &self.settings.default)
            .finish_non_exhaustive()
    }
}

impl<K> RateLimitBuilder<K> {
    /// Who a request comes from (default: API key, else peer IP).
    pub fn key<K2: KeyExtractor>(self, key: K2) -> RateLimitBuilder<K2> {
        RateLimitBuilder {
            key,
            settings: self.settings,
        }
    }

    /// Adds a policy for every request (that no route rule of
    /// [`RateLimitBuilder::policies`] claims).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.settings.default.push(policy);
        self
    }

    /// Picks policies by route and tier.
    pub fn policies(mut self, policies: Policies) -> Self {
        self.settings.policies = policies;
        self
    }

    /// Keeps the counts in `store` (default: a new [`MemoryStore`]).
    pub fn memory(mut self, store: MemoryStore) -> Self {
        self.settings.backend = Some(Backend::Memory(store));
        self
    }

    /// Keeps the counts in Redis, shared by every replica.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: crate::store::RedisStore) -> Self {
        self.settings.backend = Some(Backend::Redis(store));
        self
    }

    /// What to do with requests that have no key.
    pub fn missing_key(mut self, missing_key: MissingKey) -> Self {
        self.settings.missing_key = missing_key;
        self
    }

    /// Throttle mode: a request over the limit waits for capacity, up to
    /// `max_delay`, instead of being refused at once; one that would wait
    /// longer (or is still over after waiting) is refused.
    pub fn throttle(mut self, max_delay: Duration) -> Self {
        self.settings.throttle = Some(max_delay);
        self
    }

    /// Which response fields to send.
    pub fn headers(mut self, headers: HeaderStyle) -> Self {
        self.settings.headers = headers;
        self
    }

    /// A request's cost for request-counting policies (default 1).
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(RequestHead<'_>) -> u64 + Send + Sync + 'static,
    {
        self.settings.cost = Some(Arc::new(cost));
        self
    }

    /// Shapes the refusal (status stays yours to choose; the rate-limit
    /// fields and `Retry-After` are added to whatever it returns). For a
    /// gRPC call the refusal becomes a trailers-only status.
    ///
    /// ```
    /// use tower_ai_core::reject::Refusal;
    /// use tower_ai_ratelimit::{Policy, Rate, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::token_bucket(5, Rate::per_second(1.0)))
    ///     .refusal(|refused| {
    ///         Refusal::too_many_requests()
    ///             .problem_type("https://example.com/problems/slow-down")
    ///             .detail(format!("slow down: {}", refused.policy.describe()))
    ///     })
    ///     .build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn refusal<F>(mut self, refusal: F) -> Self
    where
        F: Fn(&Refused<'_>) -> Refusal + Send + Sync + 'static,
    {
        self.settings.refusal = Some(Arc::new(refusal));
        self
    }

    /// The tokens charged to token policies when no [`TokenEstimate`]
    /// (from [`TokenCostLayer`]) is present (default 1,024); reconciled with
    /// the reported usage afterwards.
    ///
    /// [`TokenEstimate`]: crate::TokenEstimate
    /// [`TokenCostLayer`]: crate::TokenCostLayer
    pub fn default_tokens(mut self, tokens: u64) -> Self {
        self.settings.default_tokens = tokens;
        self
    }

    /// Builds the layer, or says why the configuration can't work.
    pub fn build(self) -> Result<RateLimitLayer<K>, ConfigError>
    where
        K: KeyExtractor,
    {
        let settings = self.settings;
        let mut policies = settings.policies;
        if !settings.default.is_empty() {
            policies = policies.otherwise(settings.default);
        }
        let resolver = policies.compile()?;
        if resolver.policies().next().is_none() {
            return Err(ConfigError::NoPolicy);
        }
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                resolver,
                backend: settings
                    .backend
                    .unwrap_or_else(|| Backend::Memory(MemoryStore::new())),
                missing_key: settings.missing_key,
                throttle: settings.throttle,
                headers: settings.headers,
                cost: settings.cost,
                refusal: settings.refusal,
                default_tokens: settings.default_tokens,
                usage_body_limit: settings.usage_body_limit,
            }),
        })
    }
}
