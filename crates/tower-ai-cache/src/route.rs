//! Which requests are cached, and for how long: [`Route`]s.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::error::ConfigError;
use crate::tag::{CacheTag, TagId};

/// Requests the cache handles, with their own TTL and rules.
///
/// A route matches a method and a path: an exact path, or a prefix written
/// with a trailing `*` (`/v1/content/*`). Routes are tried in the order they
/// were added; a request no route matches passes through untouched (no
/// `Cache-Status`). With no route configured, every `GET` and `POST` is a
/// candidate.
///
/// ```
/// use std::time::Duration;
/// use tower_ai_cache::{CacheLayer, Route};
///
/// let layer = CacheLayer::builder()
///     .route(Route::post("/v1/chat/completions").name("chat").ttl(Duration::from_secs(3600)))
///     .route(Route::get("/v1/content/*").name("content").ttl(Duration::from_secs(300)))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Route {
    name: Option<Arc<str>>,
    methods: Vec<Method>,
    path: PathMatch,
    ttl: Option<Duration>,
    stale_if_error: Option<Duration>,
    public: bool,
    deterministic_only: bool,
    store_length: bool,
    #[cfg(feature = "semantic")]
    semantic: bool,
    #[cfg(feature = "semantic")]
    similarity: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl PathMatch {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some("") => Self::Any,
            Some(prefix) => Self::Prefix(prefix.into()),
            None => Self::Exact(pattern.into()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => path == &**p,
            Self::Prefix(p) => path.starts_with(&**p),
        }
    }
}

impl Route {
    fn new(methods: Vec<Method>, pattern: &str) -> Self {
        Self {
            name: None,
            methods,
            path: PathMatch::parse(pattern),
            ttl: None,
            stale_if_error: None,
            public: false,
            deterministic_only: false,
            store_length: true,
            #[cfg(feature = "semantic")]
            semantic: false,
            #[cfg(feature = "semantic")]
            similarity: None,
        }
    }

    /// `POST` requests to `pattern` (an exact path, or a prefix ending in
    /// `*`).
    pub fn post(pattern: &str) -> Self {
        Self::new(vec![Method::POST], pattern)
    }

    /// `GET` requests to `pattern`.
    pub fn get(pattern: &str) -> Self {
        Self::new(vec![Method::GET], pattern)
    }

    /// `GET` and `POST` requests to `pattern`.
    pub fn any(pattern: &str) -> Self {
        Self::new(vec![Method::GET, Method::POST], pattern)
    }

    /// Adds a method (e.g. for gRPC, `POST` is already there).
    pub fn method(mut self, method: Method) -> Self {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self
    }

    /// Names the route in metrics and in its [`CacheTag::route`] (default:
    /// the pattern).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long answers stay fresh (default: the layer's TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long after expiry an answer may still be served when the upstream
    /// fails (RFC 5861 `stale-if-error`; default: the layer's).
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.stale_if_error = Some(grace);
        self
    }

    /// Shares answers across every caller of this route. Only for answers
    /// that hold no tenant's data.
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Caches only requests that ask for a deterministic answer: a JSON body
    /// with `temperature` 0 or a `seed`.
    pub fn deterministic_only(mut self) -> Self {
        self.deterministic_only = true;
        self
    }

    /// Whether an answer cut off at the request's own length bound
    /// (`finish_reason: "length"` on a request with `max_tokens`) is stored
    /// (default: yes, since `max_tokens` is part of the key, that answer is
    /// exactly what the same request gets again). An answer cut off with no
    /// bound in the request is never stored.
    pub fn store_length(mut self, store: bool) -> Self {
        self.store_length = store;
        self
    }

    /// Answers a chat request whose last user turn says the same as a
    /// stored one's in other words (feature `semantic`; needs
    /// [`CacheBuilder::semantic`](crate::CacheBuilder::semantic)); see
    /// [`SemanticCache`](crate::SemanticCache).
    #[cfg(feature = "semantic")]
    pub fn semantic(mut self) -> Self {
        self.semantic = true;
        self
    }

    /// [`semantic`](Self::semantic), answering from a cosine similarity of
    /// `similarity` up (instead of the cache's).
    #[cfg(feature = "semantic")]
    pub fn similarity(mut self, similarity: f32) -> Self {
        self.semantic = true;
        self.similarity = Some(similarity);
        self
    }

    pub(crate) fn resolve(self, defaults: &RouteDefaults) -> Result<RouteRule, ConfigError> {
        let name: Arc<str> = match self.name {
            Some(name) => name,
            None => match &self.path {
                PathMatch::Any => "default".into(),
                PathMatch::Exact(p) => Arc::from(&**p),
                PathMatch::Prefix(p) => format!("{p}*").into(),
            },
        };
        if self.methods.is_empty() {
            return Err(ConfigError::RouteWithoutMethod {
                route: name.to_string(),
            });
        }
        let ttl = self.ttl.unwrap_or(defaults.ttl);
        if ttl.is_zero() {
            return Err(ConfigError::ZeroRouteTtl {
                route: name.to_string(),
            });
        }
        Ok(RouteRule {
            tag: CacheTag::route(&name).id(),
            name,
            methods: self.methods,
            path: self.path,
            ttl,
            grace: self.stale_if_error.unwrap_or(defaults.stale_if_error),
            public: self.public || defaults.public,
            deterministic_only: self.deterministic_only,
            store_length: self.store_length,
            #[cfg(feature = "semantic")]
            semantic: self.semantic,
            #[cfg(feature = "semantic")]
            similarity: self.similarity,
        })
    }
}

/// The layer-wide defaults a route falls back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteDefaults {
    pub(crate) ttl: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) public: bool,
}

/// A route, resolved.
#[derive(Debug, Clone)]
pub(crate) struct RouteRule {
    pub(crate) name: Arc<str>,
    pub(crate) methods: Vec<Method>,
    pub(crate) path: PathMatch,
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) public: bool,
    pub(crate) deterministic_only: bool,
    pub(crate) store_length: bool,
    pub(crate) tag: TagId,
    #[cfg(feature = "semantic")]
    pub(crate) semantic: bool,
    #[cfg(feature = "semantic")]
    pub(crate) similarity: Option<f32>,
}

impl RouteRule {
    pub(crate) fn matches(&self, method: &Method, path: &str) -> bool {
        self.methods.iter().any(|m| m == method) && self.path.matches(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(PathMatch::parse("/a/*").matches("/a/b"));
        assert!(!PathMatch::parse("/a/*").matches("/b"));
        assert!(PathMatch::parse("/a").matches("/a"));
        assert!(!PathMatch::parse("/a").matches("/a/"));
        assert!(PathMatch::parse("*").matches("/anything"));
    }
}
