//! The response body wrapper: saves session changes made while the body is
//! still being sent, before the end reaches the client.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_ai_core::body::ResponseBody;

use crate::session::Session;
use crate::store::BoxFuture;

pin_project! {
    /// The response body under a [`SessionLayer`](crate::SessionLayer): the
    /// inner body (or the layer's `503`), passed through frame by frame.
    ///
    /// When the session has unsaved changes as the inner body ends — e.g. a
    /// chat handler's stream queued the assistant's answer with
    /// [`History::append_later`](crate::history::History::append_later) —
    /// the last frame (or the end) is held until they are saved, so a
    /// client that saw the whole answer can rely on it being stored. When
    /// the body is dropped first (the client went away), the save runs in a
    /// spawned task. Costs one atomic load per frame otherwise.
    pub struct SessionBody<B> {
        #[pin]
        inner: ResponseBody<B>,
        session: Option<Session>,
        saving: Option<BoxFuture<'static, ()>>,
        held: Option<Frame<Bytes>>,
    }

    impl<B> PinnedDrop for SessionBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let pending = match (this.saving.take(), this.session.take()) {
                (Some(saving), _) => Some(saving),
                (None, Some(session)) if session.is_dirty() => {
                    Some(Box::pin(session.finish_body()) as BoxFuture<'static, ()>)
                }
                _ => None,
            };
            if let Some(pending) = pending {
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(pending);
                    }
                    Err(_) => {
                        metrics::counter!("tower_ai_session_unsaved_total").increment(1);
                        tracing::warn!("response body dropped outside a runtime: session changes not saved");
                    }
                }
            }
        }
    }
}

impl<B> SessionBody<B> {
    pub(crate) fn new(inner: ResponseBody<B>, session: Option<Session>) -> Self {
        Self {
            inner,
            session,
            saving: None,
            held: None,
        }
    }
}

impl<B> fmt::Debug for SessionBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBody")
            .field("saving", &self.saving.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for SessionBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        loop {
            if let Some(saving) = this.saving.as_mut() {
                ready!(saving.as_mut().poll(cx));
                *this.saving = None;
                return Poll::Ready(this.held.take().map(Ok));
            }
            let frame = ready!(this.inner.as_mut().poll_frame(cx));
            let ended = match &frame {
                Some(Ok(_)) => this.inner.is_end_stream(),
                Some(Err(_)) => false,
                None => true,
            };
            if !ended {
                return Poll::Ready(frame);
            }
            match this.session.take() {
                Some(session) if session.is_dirty() => {
                    *this.held = frame.and_then(Result::ok);
                    *this.saving = Some(Box::pin(session.finish_body()));
                }
                _ => return Poll::Ready(frame),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.saving.is_none()
            && self.held.is_none()
            && self.inner.is_end_stream()
            && !self.session.as_ref().is_some_and(Session::is_dirty)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
