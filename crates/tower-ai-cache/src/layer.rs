//! [`CacheLayer`] and its builder, [`CacheBuilder`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tower_ai_core::key::{ApiKey, KeyExtractor};
use tower_layer::Layer;

use crate::config::{ScopeFn, Shared, scope_fn};
use crate::error::ConfigError;
use crate::flight::Flights;
use crate::handle::CacheHandle;
use crate::key::{Aliases, IgnoreList};
use crate::route::{Route, RouteDefaults, RouteRule};
use crate::service::Cache;
use crate::store::memory::L1;
#[cfg(feature = "redis")]
use crate::store::redis::RedisStore;

/// The [`Layer`] that wraps services in [`Cache`].
///
/// Cheap to clone: every clone, and every service it makes, shares one L1,
/// one connection to Redis and one set of in-flight requests. Build it once
/// and hand clones to each route.
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        let mut d = f.debug_struct("CacheLayer");
        d.field("routes", &s.routes)
            .field("l1", &s.l1)
            .field("max_body", &s.max_body);
        #[cfg(feature = "redis")]
        d.field("l2", &s.l2);
        d.finish_non_exhaustive()
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheLayer {
    /// A layer with the default configuration: in memory only, every `GET`
    /// and `POST` cached for 1 h, scoped by API key (requests without one are
    /// not cached).
    pub fn new() -> Self {
        Self::from_builder(CacheBuilder::new())
    }

    /// A builder.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// A handle for invalidation and lookups (the circuit breaker's stale
    /// fallback); it shares this layer's state.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.clone())
    }

    fn from_builder(b: CacheBuilder) -> Self {
        let defaults = RouteDefaults {
            ttl: b.ttl,
            stale_if_error: b.stale_if_error,
            public: b.public,
        };
        let routes: Vec<RouteRule> = if b.routes.is_empty() {
            vec![Route::any("*").resolve(&defaults)]
        } else {
            b.routes.into_iter().map(|r| r.resolve(&defaults)).collect()
        }
        .into_iter()
        .filter_map(Result::ok)
        .collect();
        #[cfg(feature = "redis")]
        let shared_l2 = b.redis.is_some();
        #[cfg(not(feature = "redis"))]
        let shared_l2 = false;
        let l1 = L1::new(b.l1_capacity, l1_lifetime(b.l1_ttl, shared_l2, &routes));
        #[cfg(feature = "redis")]
        let l2 = b
            .redis
            .map(|store| crate::store::redis::L2::start(store, l1.clone()));
        Self {
            shared: Arc::new(Shared {
                routes: routes.into(),
                scope: b.scope,
                ignore: b.ignore,
                vary: b.vary.into(),
                cache_name: b.cache_name.into(),
                expose_key: b.expose_key,
                max_request_body: b.max_request_body,
                max_body: b.max_body,
                cacheable: b.cacheable,
                follow_timeout: b.follow_timeout,
                flights: Arc::new(Flights::new(b.max_in_flight, b.max_body)),
                aliases: Aliases::new(),
                l1,
                #[cfg(feature = "redis")]
                l2,
                #[cfg(feature = "semantic")]
                semantic: b.semantic.map(Arc::new),
            }),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.shared.clone())
    }
}

/// How long L1 keeps an answer: `l1_ttl` when set; else 60 s in front of a
/// shared L2 (the drift between replicas), and without one the longest any
/// route keeps an answer (its TTL and grace: L1 is the whole cache). An
/// entry past its own lifetime reads as a miss and is replaced.
fn l1_lifetime(l1_ttl: Option<Duration>, shared_l2: bool, routes: &[RouteRule]) -> Duration {
    match l1_ttl {
        Some(ttl) => ttl,
        None if shared_l2 => Duration::from_secs(60),
        None => routes
            .iter()
            .map(|r| r.ttl.saturating_add(r.grace))
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
    }
}

/// Builds a [`CacheLayer`].
///
/// | setting | default |
/// |---|---|
/// | [`scope`](Self::scope) | the API key (`Authorization: Bearer`, `X-API-Key`); no key, no caching |
/// | [`route`](Self::route) | every `GET` and `POST` |
/// | [`ttl`](Self::ttl) | 1 h |
/// | [`stale_if_error`](Self::stale_if_error) | 5 min |
/// | [`l1_capacity`](Self::l1_capacity) | 64 MiB |
/// | [`l1_ttl`](Self::l1_ttl) | 60 s with `redis`; without, an answer's own TTL and grace |
/// | [`max_body`](Self::max_body) | 4 MiB |
/// | [`max_request_body`](Self::max_request_body) | 1 MiB |
/// | [`ignore_fields`](Self::ignore_fields) | `user` |
/// | [`cacheable_status`](Self::cacheable_status) | 2xx |
/// | [`max_in_flight`](Self::max_in_flight) | 10,000 keys |
/// | [`follow_timeout`](Self::follow_timeout) | 120 s |
/// | `redis` (feature `redis`) | none: L1 only |
#[must_use]
pub struct CacheBuilder {
    scope: ScopeFn,
    public: bool,
    routes: Vec<Route>,
    ttl: Duration,
    stale_if_error: Duration,
    l1_capacity: u64,
    l1_ttl: Option<Duration>,
    max_body: usize,
    max_request_body: usize,
    ignore: IgnoreList,
    vary: Vec<HeaderName>,
    cacheable: fn(StatusCode) -> bool,
    cache_name: String,
    expose_key: bool,
    max_in_flight: usize,
    follow_timeout: Duration,
    #[cfg(feature = "redis")]
    redis: Option<RedisStore>,
    #[cfg(feature = "semantic")]
    semantic: Option<crate::semantic::SemanticCache>,
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("routes", &self.routes)
            .field("ttl", &self.ttl)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheBuilder {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self {
            scope: scope_fn(ApiKey::new()),
            public: false,
            routes: Vec::new(),
            ttl: Duration::from_secs(3600),
            stale_if_error: Duration::from_secs(300),
            l1_capacity: 64 << 20,
            l1_ttl: None,
            max_body: 4 << 20,
            max_request_body: 1 << 20,
            ignore: IgnoreList::default(),
            vary: Vec::new(),
            cacheable: |s| s.is_success(),
            cache_name: "tower-ai".to_owned(),
            expose_key: false,
            max_in_flight: 10_000,
            follow_timeout: Duration::from_secs(120),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "semantic")]
            semantic: None,
        }
    }

    /// Who a request's answer belongs to: the entries of one caller are
    /// never served to another. A request in which `scope` finds no key is
    /// not cached at all (`Cache-Status: …; fwd=bypass`). E.g.
    /// `ApiKey::new().or(Extension::<SessionUser>::new())` for the API key,
    /// else the session's user.
    pub fn scope<K: KeyExtractor>(mut self, scope: K) -> Self {
        self.scope = scope_fn(scope);
        self
    }

    /// Shares every route's answers across all callers (or only some routes
    /// with [`Route::public`]). Only for answers that hold no tenant's data.
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Adds a route (see [`Route`]); once any is added, only matching
    /// requests are cached.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// The default freshness of an answer (routes may set their own).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long after expiry an answer is kept to be served when the
    /// upstream fails (`0` turns it off).
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.stale_if_error = grace;
        self
    }

    /// The most memory L1 takes, in bytes: its answers' bodies and headers,
    /// their structures and their slots.
    pub fn l1_capacity(mut self, bytes: u64) -> Self {
        self.l1_capacity = bytes;
        self
    }

    /// The longest an answer stays in L1, however long its TTL: replicas
    /// that missed an invalidation drift apart for at most this long.
    /// Default: 60 s with [`redis`](Self::redis); without it L1 is the
    /// whole cache, and an answer stays for its TTL and grace.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// The largest answer stored; a larger one passes through, not stored.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest request body read for a key. A request that declares a
    /// larger body (`Content-Length`, or its body's exact size) passes
    /// through uncached; one of unknown length that turns out larger is
    /// answered `413`, since the bytes read can't be put back.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// Body fields left out of the key (default: `user`).
    pub fn ignore_fields(mut self, ignore: IgnoreList) -> Self {
        self.ignore = ignore;
        self
    }

    /// Adds a request header to the key. A response whose `Vary` names a
    /// header not added here (or is `*`) is not stored.
    pub fn vary(mut self, header: HeaderName) -> Self {
        if !self.vary.contains(&header) {
            self.vary.push(header);
        }
        self
    }

    /// Which response statuses may be stored (default: 2xx).
    pub fn cacheable_status(mut self, cacheable: fn(StatusCode) -> bool) -> Self {
        self.cacheable = cacheable;
        self
    }

    /// The cache's name in `Cache-Status` (default `tower-ai`); a token.
    pub fn cache_name(mut self, name: impl Into<String>) -> Self {
        self.cache_name = name.into();
        self
    }

    /// Adds `key="<hex>"` to `Cache-Status`, the key that
    /// [`CacheHandle::invalidate_key`] takes (a digest: it reveals nothing
    /// of the request). Off by default.
    pub fn expose_key(mut self, on: bool) -> Self {
        self.expose_key = on;
        self
    }

    /// The most keys with a request in flight that others can join; past it,
    /// identical misses are not collapsed (memory stays bounded).
    pub fn max_in_flight(mut self, keys: usize) -> Self {
        self.max_in_flight = keys;
        self
    }

    /// The longest a collapsed request waits for its leader's answer before
    /// it goes to the upstream itself.
    pub fn follow_timeout(mut self, timeout: Duration) -> Self {
        self.follow_timeout = timeout;
        self
    }

    /// Adds L2: entries shared by every replica in Redis (standalone or
    /// Cluster), a lock per key so that one replica calls the upstream for
    /// identical misses, live streams for the others, and invalidation
    /// across replicas (see [`RedisStore`]). The layer opens its own extra
    /// connections from the store's client: one for invalidation messages,
    /// and a few (see [`RedisStoreBuilder::blocking_connections`]) for
    /// following streams.
    ///
    /// Must be built inside a Tokio runtime.
    ///
    /// [`RedisStoreBuilder::blocking_connections`]: crate::RedisStoreBuilder::blocking_connections
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// The semantic cache of the routes marked
    /// [`Route::semantic`](crate::Route::semantic) (feature `semantic`).
    #[cfg(feature = "semantic")]
    pub fn semantic(mut self, semantic: crate::semantic::SemanticCache) -> Self {
        self.semantic = Some(semantic);
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<CacheLayer, ConfigError> {
        if self.l1_capacity == 0 {
            return Err(ConfigError::ZeroL1Capacity);
        }
        if self.l1_ttl.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::ZeroL1Ttl);
        }
        if self.max_body == 0 || u32::try_from(self.max_body).is_err() {
            return Err(ConfigError::MaxBodyOutOfRange {
                bytes: self.max_body,
            });
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::ZeroMaxInFlight);
        }
        if self.cache_name.is_empty()
            || !self
                .cache_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
        {
            return Err(ConfigError::InvalidCacheName {
                name: self.cache_name,
            });
        }
        let defaults = RouteDefaults {
            ttl: self.ttl,
            stale_if_error: self.stale_if_error,
            public: self.public,
        };
        if self.ttl.is_zero() {
            return Err(ConfigError::ZeroTtl);
        }
        for route in &self.routes {
            route.clone().resolve(&defaults)?;
        }
        #[cfg(feature = "redis")]
        if let Some(store) = &self.redis {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(ConfigError::NoTokioRuntime);
            }
            store.check()?;
        }
        Ok(CacheLayer::from_builder(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_keeps_answers_their_lifetime_unless_in_front_of_l2() {
        let defaults = RouteDefaults {
            ttl: Duration::from_secs(3_600),
            stale_if_error: Duration::from_secs(300),
            public: false,
        };
        let routes: Vec<RouteRule> = [
            Route::post("/short").ttl(Duration::from_secs(10)),
            Route::post("/long").ttl(Duration::from_secs(7_200)),
            Route::any("*"),
        ]
        .into_iter()
        .map(|r| r.resolve(&defaults).expect("a route"))
        .collect();
        // Alone, L1 is the cache: the longest TTL and its grace.
        assert_eq!(
            l1_lifetime(None, false, &routes),
            Duration::from_secs(7_500)
        );
        // In front of a shared L2: a minute of drift at most.
        assert_eq!(l1_lifetime(None, true, &routes), Duration::from_secs(60));
        // As set, either way.
        let set = Some(Duration::from_secs(5));
        assert_eq!(l1_lifetime(set, false, &routes), Duration::from_secs(5));
        assert_eq!(l1_lifetime(set, true, &routes), Duration::from_secs(5));
    }
}
