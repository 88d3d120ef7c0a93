//! [`Cache`], the `Service`: finds a request's route, directives and scope,
//! answers a bodiless request's fresh L1 hit at once, and hands anything
//! else to the miss pipeline (`miss.rs`) in one boxed future.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{BoxError, CacheBody};
use crate::config::Shared;
use crate::directives::{Outcome, RequestDirectives, Status};
use crate::future::ResponseFuture;
use crate::miss::{Keyed, run};
use crate::respond::hit;
use crate::store::memory::Lookup;

/// Answers requests from the cache, and stores the upstream's answers.
/// Built by [`CacheLayer`](crate::CacheLayer).
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let Some(route) = shared.route(req.method(), req.uri().path()) else {
            return ResponseFuture::passthrough(self.inner.call(req), None);
        };
        let rule = &shared.routes[route];
        let directives = RequestDirectives::parse(req.headers());
        if directives.no_store {
            return self.bypass(req, route, Outcome::Request, "no_store");
        }
        let Some(scope) = shared.scope_of(route, &req) else {
            return self.bypass(req, route, Outcome::Bypass, "no_scope");
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| req.body().size_hint().exact());
        if declared.is_some_and(|n| n > shared.max_request_body as u64) {
            return self.bypass(req, route, Outcome::Bypass, "too_large");
        }

        // A request without a body (a `GET`) is looked up in L1 at once; on
        // a miss, its key and what L1 held go along.
        let mut keyed = None;
        if req.body().is_end_stream() && !directives.no_cache && !rule.deterministic_only {
            let (key, facts) = shared.key(req.method(), req.uri(), req.headers(), &scope, b"");
            let l1 = shared.l1.get(&key);
            if let Lookup::Fresh(entry, left) = &l1
                && directives.accepts(entry)
            {
                return ResponseFuture::ready(hit(shared, route, key, entry, *left, "l1"));
            }
            keyed = Some(Keyed { key, facts, l1 });
        }

        let span = tracing::debug_span!("cache", route = %rule.name, key = tracing::field::Empty);
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::slow(Box::pin(
            run(shared, route, inner, req, scope, directives, keyed).instrument(span),
        ))
    }
}

impl<S> Cache<S> {
    /// Forwards without a lookup and without storing.
    fn bypass<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        route: usize,
        outcome: Outcome,
        reason: &'static str,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let shared = &self.shared;
        metrics::counter!("tower_ai_cache_bypasses_total", "route" => shared.route_label(route), "reason" => reason)
            .increment(1);
        tracing::trace!(route = %shared.routes[route].name, reason, "cache: bypass");
        let mut status = Status::new(outcome);
        status.detail = Some(reason);
        let rendered = status.render(&shared.cache_name);
        ResponseFuture::passthrough(self.inner.call(req), Some(rendered))
    }
}
