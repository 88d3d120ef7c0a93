//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Response, StatusCode};
use pin_project_lite::pin_project;
use tower_ai_core::body::ResponseBody;

use crate::body::RateLimitBody;
use crate::respond::Applied;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Admitted at once (in-memory check): the inner call.
        Call {
            #[pin]
            fut: F,
            applied: Option<Box<Applied>>,
        },
        // A check that waits (Redis, or throttling), then the call.
        Slow {
            fut: BoxFuture<Result<Response<RateLimitBody<B>>, E>>,
        },
        // Answered here.
        Ready {
            res: Option<Response<RateLimitBody<B>>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn call(fut: F, applied: Option<Box<Applied>>) -> Self {
        Self {
            kind: Kind::Call { fut, applied },
        }
    }

    pub(crate) fn slow(fut: BoxFuture<Result<Response<RateLimitBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Slow { fut },
        }
    }

    pub(crate) fn ready(res: Response<RateLimitBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RateLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Call { fut, applied } => {
                let res = std::task::ready!(fut.poll(cx))?;
                Poll::Ready(Ok(match applied.take() {
                    Some(applied) => (*applied).finish(res),
                    None => res.map(|b| RateLimitBody::new(ResponseBody::inner(b), None)),
                }))
            }
            KindProj::Slow { fut } => fut.as_mut().poll(cx),
            KindProj::Ready { res } => Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                // Polled again after it completed: a caller bug, answered
                // without a panic.
                let mut res = Response::new(RateLimitBody::new(ResponseBody::empty(), None));
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                res
            }))),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}
