//! The response future of [`CircuitBreaker`](crate::CircuitBreaker).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::CircuitBody;
use crate::breaker::admit::Permit;
use crate::classify::{Classified, Classify, JudgeBody, Outcome};
use crate::fallback::{FailureFallback, FallbackContext};

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker):
    /// the service's future (`F`), or the fallback's (`FF`).
    ///
    /// When the service's response head arrives it is classified; a call the
    /// head decides is recorded at once, any other is handed to the body
    /// (see [`CircuitBody`]). Dropped before the head arrives, the call
    /// counts as neither success nor failure.
    pub struct ResponseFuture<F, FF, C, K> {
        #[pin]
        kind: Kind<F, FF, C, K>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, FF, C, K> {
        Called {
            #[pin]
            fut: F,
            judged: Option<Judged<C, K>>,
        },
        Fallback {
            #[pin]
            fut: FF,
        },
    }
}

/// What a judged call carries until its head arrives.
struct Judged<C, K> {
    classifier: C,
    permit: Permit,
    kept: Option<K>,
}

impl<F, FF, C, K> ResponseFuture<F, FF, C, K> {
    #[inline]
    pub(crate) fn judged(fut: F, classifier: C, permit: Permit, kept: Option<K>) -> Self {
        Self {
            kind: Kind::Called {
                fut,
                judged: Some(Judged {
                    classifier,
                    permit,
                    kept,
                }),
            },
        }
    }

    #[inline]
    pub(crate) const fn unjudged(fut: F) -> Self {
        Self {
            kind: Kind::Called { fut, judged: None },
        }
    }

    #[inline]
    pub(crate) const fn fallback(fut: FF) -> Self {
        Self {
            kind: Kind::Fallback { fut },
        }
    }
}

impl<F, FF, C, K> fmt::Debug for ResponseFuture<F, FF, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called {
                judged: Some(_), ..
            } => "judged",
            Kind::Called { judged: None, .. } => "passed through",
            Kind::Fallback { .. } => "fallback",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, FF, C, K, B, FB, E> Future for ResponseFuture<F, FF, C, K>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    FF: Future<Output = Result<Response<FB>, E>>,
    C: Classify,
    K: FailureFallback<Future = FF>,
    E: fmt::Display + 'static,
{
    type Output = Result<Response<CircuitBody<B, C::Judge, FB>>, E>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fallback = match self.as_mut().project().kind.project() {
            KindProj::Fallback { fut } => {
                let res = ready!(fut.poll(cx));
                return Poll::Ready(res.map(|r| r.map(CircuitBody::fallback)));
            }
            KindProj::Called { fut, judged } => 'fallback: {
                let result = ready!(fut.poll(cx));
                let Some(Judged {
                    classifier,
                    mut permit,
                    kept,
                }) = judged.take()
                else {
                    return Poll::Ready(result.map(|r| r.map(CircuitBody::unwatched)));
                };
                let res = match result {
                    Ok(res) => res,
                    Err(error) => {
                        let outcome = classifier.classify_error(&error);
                        permit.finish(outcome);
                        match kept.filter(|_| outcome == Outcome::Failure) {
                            Some(kept) => {
                                break 'fallback kept
                                    .call(FallbackContext::failed(permit.breaker()));
                            }
                            None => return Poll::Ready(Err(error)),
                        }
                    }
                };
                match classifier.classify_response(&res) {
                    Classified::Decided(outcome) => {
                        permit.finish(outcome);
                        match kept.filter(|_| outcome == Outcome::Failure) {
                            Some(kept) => kept.call(FallbackContext::failed(permit.breaker())),
                            None => return Poll::Ready(Ok(res.map(CircuitBody::unwatched))),
                        }
                    }
                    Classified::AtEnd(judge) => {
                        drop(kept);
                        if res.body().is_end_stream() {
                            // Nothing will poll an empty body: judge it now.
                            permit.finish(judge.end());
                            return Poll::Ready(Ok(res.map(CircuitBody::unwatched)));
                        }
                        return Poll::Ready(Ok(
                            res.map(|body| CircuitBody::watched(body, permit, judge))
                        ));
                    }
                }
            }
        };
        self.as_mut()
            .project()
            .kind
            .set(Kind::Fallback { fut: fallback });
        self.poll(cx)
    }
}
