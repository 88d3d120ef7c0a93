//! Relay LLM token streams as Server-Sent Events, resumable with `Last-Event-ID` across reconnects and replicas.
//!
//! **Status: in development.** The public entry types exist so that the
//! workspace layout is fixed; [`SseRelayLayer`] currently passes every request
//! through unchanged.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

/// The [`Layer`] that wraps a service in [`SseRelay`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SseRelayLayer {}

impl SseRelayLayer {
    /// A layer with the default configuration.
    #[must_use]
    pub const fn new() -> Self {
        Self {}
    }
}

impl<S> Layer<S> for SseRelayLayer {
    type Service = SseRelay<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SseRelay { inner }
    }
}

/// The [`Service`] built by [`SseRelayLayer`].
#[derive(Debug, Clone)]
pub struct SseRelay<S> {
    inner: S,
}

impl<S> SseRelay<S> {
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

impl<S, Req> Service<Req> for SseRelay<S>
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
