//! The response body: the service's body, watched to its end, or the
//! fallback's.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::breaker::admit::Permit;
use crate::classify::{JudgeBody, Outcome};

pin_project! {
    /// The body of a [`CircuitBreaker`](crate::CircuitBreaker)'s responses.
    ///
    /// For a call the breaker judges, the service's body passes through
    /// unchanged while a [`JudgeBody`] watches it; the outcome is recorded when
    /// the body ends (a success, or a failure if it breaks), or when it is
    /// dropped before its end (the client went away: neither, by default).
    /// The slow-call clock stops there too. Otherwise the body is the
    /// fallback's (`FB`), or the refusal's.
    pub struct CircuitBody<B, J, FB> {
        #[pin]
        kind: Kind<B, J, FB>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, J, FB> {
        Inner {
            #[pin]
            body: B,
            watch: Option<Watch<J>>,
        },
        Fallback {
            #[pin]
            body: FB,
        },
    }
}

impl<B, J, FB> CircuitBody<B, J, FB> {
    /// The service's body, not watched.
    #[inline]
    pub(crate) const fn unwatched(body: B) -> Self {
        Self {
            kind: Kind::Inner { body, watch: None },
        }
    }

    #[inline]
    pub(crate) fn watched(body: B, permit: Permit, judge: J) -> Self
    where
        J: JudgeBody,
    {
        Self {
            kind: Kind::Inner {
                body,
                watch: Some(Watch {
                    permit,
                    judge: Some(judge),
                    abandoned: J::abandoned,
                }),
            },
        }
    }

    #[inline]
    pub(crate) const fn fallback(body: FB) -> Self {
        Self {
            kind: Kind::Fallback { body },
        }
    }

    /// Whether this body is the fallback's (or the refusal's).
    pub fn is_fallback(&self) -> bool {
        matches!(self.kind, Kind::Fallback { .. })
    }
}

impl<B, J, FB> fmt::Debug for CircuitBody<B, J, FB>
where
    B: fmt::Debug,
    FB: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { body, watch } => f
                .debug_struct("CircuitBody::Inner")
                .field("body", body)
                .field(
                    "judging",
                    &watch.as_ref().is_some_and(|w| w.judge.is_some()),
                )
                .finish(),
            Kind::Fallback { body } => f
                .debug_struct("CircuitBody::Fallback")
                .field("body", body)
                .finish(),
        }
    }
}

/// The permit of a judged call and its judge. Judges exactly once: at the
/// end, at an error, or (when dropped first) as abandoned.
struct Watch<J> {
    permit: Permit,
    judge: Option<J>,
    // A function pointer rather than a `J: JudgeBody` bound, which `Drop`
    // would need on the struct (and so on `CircuitBody`).
    abandoned: fn(J) -> Outcome,
}

impl<J: JudgeBody> Watch<J> {
    #[inline]
    fn frame(&mut self, frame: &Frame<Bytes>) {
        let Some(judge) = self.judge.as_mut() else {
            return;
        };
        if let Some(data) = frame.data_ref() {
            if !data.is_empty() {
                self.permit.first_byte();
                judge.data(data);
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            judge.trailers(trailers);
        }
    }

    #[inline]
    fn end(&mut self) {
        if let Some(judge) = self.judge.take() {
            self.permit.finish(judge.end());
        }
    }

    fn error(&mut self) {
        if let Some(judge) = self.judge.take() {
            self.permit.finish(judge.error());
        }
    }
}

impl<J> Drop for Watch<J> {
    #[inline]
    fn drop(&mut self) {
        if let Some(judge) = self.judge.take() {
            self.permit.finish((self.abandoned)(judge));
        }
    }
}

impl<B, J, FB> Body for CircuitBody<B, J, FB>
where
    B: Body<Data = Bytes>,
    J: JudgeBody,
    FB: Body<Data = Bytes>,
    FB::Error: Into<B::Error>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { mut body, watch } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                if let Some(w) = watch.as_mut() {
                    match &frame {
                        Some(Ok(f)) => {
                            w.frame(f);
                            // Some bodies say they are over without a final
                            // `None`, and servers then stop polling them.
                            if body.is_end_stream() {
                                w.end();
                            }
                        }
                        Some(Err(_)) => w.error(),
                        None => w.end(),
                    }
                }
                Poll::Ready(frame)
            }
            KindProj::Fallback { body } => {
                let frame = ready!(body.poll_frame(cx));
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Fallback { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Fallback { body } => body.size_hint(),
        }
    }
}
