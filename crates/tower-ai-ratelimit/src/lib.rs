//! Distributed, token-aware rate limiting for AI/LLM APIs as one tower `Layer`.
//!
//! **Status: in development.** The public entry types exist so that the
//! workspace layout is fixed; [`RateLimitLayer`] currently passes every request
//! through unchanged.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

/// The [`Layer`] that wraps a service in [`RateLimit`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RateLimitLayer {}

impl RateLimitLayer {
    /// A layer with the default configuration.
    #[must_use]
    pub const fn new() -> Self {
        Self {}
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner }
    }
}

/// The [`Service`] built by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
}

impl<S> RateLimit<S> {
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

impl<S, Req> Service<Req> for RateLimit<S>
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
