//! A circuit breaker tower `Layer`: failure-rate and slow-call windows, judged at the end of a streamed body.
//!
//! **Status: in development.** The public entry types exist so that the
//! workspace layout is fixed; [`CircuitBreakerLayer`] currently passes every request
//! through unchanged.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

/// The [`Layer`] that wraps a service in [`CircuitBreaker`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CircuitBreakerLayer {}

impl CircuitBreakerLayer {
    /// A layer with the default configuration.
    #[must_use]
    pub const fn new() -> Self {
        Self {}
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker { inner }
    }
}

/// The [`Service`] built by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
}

impl<S> CircuitBreaker<S> {
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

impl<S, Req> Service<Req> for CircuitBreaker<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}
