//! Sessions with sliding expiry in Redis, lazy and field-level, plus conversation memory for AI chat.
//!
//! **Status: in development.** The public entry types exist so that the
//! workspace layout is fixed; [`SessionLayer`] currently passes every request
//! through unchanged.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

/// The [`Layer`] that wraps a service in [`SessionManager`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SessionLayer {}

impl SessionLayer {
    /// A layer with the default configuration.
    #[must_use]
    pub const fn new() -> Self {
        Self {}
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionManager<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionManager { inner }
    }
}

/// The [`Service`] built by [`SessionLayer`].
#[derive(Debug, Clone)]
pub struct SessionManager<S> {
    inner: S,
}

impl<S> SessionManager<S> {
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

impl<S, Req> Service<Req> for SessionManager<S>
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
