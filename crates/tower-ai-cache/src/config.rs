//! The settings every part of the layer reads at run time: `Shared` (one
//! per layer, behind an `Arc`), how a request's scope and key are found, and
//! `RedisOptions`.
//!
//! Imports none of the layer's other roles (layer, service, future, body,
//! handle): they all read this file.

use std::sync::Arc;
#[cfg(feature = "redis")]
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method, Request, StatusCode, Uri};
use tower_ai_core::key::{ClientKey, KeyExtractor, RequestHead};

use crate::flight::Flights;
use crate::key::{Aliases, BodyFacts, CacheKey, IgnoreList, KeyInput, KeyScope};
use crate::route::RouteRule;
use crate::store::memory::L1;

/// Finds a request's scope (its caller).
pub(crate) type ScopeFn = Arc<dyn Fn(RequestHead<'_>) -> Option<ClientKey> + Send + Sync>;

/// A [`ScopeFn`] from a key extractor.
pub(crate) fn scope_fn<K: KeyExtractor>(scope: K) -> ScopeFn {
    Arc::new(move |head| scope.extract_head(head))
}

/// What every service (and handle) of one layer shares.
pub(crate) struct Shared {
    pub(crate) routes: Box<[RouteRule]>,
    pub(crate) scope: ScopeFn,
    pub(crate) ignore: IgnoreList,
    pub(crate) vary: Box<[HeaderName]>,
    pub(crate) cache_name: Box<str>,
    pub(crate) expose_key: bool,
    pub(crate) max_request_body: usize,
    pub(crate) max_body: usize,
    pub(crate) cacheable: fn(StatusCode) -> bool,
    pub(crate) follow_timeout: std::time::Duration,
    pub(crate) l1: L1,
    pub(crate) aliases: Aliases,
    pub(crate) flights: Arc<Flights>,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<Arc<crate::store::redis::L2>>,
}

impl Shared {
    /// The first route that matches, by index.
    pub(crate) fn route(&self, method: &Method, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(method, path))
    }

    /// A route's name as a metric label.
    pub(crate) fn route_label(&self, route: usize) -> metrics::SharedString {
        metrics::SharedString::from(self.routes[route].name.clone())
    }

    /// Whose answer a request on `route` gets: everyone's on a public route,
    /// else its caller's; `None` when no caller is found (not cached).
    pub(crate) fn scope_of<B>(&self, route: usize, req: &Request<B>) -> Option<KeyScope> {
        if self.routes[route].public {
            return Some(KeyScope::Public);
        }
        (self.scope)(RequestHead::of(req)).map(KeyScope::Caller)
    }

    /// A request's key and what its body says about itself: the one place
    /// a key is made from a request (the service, for a request with a body
    /// or without, and the handle's lookups). A repeated body costs one hash
    /// of its bytes (see `Aliases`).
    pub(crate) fn key(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        scope: &KeyScope,
        body: &[u8],
    ) -> (CacheKey, BodyFacts) {
        let input = KeyInput {
            method,
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
            vary: &self.vary,
            headers: Some(headers),
            scope,
            ignore: &self.ignore,
        };
        self.aliases.key(&input, body)
    }
}

/// How the cache uses Redis (feature `redis`).
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The key prefix (default `tower-ai`): keys are
    /// `{prefix}:cache:{digest}:…`.
    pub prefix: String,
    /// Timeouts and backoff of every Redis call (default: 50 ms timeout).
    pub degrade: tower_ai_core::redis::DegradeConfig,
    /// How long a leader's lock lives without renewal (default 30 s); a
    /// streamed answer renews it with each chunk.
    pub lock_ttl: Duration,
    /// How long a finished recording stays readable (default 10 s).
    pub stream_keep: Duration,
    /// How long one blocking read of a recording waits (default 1 s).
    pub block: Duration,
    /// Connections for blocking reads (default 8): how many answers in
    /// flight on other replicas this one can follow at once without
    /// polling.
    pub blocking_connections: usize,
}

#[cfg(feature = "redis")]
impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "tower-ai".to_owned(),
            degrade: tower_ai_core::redis::DegradeConfig::default(),
            lock_ttl: Duration::from_secs(30),
            stream_keep: Duration::from_secs(10),
            block: Duration::from_secs(1),
            blocking_connections: 8,
        }
    }
}

#[cfg(feature = "redis")]
impl RedisOptions {
    /// Sets the key prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the Redis call timeouts and backoff.
    #[must_use]
    pub fn degrade(mut self, degrade: tower_ai_core::redis::DegradeConfig) -> Self {
        self.degrade = degrade;
        self
    }

    /// Sets the lock's lifetime.
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// Sets the number of blocking-read connections.
    #[must_use]
    pub fn blocking_connections(mut self, n: usize) -> Self {
        self.blocking_connections = n;
        self
    }

    /// The L2 store's configuration.
    pub(crate) fn into_l2(self) -> crate::store::redis::L2Config {
        crate::store::redis::L2Config {
            prefix: self.prefix,
            degrade: self.degrade,
            lock_ttl: self.lock_ttl,
            stream_keep: self.stream_keep,
            block: self.block,
            blocking_connections: self.blocking_connections,
        }
    }
}
