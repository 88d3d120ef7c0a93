//! Estimating a chat request's LLM tokens before the call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::Body;
use tower_ai_core::body::{ReadError, ResponseBody, read_limited};
use tower_ai_core::llm::{ChatRequest, estimated_tokens};
use tower_ai_core::reject::Refusal;
use tower_layer::Layer;
use tower_service::Service;

/// A request's estimated LLM tokens, put in its extensions by
/// [`TokenCostLayer`]; token policies charge it, and the rate limiter
/// reconciles it with the answer's reported `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate(pub u64);

/// How [`TokenCostLayer`] estimates.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TokenCost {
    /// The largest body read for the estimate (default 1 MiB); a larger one
    /// is refused with `413`.
    pub max_body: usize,
    /// The output assumed when the request sets no `max_tokens` (default
    /// 1,024): an estimate, corrected by the reported usage afterwards.
    pub default_output: u64,
}

impl Default for TokenCost {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            default_output: 1_024,
        }
    }
}

/// Reads an OpenAI-style chat request body (at most
/// [`TokenCost::max_body`] bytes) and puts its [`TokenEstimate`] in the
/// request's extensions: the prompt's size plus `max_completion_tokens` /
/// `max_tokens` (or the default) for each of the `n` choices. The request
/// goes on with the same bytes. Put it outside (before) the
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// Only `POST` requests are read. A body that isn't a chat request is
/// estimated from its size. A body over the limit is refused with `413`
/// problem+json; one that fails to arrive, with `400`.
///
/// The request body type must be buildable from the bytes (`From<Bytes>`,
/// as axum's `Body` is).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenCostLayer {
    cost: TokenCost,
}

impl TokenCostLayer {
    /// The layer with the default [`TokenCost`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The layer with `cost`.
    pub fn with(cost: TokenCost) -> Self {
        Self { cost }
    }
}

impl<S> Layer<S> for TokenCostLayer {
    type Service = TokenCostService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenCostService {
            inner,
            cost: self.cost,
        }
    }
}

/// The service of [`TokenCostLayer`].
#[derive(Debug, Clone)]
pub struct TokenCostService<S> {
    inner: S,
    cost: TokenCost,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for TokenCostService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cost = self.cost;
        Box::pin(async move {
            if req.method() != Method::POST {
                return inner.call(req).await.map(|r| r.map(ResponseBody::inner));
            }
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > cost.max_body as u64) {
                return Ok(too_large(&req, cost.max_body));
            }
            let (mut parts, body) = req.into_parts();
            let bytes = match read_limited(body, cost.max_body).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    let head = Request::from_parts(parts, ());
                    return Ok(Refusal::from(e).for_request(&head));
                }
            };
            let estimate = match ChatRequest::read_shared(&mut parts.extensions, &bytes) {
                Ok(chat) => chat.estimated_total_tokens(cost.default_output),
                Err(_) => estimated_tokens(bytes.len()) + cost.default_output,
            };
            parts.extensions.insert(TokenEstimate(estimate));
            let req = Request::from_parts(parts, B::from(bytes));
            inner.call(req).await.map(|r| r.map(ResponseBody::inner))
        })
    }
}

fn too_large<R, B>(req: &Request<R>, max: usize) -> Response<ResponseBody<B>> {
    Refusal::from(ReadError::TooLarge { limit: max }).for_request(req)
}
