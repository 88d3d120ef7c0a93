//! The [`CircuitBreaker`] service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::CircuitBody;
use crate::breaker::admit::Admission;
use crate::classify::{Classify, DefaultClassifier};
use crate::fallback::{Fallback, FallbackContext, NoFallback};
use crate::future::ResponseFuture;
use crate::handle::CircuitHandle;
use crate::key::{KeyExtractor, Single};
use crate::registry::Registry;

/// A circuit breaker around the service `S`, built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// `K` finds the breaker of each request, `C` classifies its outcome, `F`
/// answers what the breaker refuses. Clones share the breakers.
#[derive(Clone)]
pub struct CircuitBreaker<S, K = Single, C = DefaultClassifier, F = NoFallback> {
    inner: S,
    registry: Arc<Registry>,
    keyer: K,
    classifier: C,
    fallback: F,
}

impl<S, K, C, F> CircuitBreaker<S, K, C, F> {
    pub(crate) const fn new(
        inner: S,
        registry: Arc<Registry>,
        keyer: K,
        classifier: C,
        fallback: F,
    ) -> Self {
        Self {
            inner,
            registry,
            keyer,
            classifier,
            fallback,
        }
    }

    /// The wrapped service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle on the breakers, shared with the layer.
    pub fn handle(&self) -> CircuitHandle {
        CircuitHandle::new(Arc::clone(&self.registry))
    }
}

impl<S: fmt::Debug, K: fmt::Debug, C: fmt::Debug, F: fmt::Debug> fmt::Debug
    for CircuitBreaker<S, K, C, F>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .field("keyer", &self.keyer)
            .field("classifier", &self.classifier)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl<S, K, C, F, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S, K, C, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    S::Error: fmt::Display + 'static,
    K: KeyExtractor,
    C: Classify + Clone,
    F: Fallback<ReqBody, ResBody, S::Error>,
{
    type Response = Response<CircuitBody<ResBody, C::Judge, F::Body>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, F::Future, C, F::Kept>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let keyed;
        let breaker = match self.registry.single() {
            Some(breaker) => breaker,
            None => match self.keyer.extract(&req) {
                // The lookup's reference goes into the permit when closed.
                Some(key) => match self.registry.get(&key).admit_owned() {
                    Ok(permit) => {
                        let kept = self.fallback.keep(&req);
                        let classifier = self.classifier.clone();
                        return ResponseFuture::judged(
                            self.inner.call(req),
                            classifier,
                            permit,
                            kept,
                        );
                    }
                    Err(breaker) => {
                        keyed = breaker;
                        &keyed
                    }
                },
                // No key: no breaker.
                None => return ResponseFuture::unjudged(self.inner.call(req)),
            },
        };
        match breaker.admit() {
            Admission::Call(permit) => {
                let kept = self.fallback.keep(&req);
                let classifier = self.classifier.clone();
                ResponseFuture::judged(self.inner.call(req), classifier, permit, kept)
            }
            Admission::Pass => ResponseFuture::unjudged(self.inner.call(req)),
            Admission::Refuse(refused) => {
                let context = FallbackContext::refused(breaker, refused);
                ResponseFuture::fallback(self.fallback.refuse(req, context))
            }
        }
    }
}
