//! The response future of [`Cache`](crate::Cache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Response, StatusCode};
use pin_project_lite::pin_project;

use crate::body::CacheBody;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`Cache`](crate::Cache).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Not cached: the inner call, with the `Cache-Status` member to add
        // when the cache bypassed the request.
        Passthrough {
            #[pin]
            fut: F,
            status: Option<String>,
        },
        // Answered at once from L1.
        Ready {
            res: Option<Response<CacheBody<B>>>,
        },
        // Read the body, look up, lead or follow.
        Slow {
            fut: BoxFuture<Result<Response<CacheBody<B>>, E>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(fut: F, status: Option<String>) -> Self {
        Self {
            kind: Kind::Passthrough { fut, status },
        }
    }

    pub(crate) fn ready(res: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }

    pub(crate) fn slow(fut: BoxFuture<Result<Response<CacheBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Slow { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { fut, status } => {
                let mut res = std::task::ready!(fut.poll(cx))?;
                if let Some(status) = status.take() {
                    crate::directives::append(res.headers_mut(), status);
                }
                Poll::Ready(Ok(res.map(CacheBody::inner)))
            }
            KindProj::Ready { res } => Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                // Polled again after it completed: a caller bug, answered
                // without a panic.
                let mut res = Response::new(CacheBody::stored(bytes::Bytes::new(), None));
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                res
            }))),
            KindProj::Slow { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}
