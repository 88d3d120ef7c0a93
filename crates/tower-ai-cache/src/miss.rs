//! A cacheable request after `call`: its body read and keyed, then L1, L2
//! (feature `redis`), the flight of identical requests (lead or follow, in
//! this process and across replicas), and the upstream, whose answer is
//! recorded on its way to the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use tower_ai_core::body::read_limited;
use tower_ai_core::llm::SharedAnswer;
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::body::{BoxError, CacheBody, Recorder, RecordingParts};
use crate::config::Shared;
use crate::directives::{Outcome, RequestDirectives, Status, secs};
use crate::entry::{Entry, Freshness, Head, now_ms};
use crate::flight::{End, Join, LeadGuard, Source, Wait};
use crate::future::BoxFuture;
use crate::judge::storable;
use crate::key::{BodyFacts, CacheKey, KeyScope};
use crate::respond::{self, FromCache, answer, hit, live};
use crate::store::memory::Lookup;
use crate::tag::TagId;

/// What `call` found for a request without a body: its key, and what L1
/// held for it (not a usable hit), so that neither is made twice.
pub(crate) struct Keyed {
    pub(crate) key: CacheKey,
    pub(crate) facts: BodyFacts,
    pub(crate) l1: Lookup,
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
    /// The request, to send on: its head moves out (nothing reads it
    /// after the call), the body's bytes stay.
    fn take_request<B: From<Bytes>>(&mut self) -> Request<B> {
        let parts = std::mem::replace(&mut self.parts, Request::new(()).into_parts().0);
        Request::from_parts(parts, B::from(self.bytes.clone()))
    }

    fn status(&self, outcome: Outcome) -> Status {
        let mut s = Status::new(outcome);
        if self.shared.expose_key {
            s.key = Some(self.key);
        }
        s
    }

    fn label(&self) -> metrics::SharedString {
        self.shared.route_label(self.route)
    }

    fn rule(&self) -> &crate::route::RouteRule {
        &self.shared.routes[self.route]
    }

    /// The entry's tags: its route, its tenant and its model (made only
    /// when an answer is recorded).
    fn tags(&self) -> Vec<TagId> {
        let mut tags = Vec::with_capacity(3);
        tags.push(self.rule().tag);
        tags.push(TagId::scope(&self.scope));
        if let Some(model) = &self.model {
            tags.push(TagId::model(model));
        }
        tags
    }
}

/// Reads the body (up to `max_request_body`), keys the request, answers a
/// fresh L1 hit, and hands the rest to [`resolve`].
pub(crate) async fn run<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    route: usize,
    inner: S,
    req: Request<ReqBody>,
    scope: KeyScope,
    directives: RequestDirectives,
    keyed: Option<Keyed>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Upstream<ReqBody, ResBody>,
    ReqBody: Body<Data = Bytes, Error: Into<BoxError>> + From<Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let bytes = match read_limited(body, shared.max_request_body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let head = Request::from_parts(parts, ());
            return Ok(Refusal::from(e)
                .for_request::<ResBody, _>(&head)
                .map(CacheBody::from_response_body));
        }
    };
    let (key, facts, looked) = match keyed {
        Some(Keyed { key, facts, l1 }) => (key, facts, Some(l1)),
        None => shared.key_and_lookup(&parts, &scope, &bytes),
    };
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
    let first = if bypassed || directives.no_cache {
        None
    } else {
        match looked {
            Some(found) => Some(found),
            None => match ctx.shared.l1.get(&ctx.key) {
                Lookup::Fresh(entry, left) if directives.accepts(&entry) => {
                    return Ok(hit(&ctx.shared, route, ctx.key, &entry, left, "l1"));
                }
                found => Some(found),
            },
        }
    };
    let rest: BoxFuture<_> = Box::pin(resolve(ctx, inner, bypassed, first));
    rest.await
}

/// What the miss pipeline needs of the inner service: the instance polled
/// ready is moved into the boxed future, and a clone stays behind.
pub(crate) trait Upstream<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Upstream<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

/// Everything after the first L1 lookup (`first`, what it found, if it was
/// made): bypasses, flights, L2, the upstream.
async fn resolve<S, ReqBody, ResBody>(
    mut ctx: Ctx,
    mut inner: S,
    bypassed: bool,
    mut first: Option<Lookup>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Upstream<ReqBody, ResBody>,
    ReqBody: Body<Data = Bytes, Error: Into<BoxError>> + From<Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let directives = ctx.directives;
    let route = ctx.route;
    // Made once the exact key has missed everywhere (its embedding and
    // its digest are work an exact hit never needs).
    #[cfg(feature = "semantic")]
    let mut probe: Semantic = None;
    #[cfg(not(feature = "semantic"))]
    let probe = Semantic;
    if bypassed {
        metrics::counter!("tower_ai_cache_bypasses_total", "route" => ctx.label(), "reason" => "nondeterministic")
            .increment(1);
        let mut status = ctx.status(Outcome::Bypass);
        status.detail = Some("nondeterministic");
        return forward(&mut ctx, &mut inner, status, None).await;
    }
    if directives.no_cache {
        // Refresh: no lookup, no collapsing, but the answer is stored.
        metrics::counter!("tower_ai_cache_bypasses_total", "route" => ctx.label(), "reason" => "no_cache")
            .increment(1);
        let guard = ctx.shared.flights.detached();
        let lock = unlocked(&ctx);
        #[cfg(feature = "semantic")]
        let probe = probe_of(&ctx);
        return lead(&mut ctx, inner, guard, lock, Outcome::Request, None, probe).await;
    }

    let mut stale: Option<Arc<Entry>> = None;
    let mut retried = false;
    // The L2, semantic and follower steps are boxed: their futures take
    // kilobytes, and inline they would make this one (allocated and moved
    // on every miss) over 18 KiB instead of 2.5.
    loop {
        let found = first.take().unwrap_or_else(|| ctx.shared.l1.get(&ctx.key));
        match found {
            Lookup::Fresh(entry, left) if directives.accepts(&entry) => {
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
                match Box::pin(l2.get(&ctx.key)).await {
                    Ok(found) => match l2_found(&ctx, found, None, &mut stale) {
                        Some(res) => return Ok(res),
                        None => true,
                    },
                    // Redis is down or slow: lead alone, L1 only.
                    Err(_) => false,
                }
            }
        };

        // Then the same question in other words (once).
        #[cfg(feature = "semantic")]
        if !retried {
            probe = probe_of(&ctx);
            if let Some(probe) = probe.as_mut()
                && let Some((key, entry, left, similarity)) =
                    Box::pin(probe.lookup(&ctx.shared, |entry| directives.accepts(entry))).await
            {
                return Ok(semantic_hit(&ctx, key, &entry, left, similarity));
            }
        }

        let guard = match ctx.shared.flights.join(ctx.key) {
            Join::Follow(flight) => match Box::pin(follow(&ctx, &flight)).await {
                Followed::Answer(res) => return Ok(res),
                Followed::Proceed { retry } if retry && !retried => {
                    retried = true;
                    continue;
                }
                Followed::Proceed { .. } => return uncached(&mut ctx, &mut inner, stale).await,
            },
            Join::Lead(guard) => guard,
        };

        #[cfg(feature = "redis")]
        let (guard, lock) = match ctx.shared.l2.clone() {
            None => (guard, RemoteLock::None),
            Some(l2) if !l2_up => (guard, RemoteLock::Held(l2, None)),
            Some(l2) => match Box::pin(l2_lock(&ctx, &l2, guard, &mut stale)).await {
                L2Outcome::Answer(res) => return Ok(res),
                L2Outcome::Lead(guard, owner) => (guard, RemoteLock::Held(l2, owner)),
                L2Outcome::Follow(flight) => match Box::pin(follow(&ctx, &flight)).await {
                    Followed::Answer(res) => return Ok(res),
                    Followed::Proceed { retry } if retry && !retried => {
                        retried = true;
                        continue;
                    }
                    Followed::Proceed { .. } => {
                        return uncached(&mut ctx, &mut inner, stale).await;
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
        return lead(&mut ctx, inner, guard, lock, Outcome::Miss, stale, probe).await;
    }
}

/// What a request takes to its recording for the semantic index: nothing
/// without the feature.
#[cfg(not(feature = "semantic"))]
#[derive(Clone, Copy)]
struct Semantic;

#[cfg(feature = "semantic")]
type Semantic = Option<crate::probe::Probe>;

#[cfg(feature = "semantic")]
fn probe_of(ctx: &Ctx) -> Semantic {
    crate::probe::Probe::new(&ctx.shared, ctx.route, &ctx.parts, &ctx.scope, &ctx.bytes)
}

/// The answer stored for the same question in other words.
#[cfg(feature = "semantic")]
fn semantic_hit<B>(
    ctx: &Ctx,
    key: CacheKey,
    entry: &Entry,
    left: Duration,
    similarity: f32,
) -> Response<CacheBody<B>> {
    metrics::counter!("tower_ai_cache_hits_total", "route" => ctx.label(), "layer" => "semantic")
        .increment(1);
    if entry.tokens > 0 {
        metrics::counter!("tower_ai_cache_tokens_saved_total", "route" => ctx.label())
            .increment(entry.tokens);
    }
    tracing::debug!(route = %ctx.rule().name, key = %key.short(), similarity, "cache: semantic hit");
    let mut status = Status::new(Outcome::Hit);
    status.ttl = Some(secs(left));
    status.detail = Some("semantic");
    status.similarity = Some(similarity);
    if ctx.shared.expose_key {
        status.key = Some(key);
    }
    answer(&ctx.shared, key, entry, status)
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
            Followed::Answer(live(&ctx.shared, &head, flight.clone(), status))
        }
        Ok(Wait::Proceed { retry }) => Followed::Proceed { retry },
        Err(_) => {
            metrics::counter!("tower_ai_cache_follow_timeouts_total", "route" => ctx.label())
                .increment(1);
            Followed::Proceed { retry: false }
        }
    }
}

/// Forwards, records nothing; serves the stale entry if the upstream fails.
async fn uncached<S, ReqBody, ResBody>(
    ctx: &mut Ctx,
    inner: &mut S,
    stale: Option<Arc<Entry>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: From<Bytes>,
{
    metrics::counter!("tower_ai_cache_misses_total", "route" => ctx.label()).increment(1);
    let status = ctx.status(Outcome::Miss);
    forward(ctx, inner, status, stale).await
}

async fn forward<S, ReqBody, ResBody>(
    ctx: &mut Ctx,
    inner: &mut S,
    status: Status,
    stale: Option<Arc<Entry>>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: From<Bytes>,
{
    let result = inner.call(ctx.take_request()).await;
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
    let freshness = entry.lifetime.freshness(now_ms());
    if matches!(freshness, Freshness::Gone) {
        return None;
    }
    metrics::counter!("tower_ai_cache_stale_served_total", "route" => ctx.label()).increment(1);
    tracing::info!(route = %ctx.rule().name, key = %ctx.key.short(), upstream_status = ?failed_status, "cache: upstream failed; serving a stale answer");
    Some(respond::stale(
        &ctx.shared,
        ctx.key,
        &entry,
        freshness,
        failed_status,
    ))
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
    ctx: &mut Ctx,
    mut inner: S,
    guard: LeadGuard,
    lock: RemoteLock,
    outcome: Outcome,
    stale: Option<Arc<Entry>>,
    semantic: Semantic,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: From<Bytes>,
    ResBody: Body<Data = Bytes>,
{
    #[cfg(not(feature = "semantic"))]
    let Semantic = semantic;
    metrics::counter!("tower_ai_cache_misses_total", "route" => ctx.label()).increment(1);
    let result = inner.call(ctx.take_request()).await;
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
    let plan = match storable(&ctx.shared, ctx.rule(), ctx.bounded, &parts, &body) {
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
        answer: parts.extensions.get::<SharedAnswer>().cloned(),
        plan,
        #[cfg(feature = "redis")]
        remote: match lock {
            RemoteLock::Held(l2, owner) => Some(crate::body::Remote::new(l2, owner)),
            RemoteLock::None => None,
        },
        #[cfg(feature = "semantic")]
        semantic,
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
        Freshness::Fresh(left) if ctx.directives.accepts(&entry) => {
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
