//! A layered (memory + Redis) response cache for AI endpoints that never serves one tenant's answer to another.
//!
//! **Status: in development.** The public entry types exist so that the
//! workspace layout is fixed; [`CacheLayer`] currently passes every request
//! through unchanged.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

/// The [`Layer`] that wraps a service in [`Cache`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CacheLayer {}

impl CacheLayer {
    /// A layer with the default configuration.
    #[must_use]
    pub const fn new() -> Self {
        Self {}
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache { inner }
    }
}

/// The [`Service`] built by [`CacheLayer`].
#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
}

impl<S> Cache<S> {
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

impl<S, Req> Service<Req> for Cache<S>
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
