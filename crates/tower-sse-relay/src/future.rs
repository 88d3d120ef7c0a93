//! The response future of [`SseRelay`](crate::SseRelay).
//!
//! [`ResponseFuture`] resolves to the inner service's response with its body
//! wrapped in a [`SseRelayBody`]: at once in direct mode (the body relays the
//! upstream), after the generation task's handover in resumable mode, or to
//! an answer of the relay's own (a re-attach, a `202 Accepted`, a refusal).
//! It never adds an error: `S::Error` passes through unchanged.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt};
//! use tower_sse_relay::SseRelayLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Infallible> {
//! let svc = SseRelayLayer::new().layer(tower::service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("{}"))))
//! }));
//! // Not an event stream: passed through as it is.
//! let res = svc.oneshot(Request::new(())).await?;
//! assert!(res.headers().get("x-stream-id").is_none());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_ai_core::reject::Refusal;

use crate::body::SseRelayBody;
use crate::config::Config;
use crate::error::BoxError;
use crate::generate::{Handoff, respond};
use crate::id::StreamId;
use crate::relay::{Counters, is_event_stream};
use crate::respond::{direct_response, passthrough, refuse};
use crate::tap::TapState;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`SseRelay`](crate::SseRelay).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Direct mode: the inner call, its answer wrapped when it is an
        // event stream.
        Direct {
            #[pin]
            fut: F,
            setup: Option<DirectSetup>,
        },
        // Resumable mode: waiting for the generation task's handover.
        Handoff {
            rx: oneshot::Receiver<Handoff<B, E>>,
            setup: Option<HandoffSetup>,
        },
        // Re-attaching, or answering `202 Accepted`: store calls first.
        Boxed {
            fut: BoxFuture<Result<Response<SseRelayBody<B>>, E>>,
        },
        // Answered here.
        Ready {
            res: Option<Response<SseRelayBody<B>>>,
        },
    }
}

/// What a direct stream needs once its response arrives.
pub(crate) struct DirectSetup {
    pub(crate) config: Arc<Config>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stream: Option<StreamId>,
    pub(crate) tap: Option<TapState>,
    pub(crate) started: Instant,
}

/// What a resumable stream's response needs once the handover arrives.
pub(crate) struct HandoffSetup {
    pub(crate) config: Arc<Config>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stream: StreamId,
    pub(crate) started: Instant,
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn direct(fut: F, setup: DirectSetup) -> Self {
        Self {
            kind: Kind::Direct {
                fut,
                setup: Some(setup),
            },
        }
    }

    pub(crate) fn handoff(rx: oneshot::Receiver<Handoff<B, E>>, setup: HandoffSetup) -> Self {
        Self {
            kind: Kind::Handoff {
                rx,
                setup: Some(setup),
            },
        }
    }

    pub(crate) fn boxed(fut: BoxFuture<Result<Response<SseRelayBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Boxed { fut },
        }
    }

    pub(crate) fn ready(res: Response<SseRelayBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }
}

impl DirectSetup {
    pub(crate) fn wrap<B>(self, res: Response<B>) -> Response<SseRelayBody<B>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if !is_event_stream(&res) {
            return passthrough(res);
        }
        let stream = match self.stream.map_or_else(StreamId::random, Ok) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(error = %error, "no randomness for a stream id; passing the stream through");
                return passthrough(res);
            }
        };
        direct_response(
            self.config,
            self.counters,
            stream,
            self.tap,
            self.started,
            res,
        )
    }
}

impl HandoffSetup {
    /// The client's response to the generation task's `handoff`.
    pub(crate) fn respond<B, E>(
        self,
        handoff: Handoff<B, E>,
    ) -> Result<Response<SseRelayBody<B>>, E>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        respond(
            &self.config,
            &self.counters,
            self.stream,
            self.started,
            handoff,
        )
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Send + 'static,
{
    type Output = Result<Response<SseRelayBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Direct { fut, setup } => {
                let res = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(match setup.take() {
                    Some(setup) => setup.wrap(res),
                    None => passthrough(res),
                }))
            }
            KindProj::Handoff { rx, setup } => {
                let handoff = ready!(Pin::new(rx).poll(cx));
                let Some(setup) = setup.take() else {
                    return Poll::Ready(Ok(internal_error()));
                };
                let Ok(handoff) = handoff else {
                    // The task ended without answering (the runtime is
                    // shutting down).
                    return Poll::Ready(Ok(refuse(
                        Refusal::bad_gateway().detail("the stream's generation ended unexpectedly"),
                    )));
                };
                Poll::Ready(setup.respond(handoff))
            }
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
            KindProj::Ready { res } => Poll::Ready(Ok(res.take().unwrap_or_else(internal_error))),
        }
    }
}

/// Polled again after it completed, or a type mismatch that can't happen:
/// a caller bug, answered without a panic.
fn internal_error<B>() -> Response<SseRelayBody<B>> {
    let mut res = Response::new(SseRelayBody::empty());
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Direct { .. } => "direct",
            Kind::Handoff { .. } => "handoff",
            Kind::Boxed { .. } => "boxed",
            Kind::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
