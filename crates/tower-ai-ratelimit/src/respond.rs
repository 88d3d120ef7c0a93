//! What a checked request's response gets: the rate-limit fields on an
//! admitted answer (and the body that reconciles token costs), or the
//! refusal.

use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, HeaderName, Request, Response};
use tower_ai_core::body::ResponseBody;
use tower_ai_core::key::ClientKey;
use tower_ai_core::llm::AnswerTap;
use tower_ai_core::reject::Refusal;

use crate::algorithm::Decision;
use crate::body::{RateLimitBody, Reconcile};
use crate::config::{HeaderStyle, Refused, Shared};
use crate::headers::{self, IetfLimit, IetfPolicy, RateLimitInfo};
use crate::policy::Unit;
use crate::resolver::PolicySet;
use crate::store::{Backend, Verdict};

/// What an admitted request carries to its response.
pub(crate) struct Applied {
    pub(crate) set: PolicySet,
    pub(crate) verdict: Verdict,
    pub(crate) style: HeaderStyle,
    /// For token policies: what reconciliation needs.
    pub(crate) reconcile: Option<(Backend, ClientKey, u64, usize)>,
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
                tap: AnswerTap::for_response(&parts.headers, limit).share(&mut parts.extensions),
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

pub(crate) fn wrap<B>(res: Response<ResponseBody<B>>) -> Response<RateLimitBody<B>> {
    res.map(|b| RateLimitBody::new(b, None))
}

/// The longest a refused request would wait for every refusing policy.
pub(crate) fn longest_wait(verdict: &Verdict) -> Duration {
    verdict
        .decisions()
        .iter()
        .filter_map(|d| d.retry_after())
        .max()
        .unwrap_or(Duration::ZERO)
}

pub(crate) fn refuse<R, B, K>(
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
    if decisions.is_empty() || !(style.x_ratelimit || style.ietf || style.openai) {
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
            let [limit, remaining, reset] = openai_names(unit);
            headers.insert(limit, headers::number(d.limit()));
            headers.insert(remaining, headers::number(d.remaining()));
            if let Some(v) = headers::openai_duration_value(d.reset()) {
                headers.insert(reset, v);
            }
        }
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-{unit}` names, made
/// without allocating.
fn openai_names(unit: Unit) -> [HeaderName; 3] {
    match unit {
        Unit::Requests => [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        Unit::Tokens => [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    }
}
