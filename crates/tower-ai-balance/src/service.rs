//! [`Balance`]: the service that picks an endpoint per request.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_ai_core::body::{BoxError, ReadError, read_limited};
use tower_ai_core::llm::ChatRequest;
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::body::BalanceBody;
use crate::future::ResponseFuture;
use crate::pool::{Pool, Unavailable};
use crate::prompt::Prompt;
use crate::retry::{Verdict, backoff, judge};

/// Picks an endpoint of a [`Pool`] for each request, with the request in
/// hand, and calls the inner service with the picked
/// [`Endpoint`](crate::Endpoint) in the request's extensions.
///
/// The pool is the one the request carries in its extensions, else the
/// layer's own; a request with neither passes through untouched. The body
/// is read (up to the pool's `max_body`) to weigh the prompt and to replay
/// it: a connection error, `408`, `429` or `5xx` is retried on a new pick,
/// after a backoff, while no byte of the answer has been returned; an
/// endpoint's `Retry-After` keeps it out of picks that long. The response
/// body holds the request's permit until it ends ([`BalanceBody`]).
#[derive(Debug, Clone)]
pub struct Balance<S, T> {
    inner: S,
    pool: Option<Pool<T>>,
}

impl<S, T> Balance<S, T> {
    pub(crate) fn new(inner: S, pool: Option<Pool<T>>) -> Self {
        Self { inner, pool }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the balancer.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for Balance<S, T>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    T: Clone + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<BalanceBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let pool = req
            .extensions()
            .get::<Pool<T>>()
            .or(self.pool.as_ref())
            .cloned();
        // The instance polled ready makes the first call; the clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match pool {
            None => {
                let call = inner.call(req);
                ResponseFuture::new(async move {
                    Ok(call.await?.map(|body| BalanceBody::new(body, None)))
                })
            }
            Some(pool) => ResponseFuture::new(balance(inner, pool, req)),
        }
    }
}

async fn balance<S, T, ReqBody, ResBody>(
    mut inner: S,
    pool: Pool<T>,
    req: Request<ReqBody>,
) -> Result<Response<BalanceBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    T: Clone + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    let settings = pool.settings();
    let sticky = pool.sticky_key(tower_ai_core::key::RequestHead::of(&req));
    let (mut parts, body) = req.into_parts();
    let bytes = match read_limited(body, settings.max_body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let refusal = match e {
                ReadError::TooLarge { .. } => Refusal::payload_too_large(),
                _ => Refusal::bad_request(),
            };
            return Ok(refusal
                .detail(e.to_string())
                .for_request(&Request::from_parts(parts, ()))
                .map(BalanceBody::own));
        }
    };
    let prefix = pool.endpoints().len() > 1;
    let request = ChatRequest::read_shared(&mut parts.extensions, &bytes).ok();
    let mut prompt = Prompt::read(
        &bytes,
        request.as_deref(),
        settings.block_bytes,
        settings.default_output_tokens,
        prefix,
    );
    prompt.sticky = sticky;
    // The head, for the attempts still to make: the last one takes it.
    let mut kept = Some(parts);
    let mut tried = 0u64;
    let mut attempt = 0;
    // The last failed answer, returned when no retry can be made.
    let mut last: Option<Result<Response<ResBody>, S::Error>> = None;
    loop {
        let picked = match pool.acquire(&prompt, tried).await {
            Ok(picked) => picked,
            Err(Unavailable::Cooling(until))
                if last.is_some() && until - Instant::now() <= settings.max_retry_wait =>
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            Err(unavailable) => {
                if let Some(outcome) = last {
                    return outcome.map(|res| res.map(|body| BalanceBody::new(body, None)));
                }
                return Ok(refused(unavailable)
                    .for_request(&head_of(kept))
                    .map(BalanceBody::own));
            }
        };
        drop(last.take());
        let endpoint = picked.permit.endpoint();
        // The last attempt moves the head (its extensions, each boxed,
        // are most of a copy's cost); the others copy it.
        let last_attempt = attempt >= settings.retries;
        let Some(parts) = (if last_attempt {
            kept.take()
        } else {
            kept.clone()
        }) else {
            // Each attempt but the last copies the head, and the last
            // returns: there is always one to send.
            return Ok(refused(Unavailable::Full)
                .for_request(&Request::new(()))
                .map(BalanceBody::own));
        };
        let mut req = Request::from_parts(parts, ReqBody::from(bytes.clone()));
        req.extensions_mut().insert(picked.endpoint);
        let outcome = match inner.ready().await {
            Ok(ready) => ready.call(req).await,
            Err(e) => Err(e),
        };
        match judge(&outcome) {
            Verdict::Healthy => {
                pool.state().succeeded(endpoint);
                return outcome
                    .map(|res| res.map(|body| BalanceBody::new(body, Some(picked.permit))));
            }
            Verdict::Failed(retry_after) => {
                pool.state().failed(endpoint, retry_after, Instant::now());
                // With other endpoints, a `Retry-After` keeps this one out
                // of the next pick; alone, the retry itself waits it out.
                let wait = if pool.state().loads.len() == 1 {
                    retry_after.unwrap_or_default()
                } else {
                    Duration::ZERO
                };
                if last_attempt || wait > settings.max_retry_wait {
                    return outcome
                        .map(|res| res.map(|body| BalanceBody::new(body, Some(picked.permit))));
                }
                attempt += 1;
                tried |= 1 << endpoint;
                drop(picked.permit);
                last = Some(outcome);
                metrics::counter!("tower_ai_balance_retries_total", "pool" => pool.name().to_owned())
                    .increment(1);
                let draw = prompt.blocks.first().copied().unwrap_or(0) ^ u64::from(attempt);
                tokio::time::sleep(backoff(attempt, settings, draw).max(wait)).await;
            }
        }
    }
}

/// The request's head for a refusal, when it is still kept.
fn head_of(kept: Option<http::request::Parts>) -> Request<()> {
    kept.map_or_else(|| Request::new(()), |parts| Request::from_parts(parts, ()))
}

fn refused(unavailable: Unavailable) -> Refusal {
    match unavailable {
        Unavailable::Full => Refusal::service_unavailable()
            .title("No endpoint free")
            .detail("every endpoint of the pool is at its concurrency limit"),
        Unavailable::Cooling(until) => Refusal::service_unavailable()
            .title("No endpoint available")
            .detail("every endpoint of the pool is cooling down after failures")
            .retry_after(until.saturating_duration_since(Instant::now())),
    }
}
