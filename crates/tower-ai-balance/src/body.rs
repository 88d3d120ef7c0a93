//! [`BalanceBody`]: the response body, holding the request's permit on its
//! endpoint until the stream ends, fails or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_ai_core::body::ResponseBody;

use crate::load::Permit;

pin_project! {
    /// The endpoint's response body, or the balancer's own refusal.
    ///
    /// While it lives, the request counts on its endpoint: a permit and its
    /// tokens in flight. The permit is released at the end of the stream
    /// (not at the response head, as `tower::limit` and `tower::balance`
    /// do), when the body fails, or when it is dropped. A body that fails
    /// mid-stream counts as a failure of its endpoint; it is not retried,
    /// since bytes were already sent, and its error reaches the client.
    #[derive(Debug)]
    pub struct BalanceBody<B> {
        #[pin]
        inner: ResponseBody<B>,
        permit: Option<Permit>,
    }
}

impl<B> BalanceBody<B> {
    pub(crate) fn new(inner: B, permit: Option<Permit>) -> Self {
        Self {
            inner: ResponseBody::inner(inner),
            permit,
        }
    }

    pub(crate) fn own(inner: ResponseBody<B>) -> Self {
        Self {
            inner,
            permit: None,
        }
    }
}

impl<B> Body for BalanceBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => drop(this.permit.take()),
            Poll::Ready(Some(Err(_))) => {
                if let Some(permit) = this.permit.take() {
                    permit
                        .state()
                        .failed(permit.endpoint(), None, Instant::now());
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
