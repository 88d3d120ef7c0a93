use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use tower_ai_core::body::ReadError;
use tower_ai_core::key::RequestHead;
use tower_ai_core::reject::Refusal;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{BoxError, CacheBody, Plan, Recorder, RecordingParts};
use crate::directives::{
    Outcome, RequestDirectives, ResponseDirectives, Status, secs, set_age, stale_ttl, upstream_age,
};
use crate::entry::{Entry, Freshness, Head, now_ms};
use crate::flight::{End, Join, LeadGuard, Source, Wait};
use crate::future::ResponseFuture;
use crate::handle::FromCache;
use crate::key::{CacheKey, KeyInput, KeyScope};
use crate::layer::Shared;
use crate::store::memory::Lookup;
use crate::tag::{CacheTag, TagId};

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
        let scope = if rule.public {
            KeyScope::Public
        } else {
            match (shared.scope)(RequestHead::of(&req)) {
                Some(key) => KeyScope::Caller(key),
                None => return self.bypass(req, route, Outcome::Bypass, "no_scope"),
            }
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

        // A request without a body (a `GET`) is looked up in L1 at once.
        if req.body().is_end_stream() && !directives.no_cache && !rule.deterministic_only {
            let (key, _) = key_input(shared, &req, &scope).digest(b"");
            if let Lookup::Fresh(entry, left) = shared.l1.get(&key)
                && age_allowed(&entry, directives)
            {
                return ResponseFuture::ready(hit(shared, route, key, &entry, left, "l1"));
            }
        }

        let span = tracing::debug_span!("cache", route = %rule.name, key = tracing::field::Empty);
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::slow(Box::pin(
            run(shared, route, inner, req, scope, directives).instrument(span),
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
        metrics::counter!("tower_ai_cache_bypasses_total", "route" => route_label(shared, route), "reason" => reason)
            .increment(1);
        tracing::trace!(route = %shared.routes[route].name, reason, "cache: bypass");
        let mut status = Status::new(outcome);
        status.detail = Some(reason);
        let value = HeaderValue::from_str(&status.render(&shared.cache_name)).ok();
        ResponseFuture::passthrough(self.inner.call(req), value)
    }
}

pub(crate) fn route_label(shared: &Shared, route: usize) -> metrics::SharedString {
    metrics::SharedString::from(shared.routes[route].name.clone())
}

fn key_input<'a, B>(shared: &'a Shared, req: &'a Request<B>, scope: &'a KeyScope) -> KeyInput<'a> {
    KeyInput {
        method: req.method(),
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        vary: &shared.vary,
        headers: Some(req.headers()),
        scope,
        ignore: &shared.ignore,
    }
}

/// Whether a request's `max-age` accepts the entry's age.
fn age_allowed(entry: &Entry, directives: RequestDirectives) -> bool {
    directives
        .max_age
        .is_none_or(|max| entry.lifetime.age(now_ms()).as_secs() <= max)
}

/// A fresh hit.
pub(crate) fn hit<B>(
    shared: &Shared,
    route: usize,
    key: CacheKey,
    entry: &Entry,
    left: Duration,
    layer: &'static str,
) -> Response<CacheBody<B>> {
    metrics::counter!("tower_ai_cache_hits_total", "route" => route_label(shared, route), "layer" => layer)
        .increment(1);
    if entry.tokens > 0 {
        metrics::counter!("tower_ai_cache_tokens_saved_total", "route" => route_label(shared, route))
            .increment(entry.tokens);
    }
    tracing::debug!(route = %shared.routes[route].name, key = %key.short(), layer, "cache: hit");
    let mut status = Status::new(Outcome::Hit);
    status.ttl = Some(secs(left));
    answer(shared, key, entry, status)
}

/// A response made from an entry, with `Cache-Status` and `Age`.
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

/// What one cacheable request carries through its handling.
struct Ctx {
    shared: Arc<Shared>,
    route: usize,
    key: CacheKey,
    scope: KeyScope,
    model: Option<Arc<str>>,
    /// The keyed body bounds the answer's length (`max_tokens`).
    bounded: bool,
    parts: Parts,
    bytes: Bytes,
    directives: RequestDirectives,
}

impl Ctx {
    fn request<B: From<Bytes>>(&self) -> Request<B> {
        Request::from_parts(self.parts.clone(), B::from(self.bytes.clone()))
    }

    fn status(&self, outcome: Outcome) -> Status {
        let mut s = Status::new(outcome);
        if self.shared.expose_key {
            s.key = Some(self.key);
        }
        s
    }

    fn label(&self) -> metrics::SharedString {
        route_label(&self.shared, self.route)
    }

    fn rule(&self) -> &crate::route::RouteRule {
        &self.shared.routes[self.route]
    }

    /// The entry's tags: its route, its tenant and its model (made only
    /// when an answer is recorded).
    fn tags(&self) -> Vec<TagId> {
        let mut tags = Vec::with_capacity(3);
        tags.push(self.rule().tag);
        tags.push(CacheTag::scope(&self.scope).id());
        if let Some(model) = &self.model {
            tags.push(CacheTag::model(model).id());
        }
        tags
    }
}

/// Reads a request body up to `limit` bytes.
async fn run<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    route: usize,
    inner: S,
    req: Request<ReqBody>,
    scope: KeyScope,
    directives: RequestDirectives,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let bytes = match tower_ai_core::body::read_limited(body, shared.max_request_body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let head = Request::from_parts(parts, ());
            let refusal = match e {
                ReadError::TooLarge { limit } => Refusal::payload_too_large()
                    .detail(format!("the request body is larger than {limit} bytes")),
                ReadError::Failed(e) => Refusal::bad_request()
                    .detail(format!("the request body could not be read: {e}")),
                e => Refusal::bad_request().detail(e.to_string()),
            };
            return Ok(refusal
                .for_request::<ResBody, _>(&head)
                .map(CacheBody::from_response_body));
        }
    };
    let input = KeyInput {
        method: &parts.method,
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        vary: &shared.vary,
        headers: Some(&parts.headers),
        scope: &scope,
        ignore: &shared.ignore,
    };
    let (key, facts) = shared.aliases.key(&input, &bytes);
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("key", tracing::field::display(key.short()));
    }
    let ctx = Ctx {
        shared,
        route,
        key,
        scope,
        model: facts.model,
        bounded: facts.bounded,
        parts,
        bytes,
        directives,
    };
    let bypassed = ctx.rule().deterministic_only && !facts.deterministic;
    // A fresh L1 hit answers here; the rest is a future of its own, so that
    // this one stays small (it is boxed and moved on every request).
    if !bypassed
        && !directives.no_cache
        && let Lookup::Fresh(entry, left) = ctx.shared.l1.get(&ctx.key)
        && age_allowed(&entry, directives)
    {
        return Ok(hit(&ctx.shared, route, ctx.key, &entry, left, "l1"));
    }
    let rest: crate::future::BoxFuture<_> = Box::pin(resolve(ctx, inner, bypassed));
    rest.await
}

/// Everything after the first L1 lookup: bypasses, flights, L2, the
/// upstream.
async fn resolve<S, ReqBody, ResBody>(
    ctx: Ctx,
    mut inner: S,
    bypassed: bool,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let directives = ctx.directives;
    let route = ctx.route;
    if bypassed {
        metrics::counter!("tower_ai_cache_bypasses_total", "route" => ctx.label(), "reason" => "nondeterministic")
            .increment(1);
        let mut status = ctx.status(Outcome::Bypass);
        status.detail = Some("nondeterministic");
        return forward(&ctx, &mut inner, status, None).await;
    }
    if directives.no_cache {
        // Refresh: no lookup, no collapsing, but the answer is stored.
        metrics::counter!("tower_ai_cache_bypasses_total", "route" => ctx.label(), "reason" => "no_cache")
            .increment(1);
        let guard = ctx.shared.flights.detached();
        let lock = unlocked(&ctx);
        return lead(&ctx, inner, guard, lock, Outcome::Request, None).await;
    }

    let mut stale: Option<Arc<Entry>> = None;
    let mut retried = false;
    loop {
        match ctx.shared.l1.get(&ctx.key) {
            Lookup::Fresh(entry, left) if age_allowed(&entry, directives) => {
                return Ok(hit(&ctx.shared, route, ctx.key, &entry, left, "l1"));
            }
            Lookup::Fresh(entry, _) | Lookup::Stale(entry) => stale = Some(entry),
            Lookup::Miss => {}
        }
        // L2 first (one `GET`, no flight to join for a hit).
        #[cfg(feature = "redis")]
        let l2_up = match &ctx.shared.l2 {
            None => false,
            Some(l2) => {
                if l2.recovered() {
                    tracing::info!(
                        "cache: Redis is back; flushing L1 (invalidations may have been missed)"
                    );
                    metrics::counter!("tower_ai_cache_l1_flushes_total", "reason" => "recovered")
                        .increment(1);
                    ctx.shared.l1.clear();
                }
                match l2.get(&ctx.key).await {
                    Ok(found) => match l2_found(&ctx, found, None, &mut stale) {
                        Some(res) => return Ok(res),
                        None => true,
                    },
                    // Redis is down or slow: lead alone, L1 only.
                    Err(_) => false,
                }
            }
        };

        let guard = match ctx.shared.flights.join(ctx.key) {
            Join::Follow(flight) => match follow(&ctx, &flight).await {
                Followed::Answer(res) => return Ok(res),
                Followed::Proceed { retry } if retry && !retried => {
                    retried = true;
                    continue;
                }
                Followed::Proceed { .. } => return uncached(&ctx, &mut inner, stale).await,
            },
            Join::Lead(guard) => guard,
        };

        #[cfg(feature = "redis")]
        let (guard, lock) = match ctx.shared.l2.clone() {
            None => (guard, RemoteLock::None),
            Some(l2) if !l2_up => (guard, RemoteLock::Held(l2, None)),
            Some(l2) => match l2_lock(&ctx, &l2, guard, &mut stale).await {
                L2Outcome::Answer(res) => return Ok(res),
                L2Outcome::Lead(guard, owner) => (guard, RemoteLock::Held(l2, owner)),
                L2Outcome::Follow(flight) => match follow(&ctx, &flight).await {
                    Followed::Answer(res) => return Ok(res),
                    Followed::Proceed { retry } if retry && !retried => {
                        retried = true;
                        continue;
                    }
                    Followed::Proceed { .. } => {
                        return uncached(&ctx, &mut inner, stale).await;
                    }
                },
            },
        };
        #[cfg(not(feature = "redis"))]
        let lock = RemoteLock::None;

        if directives.only_if_cached {
            release(lock, ctx.key, crate::store::END_UNSTORED);
            guard.finish(End::Abandoned { retry: true });
            return Ok(Refusal::gateway_timeout()
                .detail("the answer is not in the cache (only-if-cached)")
                .for_request::<ResBody, _>(&Request::from_parts(ctx.parts.clone(), ()))
                .map(CacheBody::from_response_body));
        }
        return lead(&ctx, inner, guard, lock, Outcome::Miss, stale).await;
    }
}

/// A refresh stores its answer in L2 too, without taking the lock.
fn unlocked(ctx: &Ctx) -> RemoteLock {
    #[cfg(feature = "redis")]
    if let Some(l2) = ctx.shared.l2.clone() {
        return RemoteLock::Held(l2, None);
    }
    let _ = ctx;
    RemoteLock::None
}

/// The answer a follower got from its flight.
#[allow(clippy::large_enum_variant)] // short-lived, on the stack of one future
enum Followed<B> {
    Answer(Response<CacheBody<B>>),
    Proceed { retry: bool },
}

/// Waits for the flight's answer and answers with it.
async fn follow<B>(ctx: &Ctx, flight: &Arc<crate::flight::Flight>) -> Followed<B> {
    let wait = tokio::time::timeout(ctx.shared.follow_timeout, flight.wait()).await;
    let collapsed = |ctx: &Ctx| {
        metrics::counter!("tower_ai_cache_collapsed_total", "route" => ctx.label()).increment(1);
    };
    match wait {
        Ok(Wait::Entry(entry, Source::Cache)) => {
            let left = match entry.lifetime.freshness(now_ms()) {
                Freshness::Fresh(left) => left,
                _ => Duration::ZERO,
            };
            Followed::Answer(hit(&ctx.shared, ctx.route, ctx.key, &entry, left, "flight"))
        }
        Ok(Wait::Entry(entry, Source::Upstream)) => {
            collapsed(ctx);
            let mut status = ctx.status(Outcome::Miss);
            status.collapsed = true;
            Followed::Answer(answer(&ctx.shared, ctx.key, &entry, status))
        }
        Ok(Wait::Stream(head)) => {
            collapsed(ctx);
            let mut status = ctx.status(Outcome::Miss);
            status.collapsed = true;
            Followed::Answer(live(ctx, &head, flight.clone(), status))
        }
        Ok(Wait::Proceed { retry }) => Followed::Proceed { retry },
        Err(_) => {
            metrics::counter!("tower_ai_cache_follow_timeouts_total", "route" => ctx.label())
                .increment(1);
            Followed::Proceed { retry: false }
        }
    }
}

/// A live copy of a streamed answer in flight.
fn live<B>(
    ctx: &Ctx,
    head: &Head,
    flight: Arc<crate::flight::Flight>,
    status: Status,
) -> Response<CacheBody<B>> {
    let mut res = Response::new(CacheBody::live(flight));
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers.clone();
    status.apply(res.headers_mut(), &ctx.shared.cache_name);
    res.extensions_mut().insert(FromCache::new(false));
    res
}

/// Forwards, records nothing; serves the stale entry if the upstream fails.
async fn uncached<S, ReqBody, ResBody>(
    ctx: &Ctx,
    inner: &mut S,
    stale: Option<Arc<Entry>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: From<Bytes>,
{
    metrics::counter!("tower_ai_cache_misses_total", "route" => ctx.label()).increment(1);
    forward(ctx, inner, ctx.status(Outcome::Miss), stale).await
}

async fn forward<S, ReqBody, ResBody>(
    ctx: &Ctx,
    inner: &mut S,
    status: Status,
    stale: Option<Arc<Entry>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: From<Bytes>,
{
    let result = inner.call(ctx.request()).await;
    if let Some(res) = stale_instead(ctx, &result, stale) {
        return Ok(res);
    }
    let mut res = result?;
    if res.extensions().get::<FromCache>().is_none() {
        status.apply(res.headers_mut(), &ctx.shared.cache_name);
    }
    Ok(res.map(CacheBody::inner))
}

/// RFC 5861 `stale-if-error`: when the upstream failed (an error, or a
/// `5xx`), the stale entry answers instead, if it is within its grace.
fn stale_instead<B, ResBody, E>(
    ctx: &Ctx,
    result: &Result<Response<ResBody>, E>,
    stale: Option<Arc<Entry>>,
) -> Option<Response<CacheBody<B>>> {
    let failed_status = match result {
        Ok(res) if res.status().is_server_error() => Some(res.status()),
        Ok(_) => return None,
        Err(_) => None,
    };
    let entry = stale?;
    if matches!(entry.lifetime.freshness(now_ms()), Freshness::Gone) {
        return None;
    }
    metrics::counter!("tower_ai_cache_stale_served_total", "route" => ctx.label()).increment(1);
    tracing::info!(route = %ctx.rule().name, key = %ctx.key.short(), upstream_status = ?failed_status, "cache: upstream failed; serving a stale answer");
    let mut status = ctx.status(Outcome::Stale);
    status.fwd_status = failed_status;
    status.ttl = Some(match entry.lifetime.freshness(now_ms()) {
        Freshness::Fresh(left) => secs(left),
        Freshness::Stale(past) => stale_ttl(past),
        Freshness::Gone => 0,
    });
    Some(answer(&ctx.shared, ctx.key, &entry, status))
}

/// The Redis lock a leader holds, if any.
enum RemoteLock {
    None,
    /// Store in this L2; with the lock's token when this replica holds it.
    #[cfg(feature = "redis")]
    Held(Arc<crate::store::redis::L2>, Option<String>),
}

/// Calls the upstream for the flight and records its answer.
async fn lead<S, ReqBody, ResBody>(
    ctx: &Ctx,
    mut inner: S,
    guard: LeadGuard,
    lock: RemoteLock,
    outcome: Outcome,
    stale: Option<Arc<Entry>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: From<Bytes>,
    ResBody: Body<Data = Bytes>,
{
    metrics::counter!("tower_ai_cache_misses_total", "route" => ctx.label()).increment(1);
    let result = inner.call(ctx.request()).await;
    if let Some(res) = stale_instead(ctx, &result, stale) {
        release(lock, ctx.key, crate::store::END_UNSTORED);
        guard.finish(End::Abandoned { retry: false });
        return Ok(res);
    }
    let res = match result {
        Ok(res) => res,
        Err(e) => {
            release(lock, ctx.key, crate::store::END_ABORTED);
            guard.finish(End::Abandoned { retry: false });
            return Err(e);
        }
    };
    if res.extensions().get::<FromCache>().is_some() {
        // Answered by this cache below us (a breaker's stale fallback): not
        // a new answer to store.
        release(lock, ctx.key, crate::store::END_UNSTORED);
        guard.finish(End::Abandoned { retry: false });
        return Ok(res.map(CacheBody::inner));
    }
    let (mut parts, body) = res.into_parts();
    let mut status = ctx.status(outcome);
    let plan = match storable(ctx, &parts, &body) {
        Ok(plan) => plan,
        Err(reason) => {
            metrics::counter!("tower_ai_cache_not_stored_total", "route" => ctx.label(), "reason" => reason)
                .increment(1);
            tracing::debug!(route = %ctx.rule().name, key = %ctx.key.short(), reason, "cache: answer not storable");
            release(lock, ctx.key, crate::store::END_UNSTORED);
            guard.finish(End::Abandoned { retry: false });
            status.apply(&mut parts.headers, &ctx.shared.cache_name);
            return Ok(Response::from_parts(parts, CacheBody::inner(body)));
        }
    };
    let head = Arc::new(Head::storable(parts.status, &parts.headers));
    guard.flight().set_head(head.clone());
    // Whether it is stored is decided at the body's end (complete or not),
    // after this head has left: RFC 9211's `stored` can't be claimed here.
    status.ttl = Some(secs(plan.ttl));
    status.apply(&mut parts.headers, &ctx.shared.cache_name);
    let recorder = Recorder::new(RecordingParts {
        shared: ctx.shared.clone(),
        route: ctx.route,
        key: ctx.key,
        tags: ctx.tags(),
        head,
        guard,
        plan,
        #[cfg(feature = "redis")]
        remote: match lock {
            RemoteLock::Held(l2, owner) => Some(crate::body::Remote::new(l2, owner)),
            RemoteLock::None => None,
        },
    });
    if body.is_end_stream() {
        // An empty body is never polled: it ends here.
        recorder.complete();
        return Ok(Response::from_parts(parts, CacheBody::inner(body)));
    }
    Ok(Response::from_parts(
        parts,
        CacheBody::recording(body, recorder),
    ))
}

/// Gives up a Redis lock without a stored answer (off the request's path).
fn release(lock: RemoteLock, key: CacheKey, end: &'static str) {
    match lock {
        RemoteLock::None => {
            let _ = (key, end);
        }
        #[cfg(feature = "redis")]
        RemoteLock::Held(_, None) => {}
        #[cfg(feature = "redis")]
        RemoteLock::Held(l2, Some(owner)) => {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { l2.end(&key, &owner, end).await });
            }
        }
    }
}

/// Whether the answer may be stored, judged from its head, and for how long.
fn storable<B: Body>(
    ctx: &Ctx,
    parts: &http::response::Parts,
    body: &B,
) -> Result<Plan, &'static str> {
    let shared = &ctx.shared;
    let rule = ctx.rule();
    if !(shared.cacheable)(parts.status) {
        return Err("status");
    }
    let directives = ResponseDirectives::parse(&parts.headers);
    if directives.no_store {
        return Err("no_store");
    }
    if directives.private && rule.public {
        return Err("private");
    }
    if parts.headers.contains_key(header::SET_COOKIE) {
        return Err("set_cookie");
    }
    for vary in parts.headers.get_all(header::VARY) {
        let Ok(vary) = vary.to_str() else {
            return Err("vary");
        };
        for name in vary.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*"
                || !shared
                    .vary
                    .iter()
                    .any(|v| v.as_str().eq_ignore_ascii_case(name))
            {
                return Err("vary");
            }
        }
    }
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > shared.max_body as u64)
    {
        return Err("too_large");
    }
    if let Some(status) = parts.headers.get("grpc-status")
        && status != "0"
    {
        return Err("grpc_error");
    }
    let mut ttl = rule.ttl;
    if let Some(max_age) = directives.max_age {
        if max_age == 0 {
            return Err("max_age");
        }
        ttl = ttl.min(Duration::from_secs(max_age));
    }
    Ok(Plan {
        ttl,
        grace: rule.grace,
        age_at_store: upstream_age(&parts.headers),
        store_length: rule.store_length && ctx.bounded,
    })
}

#[cfg(feature = "redis")]
#[allow(clippy::large_enum_variant)] // short-lived, on the stack of one future
enum L2Outcome<B> {
    Answer(Response<CacheBody<B>>),
    Lead(LeadGuard, Option<String>),
    Follow(Arc<crate::flight::Flight>),
}

/// The leader's L2 step after a `GET` missed: the lock script, which reads
/// the value again. This replica leads, or follows the replica that holds
/// the lock.
#[cfg(feature = "redis")]
async fn l2_lock<B>(
    ctx: &Ctx,
    l2: &Arc<crate::store::redis::L2>,
    guard: LeadGuard,
    stale: &mut Option<Arc<Entry>>,
) -> L2Outcome<B> {
    let owner = l2.owner();
    let locked = match l2.lock(&ctx.key, &owner).await {
        Ok(locked) => locked,
        Err(_) => return L2Outcome::Lead(guard, None),
    };
    if let Some(res) = l2_found(ctx, locked.value, Some(&guard), stale) {
        if locked.acquired {
            release(
                RemoteLock::Held(l2.clone(), Some(owner)),
                ctx.key,
                crate::store::END_UNSTORED,
            );
        }
        guard.finish(End::Abandoned { retry: true });
        return L2Outcome::Answer(res);
    }
    if locked.acquired {
        return L2Outcome::Lead(guard, Some(owner));
    }
    // Another replica is calling the upstream: follow its recording.
    let flight = guard.flight().clone();
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return L2Outcome::Lead(guard, None);
    };
    handle.spawn(crate::remote::follow_remote(crate::remote::Following {
        l2: l2.clone(),
        l1: ctx.shared.l1.clone(),
        key: ctx.key,
        guard,
        ttl: ctx.rule().ttl,
        grace: ctx.rule().grace,
        tags: ctx.tags(),
        idle_timeout: ctx.shared.follow_timeout,
    }));
    L2Outcome::Follow(flight)
}

/// A value found in L2: a fresh one answers (and fills L1), a stale one is
/// kept for `stale-if-error`.
#[cfg(feature = "redis")]
fn l2_found<B>(
    ctx: &Ctx,
    found: Option<Entry>,
    guard: Option<&LeadGuard>,
    stale: &mut Option<Arc<Entry>>,
) -> Option<Response<CacheBody<B>>> {
    let entry = Arc::new(found?);
    match entry.lifetime.freshness(now_ms()) {
        Freshness::Fresh(left) if age_allowed(&entry, ctx.directives) => {
            ctx.shared.l1.insert(ctx.key, entry.clone());
            if let Some(guard) = guard {
                guard
                    .flight()
                    .end(End::Stored(entry.clone(), Source::Cache));
            }
            Some(hit(&ctx.shared, ctx.route, ctx.key, &entry, left, "l2"))
        }
        Freshness::Gone => None,
        _ => {
            *stale = Some(entry);
            None
        }
    }
}
