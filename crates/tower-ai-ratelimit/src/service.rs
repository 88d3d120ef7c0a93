use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_ai_core::key::{ClientKey, KeyExtractor, RequestHead};
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::body::RateLimitBody;
use crate::config::{DefaultKey, MissingKey, Shared};
use crate::cost::TokenEstimate;
use crate::future::ResponseFuture;
use crate::policy::Unit;
use crate::resolver::PolicySet;
use crate::respond::{Applied, longest_wait, refuse, wrap};
use crate::store::{Charge, Verdict};

/// Limits the rate of requests to the inner service. Built by
/// [`RateLimitLayer`](crate::RateLimitLayer).
pub struct RateLimit<S, K = DefaultKey> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S, K> RateLimit<S, K> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K>>) -> Self {
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

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for RateLimit<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A request's costs: in requests and, for token policies, in tokens.
#[derive(Clone, Copy)]
struct Costs {
    requests: u64,
    tokens: u64,
}

fn charge(c: &crate::resolver::Compiled, costs: Costs) -> Charge<'_> {
    Charge {
        slot: c.slot,
        name: c.policy.name(),
        spec: c.spec,
        cost: match c.policy.unit() {
            Unit::Requests => costs.requests,
            Unit::Tokens => costs.tokens,
        },
    }
}

fn charges(set: &PolicySet, costs: Costs) -> Vec<Charge<'_>> {
    set.iter().map(|c| charge(c, costs)).collect()
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: KeyExtractor,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        let head = RequestHead::of(&req);
        let Some(set) = shared.resolver.resolve(head) else {
            return ResponseFuture::call(self.inner.call(req), None);
        };
        let key = match shared.key.extract_head(head) {
            Some(key) => key,
            None => match shared.missing_key {
                MissingKey::Shared => ClientKey::digest("anonymous", ""),
                MissingKey::Allow => return ResponseFuture::call(self.inner.call(req), None),
                MissingKey::Refuse(status) => {
                    metrics::counter!("tower_ai_ratelimit_requests_total", "outcome" => "no_key")
                        .increment(1);
                    return ResponseFuture::ready(wrap(
                        Refusal::new(status)
                            .detail("the request does not say who is calling (no API key)")
                            .for_request(&req),
                    ));
                }
            },
        };
        let costs = Costs {
            requests: shared.cost.as_ref().map_or(1, |f| f(head)),
            tokens: req
                .extensions()
                .get::<TokenEstimate>()
                .map_or(shared.default_tokens, |e| e.0),
        };
        let set = set.clone();

        let local = match set.as_ref() {
            [one] => shared.backend.check_local(&key, &[charge(one, costs)]),
            _ => shared.backend.check_local(&key, &charges(&set, costs)),
        };
        if let Some(verdict) = local {
            if verdict.allowed() {
                metrics::counter!("tower_ai_ratelimit_requests_total", "outcome" => "allowed")
                    .increment(1);
                let applied = applied(shared, set, verdict, key, costs);
                return ResponseFuture::call(self.inner.call(req), Some(applied));
            }
            let wait = longest_wait(&verdict);
            if shared.throttle.is_none_or(|max| wait > max) {
                return ResponseFuture::ready(refuse(&req, &set, &verdict, shared, &key));
            }
        }

        // The slow path: a round trip to Redis, or a wait for capacity.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::slow(Box::pin(async move {
            let mut verdict = shared.backend.check(&key, &charges(&set, costs)).await;
            if !verdict.allowed() && !verdict.unavailable() {
                let wait = longest_wait(&verdict);
                if shared.throttle.is_some_and(|max| wait <= max) {
                    metrics::counter!("tower_ai_ratelimit_requests_total", "outcome" => "throttled")
                        .increment(1);
                    tokio::time::sleep(wait).await;
                    verdict = shared.backend.check(&key, &charges(&set, costs)).await;
                }
            }
            if verdict.unavailable() {
                metrics::counter!("tower_ai_ratelimit_requests_total", "outcome" => "unavailable")
                    .increment(1);
                return Ok(wrap(
                    Refusal::service_unavailable()
                        .detail("the rate limit store is unavailable")
                        .retry_after(Duration::from_secs(1))
                        .for_request(&req),
                ));
            }
            if !verdict.allowed() {
                return Ok(refuse(&req, &set, &verdict, &shared, &key));
            }
            metrics::counter!("tower_ai_ratelimit_requests_total", "outcome" => "allowed")
                .increment(1);
            let applied = applied(&shared, set, verdict, key, costs);
            let res = inner.call(req).await?;
            Ok((*applied).finish(res))
        }))
    }
}

fn applied<K>(
    shared: &Shared<K>,
    set: PolicySet,
    verdict: Verdict,
    key: ClientKey,
    costs: Costs,
) -> Box<Applied> {
    let reconcile = set
        .iter()
        .any(|c| c.policy.unit() == Unit::Tokens)
        .then(|| {
            (
                shared.backend.clone(),
                key,
                costs.tokens,
                shared.usage_body_limit,
            )
        });
    Box::new(Applied {
        set,
        verdict,
        style: shared.headers,
        reconcile,
    })
}
