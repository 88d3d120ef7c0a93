//! Who answers when the breaker doesn't call the service.
//!
//! Without a fallback ([`NoFallback`]) a refused call gets `503 Service
//! Unavailable` with `Retry-After` (the time left in the open state) and an
//! `application/problem+json` body, or a trailers-only gRPC `UNAVAILABLE` for
//! gRPC requests. With [`CircuitBreakerBuilder::fallback`](crate::CircuitBreakerBuilder::fallback), a
//! service of yours answers instead (a cached answer, a smaller model's
//! upstream); with [`CircuitBreakerBuilder::fallback_on_failure`](crate::CircuitBreakerBuilder::fallback_on_failure)
//! it also answers when a call fails at its head (an error, a `5xx`), which
//! needs a copy of each request.
//!
//! The fallback finds a [`FallbackContext`] in the request's extensions: why
//! it was called, which circuit, and how long the circuit stays open, so it
//! can build its own `503` when it has nothing better.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceExt, service_fn};
//! use tower_ai_core::body::ResponseBody;
//! use tower_circuit::{CircuitBreakerLayer, Control, FallbackContext};
//!
//! type Body = ResponseBody<http_body_util::Empty<Bytes>>;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = service_fn(|req: Request<()>| async move {
//!     let ctx = req.extensions().get::<FallbackContext>().cloned();
//!     assert!(ctx.is_some_and(|c| c.circuit() == "upstream"));
//!     Ok::<_, Infallible>(Response::new(Body::full("from the cache")))
//! });
//! let layer = CircuitBreakerLayer::builder().name("upstream").fallback(cache).build()?;
//! layer.handle().control("upstream", Control::ForceOpen)?;
//!
//! let upstream = service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(Body::full("from the upstream")))
//! });
//! let res = tower::Layer::layer(&layer, upstream).oneshot(Request::new(())).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tower::util::Oneshot;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::breaker::Breaker;
use crate::breaker::admit::Refused;
use crate::state::State;

/// Why the fallback was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The breaker refused the call (open, forced open, or half-open with
    /// every trial slot taken).
    Refused,
    /// The call was made and failed at its head (an error or a failure
    /// status); only with [`CircuitBreakerBuilder::fallback_on_failure`](crate::CircuitBreakerBuilder::fallback_on_failure).
    CallFailed,
}

/// What the fallback is told, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackContext {
    circuit: Arc<str>,
    key: Option<Arc<str>>,
    reason: FallbackReason,
    state: State,
    retry_after: Option<Duration>,
}

impl FallbackContext {
    pub(crate) fn refused(breaker: &Breaker, refused: Refused) -> Self {
        Self {
            circuit: Arc::clone(&breaker.settings.name),
            key: breaker.key.clone(),
            reason: FallbackReason::Refused,
            state: refused.state,
            retry_after: Some(refused.retry_after),
        }
    }

    pub(crate) fn failed(breaker: &Breaker) -> Self {
        Self {
            circuit: Arc::clone(&breaker.settings.name),
            key: breaker.key.clone(),
            reason: FallbackReason::CallFailed,
            state: breaker.state(),
            retry_after: None,
        }
    }

    /// The layer's name.
    pub fn circuit(&self) -> &str {
        &self.circuit
    }

    /// The breaker's key, for keyed breakers.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Why the fallback was called.
    pub const fn reason(&self) -> FallbackReason {
        self.reason
    }

    /// The circuit's state when the fallback was called.
    pub const fn state(&self) -> State {
        self.state
    }

    /// How long the caller should wait before trying again (for a refusal:
    /// the time left in the open state).
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The refusal the breaker would send without a fallback: `503` with
    /// `Retry-After`, as problem+json or gRPC `UNAVAILABLE`.
    pub fn refusal(&self) -> Refusal {
        let name = self.key.as_deref().unwrap_or(&self.circuit);
        let mut refusal = Refusal::service_unavailable()
            .detail(format!("the circuit breaker for {name} is {}", self.state))
            .member("circuit", self.circuit.as_ref())
            .member("state", self.state.as_str());
        if let Some(key) = &self.key {
            refusal = refusal.member("key", key.as_ref());
        }
        if let Some(wait) = self.retry_after {
            refusal = refusal.retry_after(wait);
        }
        refusal
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How the breaker answers what it doesn't send to the service: the
/// built-in refusal or a fallback service. Implemented by [`NoFallback`],
/// [`OnRefusal`] and [`OnRefusalOrFailure`]; sealed.
pub trait Fallback<ReqBody, ResBody, E>: sealed::Sealed {
    /// The body of the fallback's responses.
    type Body;
    /// The fallback's response future.
    type Future: Future<Output = Result<Response<Self::Body>, E>>;
    /// What is kept of each request to call the fallback after a failure.
    type Kept: FailureFallback<Future = Self::Future>;

    /// Answers a refused request.
    fn refuse(&mut self, req: Request<ReqBody>, context: FallbackContext) -> Self::Future;

    /// Keeps what a failure fallback needs, before the request goes to the
    /// service (nothing, unless the fallback answers failures).
    fn keep(&mut self, req: &Request<ReqBody>) -> Option<Self::Kept>;
}

/// Calls the fallback for a failed call, from what was kept of its request.
/// Sealed.
pub trait FailureFallback: sealed::Sealed {
    /// The fallback's response future.
    type Future;

    /// Calls the fallback.
    fn call(self, context: FallbackContext) -> Self::Future;
}

/// Nothing kept: failures are not sent to a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NothingKept {}

impl sealed::Sealed for NothingKept {}

/// The failure fallback of [`NoFallback`] and [`OnRefusal`], which never
/// runs; its future type is `F`.
#[derive(Debug)]
pub struct Never<F> {
    never: NothingKept,
    _future: std::marker::PhantomData<fn() -> F>,
}

impl<F> sealed::Sealed for Never<F> {}

impl<F> FailureFallback for Never<F> {
    type Future = F;

    fn call(self, _context: FallbackContext) -> F {
        match self.never {}
    }
}

/// No fallback: a refused call gets a `503` (or gRPC `UNAVAILABLE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NoFallback;

impl sealed::Sealed for NoFallback {}

impl<ReqBody, ResBody, E> Fallback<ReqBody, ResBody, E> for NoFallback {
    type Body = ResponseBody<ResBody>;
    type Future = Ready<Result<Response<ResponseBody<ResBody>>, E>>;
    type Kept = Never<Self::Future>;

    fn refuse(&mut self, req: Request<ReqBody>, context: FallbackContext) -> Self::Future {
        ready(Ok(context.refusal().for_request::<ResBody, _>(&req)))
    }

    #[inline]
    fn keep(&mut self, _req: &Request<ReqBody>) -> Option<Self::Kept> {
        None
    }
}

/// A fallback service that answers refused calls.
#[derive(Debug, Clone)]
pub struct OnRefusal<F> {
    service: F,
}

impl<F> OnRefusal<F> {
    pub(crate) const fn new(service: F) -> Self {
        Self { service }
    }
}

impl<F> sealed::Sealed for OnRefusal<F> {}

impl<F, ReqBody, ResBody, FB, E> Fallback<ReqBody, ResBody, E> for OnRefusal<F>
where
    F: Service<Request<ReqBody>, Response = Response<FB>, Error = E> + Clone,
{
    type Body = FB;
    type Future = Oneshot<F, Request<ReqBody>>;
    type Kept = Never<Self::Future>;

    fn refuse(&mut self, mut req: Request<ReqBody>, context: FallbackContext) -> Self::Future {
        req.extensions_mut().insert(context);
        Oneshot::new(self.service.clone(), req)
    }

    #[inline]
    fn keep(&mut self, _req: &Request<ReqBody>) -> Option<Self::Kept> {
        None
    }
}

/// A fallback service that answers refused calls and calls that failed at
/// their head. Each call keeps a copy of its request (head and body: the
/// body type must be `Clone`, e.g. `Full<Bytes>`) and a clone of the
/// fallback service until its head arrives.
#[derive(Debug, Clone)]
pub struct OnRefusalOrFailure<F> {
    service: F,
}

impl<F> OnRefusalOrFailure<F> {
    pub(crate) const fn new(service: F) -> Self {
        Self { service }
    }
}

impl<F> sealed::Sealed for OnRefusalOrFailure<F> {}

/// A copy of a request and a fallback service to send it to.
pub struct KeptRequest<F, B> {
    service: F,
    req: Request<B>,
}

impl<F, B> fmt::Debug for KeptRequest<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptRequest")
            .field("method", self.req.method())
            .field("uri", self.req.uri())
            .finish_non_exhaustive()
    }
}

impl<F, B> sealed::Sealed for KeptRequest<F, B> {}

impl<F, B> FailureFallback for KeptRequest<F, B>
where
    F: Service<Request<B>>,
{
    type Future = Oneshot<F, Request<B>>;

    fn call(mut self, context: FallbackContext) -> Self::Future {
        self.req.extensions_mut().insert(context);
        Oneshot::new(self.service, self.req)
    }
}

impl<F, ReqBody, ResBody, FB, E> Fallback<ReqBody, ResBody, E> for OnRefusalOrFailure<F>
where
    F: Service<Request<ReqBody>, Response = Response<FB>, Error = E> + Clone,
    ReqBody: Clone,
{
    type Body = FB;
    type Future = Oneshot<F, Request<ReqBody>>;
    type Kept = KeptRequest<F, ReqBody>;

    fn refuse(&mut self, mut req: Request<ReqBody>, context: FallbackContext) -> Self::Future {
        req.extensions_mut().insert(context);
        Oneshot::new(self.service.clone(), req)
    }

    fn keep(&mut self, req: &Request<ReqBody>) -> Option<Self::Kept> {
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(KeptRequest {
            service: self.service.clone(),
            req: copy,
        })
    }
}
