//! The settings every part of the layer reads at run time: `Shared` (one
//! per layer, behind an `Arc`), and how a request's scope and key are found.
//!
//! Imports none of the layer's other roles (layer, service, future, body,
//! handle): they all read this file.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Request, StatusCode, Uri};
use tower_ai_core::key::{ClientKey, KeyExtractor, RequestHead};

use crate::flight::Flights;
use crate::key::{Aliases, BodyFacts, CacheKey, IgnoreList, KeyInput, KeyScope};
use crate::route::RouteRule;
use crate::store::memory::{L1, Lookup};

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
    #[cfg(feature = "semantic")]
    pub(crate) semantic: Option<Arc<crate::semantic::SemanticCache>>,
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
        let input = self.key_input(method, uri, headers, scope);
        self.aliases.key(&input, body, |key| self.l1.contains(key))
    }

    /// [`key`](Self::key) for a request that is looked up next: what L1
    /// holds for the key comes along when keying already asked (a body
    /// seen for the first time), so that a miss looks once, not twice.
    pub(crate) fn key_and_lookup(
        &self,
        parts: &http::request::Parts,
        scope: &KeyScope,
        body: &[u8],
    ) -> (CacheKey, BodyFacts, Option<Lookup>) {
        let input = self.key_input(&parts.method, &parts.uri, &parts.headers, scope);
        let mut looked = None;
        let (key, facts) = self.aliases.key(&input, body, |key| {
            let found = self.l1.get(key);
            let stored = !matches!(found, Lookup::Miss);
            looked = Some(found);
            stored
        });
        (key, facts, looked)
    }

    fn key_input<'a>(
        &'a self,
        method: &'a Method,
        uri: &'a Uri,
        headers: &'a HeaderMap,
        scope: &'a KeyScope,
    ) -> KeyInput<'a> {
        KeyInput {
            method,
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
            vary: &self.vary,
            headers: Some(headers),
            scope,
            ignore: &self.ignore,
        }
    }
}
