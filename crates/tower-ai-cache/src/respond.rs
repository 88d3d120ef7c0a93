//! The responses the cache makes itself: a fresh hit, a stored answer with
//! its `Cache-Status` and `Age`, a stale answer served because the upstream
//! failed, a live copy of an answer in flight; and [`FromCache`], the mark
//! each of them carries.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use crate::body::CacheBody;
use crate::config::Shared;
use crate::directives::{Outcome, Status, secs, set_age, stale_ttl};
use crate::entry::{Entry, Freshness, Head, now_ms};
use crate::flight::Flight;
use crate::key::CacheKey;

/// Marks a response the cache made (a stored answer, fresh or stale, or a
/// live copy of another request's answer), as a response extension.
///
/// The cache never stores a response that carries it, so a stale answer a
/// circuit breaker's fallback served below the cache isn't stored again as
/// new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromCache {
    fresh: bool,
}

impl FromCache {
    /// A mark; `fresh` for a fresh stored answer. (Another cache below this
    /// one may mark its answers too, so that they aren't stored again.)
    pub const fn new(fresh: bool) -> Self {
        Self { fresh }
    }

    /// Whether it is a fresh stored answer (a `hit`).
    pub const fn is_fresh_hit(&self) -> bool {
        self.fresh
    }
}

/// A fresh hit from `layer` (`l1`, `l2`, `flight`), fresh for `left` more:
/// counted, logged, answered.
pub(crate) fn hit<B>(
    shared: &Shared,
    route: usize,
    key: CacheKey,
    entry: &Entry,
    left: Duration,
    layer: &'static str,
) -> Response<CacheBody<B>> {
    metrics::counter!("tower_ai_cache_hits_total", "route" => shared.route_label(route), "layer" => layer)
        .increment(1);
    if entry.tokens > 0 {
        metrics::counter!("tower_ai_cache_tokens_saved_total", "route" => shared.route_label(route))
            .increment(entry.tokens);
    }
    tracing::debug!(route = %shared.routes[route].name, key = %key.short(), layer, "cache: hit");
    let mut status = Status::new(Outcome::Hit);
    status.ttl = Some(secs(left));
    answer(shared, key, entry, status)
}

/// A stale entry answering for an upstream that failed (`fwd=stale`, with
/// the upstream's status when it answered one), as it stands at
/// `freshness`.
pub(crate) fn stale<B>(
    shared: &Shared,
    key: CacheKey,
    entry: &Entry,
    freshness: Freshness,
    upstream: Option<StatusCode>,
) -> Response<CacheBody<B>> {
    let mut status = Status::new(Outcome::Stale);
    status.fwd_status = upstream;
    status.ttl = Some(match freshness {
        Freshness::Fresh(left) => secs(left),
        Freshness::Stale(past) => stale_ttl(past),
        Freshness::Gone => 0,
    });
    answer(shared, key, entry, status)
}

/// A response made from an entry, with `Cache-Status` (plus the key when
/// the layer exposes it), `Age` and [`FromCache`].
pub(crate) fn answer<B>(
    shared: &Shared,
    key: CacheKey,
    entry: &Entry,
    mut status: Status,
) -> Response<CacheBody<B>> {
    let mut res = Response::new(CacheBody::stored(
        entry.body.clone(),
        entry.trailers.clone(),
    ));
    *res.status_mut() = entry.head.status;
    *res.headers_mut() = entry.head.headers.clone();
    if shared.expose_key {
        status.key = Some(key);
    }
    status.apply(res.headers_mut(), &shared.cache_name);
    set_age(res.headers_mut(), entry.lifetime.age(now_ms()));
    res.extensions_mut()
        .insert(FromCache::new(status.outcome == Outcome::Hit));
    res
}

/// A live copy of a streamed answer in flight, under its recorded head.
pub(crate) fn live<B>(
    shared: &Shared,
    head: &Head,
    flight: Arc<Flight>,
    status: Status,
) -> Response<CacheBody<B>> {
    let mut res = Response::new(CacheBody::live(flight));
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers.clone();
    status.apply(res.headers_mut(), &shared.cache_name);
    res.extensions_mut().insert(FromCache::new(false));
    res
}
