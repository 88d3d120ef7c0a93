use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, HeaderName, Request, Response};
use tower_ai_core::body::ResponseBody;
use tower_ai_core::key::{ClientKey, KeyExtractor, RequestHead};
use tower_ai_core::llm::AnswerTap;
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::algorithm::Decision;
use crate::body::{RateLimitBody, Reconcile};
use crate::cost::TokenEstimate;
use crate::future::ResponseFuture;
use crate::headers::{self, IetfLimit, IetfPolicy, RateLimitInfo};
use crate::layer::{DefaultKey, HeaderStyle, MissingKey, Refused, Shared};
use crate::policy::Unit;
use crate::resolver::PolicySet;
use crate::store::{Backend, Charge, Verdict};

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

/// What an admitted request carries to its response.
pub(crate) struct Applied {
    set: PolicySet,
    verdict: Verdict,
    style: HeaderStyle,
    /// For token policies: what reconciliation needs.
    reconcile: Option<(Backend, ClientKey, u64, usize)>,
}

impl Applied {
    /// Adds the rate-limit fields to the response and wraps its body.
    pub(crate) fn finish<B>(self, res: Response<B>) -> Response<RateLimitBody<B>> {
        let Applied {
            set,
            verdict,
            style,
            reconcile,
        } = self;
        let (mut parts, body) = res.into_parts();
        write_headers(&mut parts.headers, &set, &verdict, style);
        let reconcile = reconcile.map(|(backend, key, estimate, limit)| {
            Box::new(Reconcile {
                tap: AnswerTap::for_response(&parts.headers, limit),
                backend,
                key,
                set,
                estimate,
            })
        });
        Response::from_parts(
            parts,
            RateLimitBody::new(ResponseBody::inner(body), reconcile),
        )
    }
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

fn wrap<B>(res: Response<ResponseBody<B>>) -> Response<RateLimitBody<B>> {
    res.map(|b| RateLimitBody::new(b, None))
}

/// The longest a refused request would wait for every refusing policy.
fn longest_wait(verdict: &Verdict) -> Duration {
    verdict
        .decisions()
        .iter()
        .filter_map(|d| d.retry_after())
        .max()
        .unwrap_or(Duration::ZERO)
}

fn refuse<R, B, K>(
    req: &Request<R>,
    set: &PolicySet,
    verdict: &Verdict,
    shared: &Shared<K>,
    key: &ClientKey,
) -> Response<RateLimitBody<B>> {
    metrics::counter!("tower_ai_ratelimit_requests_total", "outcome" => "refused").increment(1);
    let (i, d) = binding(verdict);
    let policy = &set[i].policy;
    metrics::counter!("tower_ai_ratelimit_refused_total", "policy" => policy.name().to_owned())
        .increment(1);
    tracing::debug!(key = %key, policy = policy.name(), retry_after_ms = d.retry_after().unwrap_or_default().as_millis() as u64, "rate limited");
    let mut fields = HeaderMap::new();
    write_headers(&mut fields, set, verdict, shared.headers);
    let wait = longest_wait(verdict);
    let refusal = match &shared.refusal {
        Some(custom) => custom(&Refused {
            policy,
            decision: d,
            key,
            retry_after: wait,
        }),
        None => Refusal::too_many_requests()
            .detail(format!(
                "rate limit {:?} exceeded: {}",
                policy.name(),
                policy.describe()
            ))
            .member("policy", policy.name())
            .member("limit", policy.capacity()),
    };
    wrap(refusal.retry_after(wait).headers(fields).for_request(req))
}

/// The decision the `X-RateLimit-*` fields report: when refused, the
/// refusal with the longest wait; else the one with the least left.
fn binding(verdict: &Verdict) -> (usize, Decision) {
    let decisions = verdict.decisions();
    let pick = if verdict.allowed() {
        decisions
            .iter()
            .enumerate()
            .min_by_key(|(_, d)| (d.remaining(), std::cmp::Reverse(d.reset())))
    } else {
        decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.allowed())
            .max_by_key(|(_, d)| d.retry_after())
    };
    pick.map_or((0, Decision::default()), |(i, d)| (i, *d))
}

fn write_headers(headers: &mut HeaderMap, set: &PolicySet, verdict: &Verdict, style: HeaderStyle) {
    let decisions = verdict.decisions();
    if decisions.is_empty() {
        return;
    }
    // One allocation for every field, not one per growth of the map.
    headers.reserve(
        3 * usize::from(style.x_ratelimit)
            + 2 * usize::from(style.ietf)
            + 6 * usize::from(style.openai),
    );
    if style.x_ratelimit {
        let (_, d) = binding(verdict);
        RateLimitInfo {
            limit: d.limit(),
            remaining: d.remaining(),
            reset: d.reset(),
        }
        .write(headers);
    }
    if style.ietf {
        let secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let policies: Vec<IetfPolicy> = set
            .iter()
            .map(|c| IetfPolicy {
                name: c.policy.name().to_owned(),
                quota: c.policy.capacity(),
                window: secs(c.policy.window()),
            })
            .collect();
        let limits: Vec<IetfLimit> = set
            .iter()
            .zip(decisions)
            .map(|(c, d)| IetfLimit {
                name: c.policy.name().to_owned(),
                remaining: d.remaining(),
                reset: secs(d.reset()),
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&headers::format_ietf_policies(&policies)) {
            headers.insert(headers::RATELIMIT_POLICY.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(&headers::format_ietf_limits(&limits)) {
            headers.insert(headers::RATELIMIT.clone(), v);
        }
    }
    if style.openai {
        for unit in [Unit::Requests, Unit::Tokens] {
            let Some(d) = set
                .iter()
                .zip(decisions)
                .filter(|(c, _)| c.policy.unit() == unit)
                .map(|(_, d)| d)
                .min_by_key(|d| (d.remaining(), std::cmp::Reverse(d.reset())))
            else {
                continue;
            };
            let u = unit.as_str();
            let name = |what: &str| HeaderName::try_from(format!("x-ratelimit-{what}-{u}"));
            if let Ok(n) = name("limit") {
                headers.insert(n, headers::number(d.limit()));
            }
            if let Ok(n) = name("remaining") {
                headers.insert(n, headers::number(d.remaining()));
            }
            if let (Ok(n), Ok(v)) = (
                name("reset"),
                HeaderValue::from_str(&headers::openai_duration(d.reset())),
            ) {
                headers.insert(n, v);
            }
        }
    }
}
