//! Chat history for signed-in sessions: the user's message when the request
//! arrives, the assistant's answer when its body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_ai_core::llm::AnswerTap;
use tower_session::{Session, Turn};

/// The most of an answer kept in the history.
const MAX_ANSWER: usize = 64 << 10;

/// The last user message of a chat request, and an estimate of its tokens.
pub(crate) fn user_turn(body: &[u8]) -> Option<Turn> {
    let request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let content = request["messages"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["role"] == "user")?["content"]
        .as_str()?
        .to_owned();
    let tokens = u32::try_from(content.len().div_ceil(4)).unwrap_or(u32::MAX);
    Some(Turn::user(content, tokens))
}

/// Wraps an answer so its text joins the session's history when it ends.
pub(crate) fn record_answer(res: Response<Body>, session: Session) -> Response<Body> {
    let (parts, body) = res.into_parts();
    if !parts.status.is_success() {
        return Response::from_parts(parts, body);
    }
    let tap = AnswerTap::for_response(&parts.headers, 1 << 20).gather_content(MAX_ANSWER);
    Response::from_parts(
        parts,
        Body::new(HistoryBody {
            inner: body,
            tap: Some(Box::new(tap)),
            session,
        }),
    )
}

pin_project! {
    struct HistoryBody {
        #[pin]
        inner: Body,
        tap: Option<Box<AnswerTap>>,
        session: Session,
    }
}

impl HistoryBody {
    fn finish(tap: Box<AnswerTap>, session: &Session) {
        let mut tap = tap;
        let summary = tap.finish();
        let Some(content) = summary.content.clone().filter(|c| !c.is_empty()) else {
            return;
        };
        let tokens = summary
            .usage
            .map(|u| u.completion_tokens)
            .unwrap_or_else(|| content.len().div_ceil(4) as u64);
        let turn = Turn::assistant(content, u32::try_from(tokens).unwrap_or(u32::MAX));
        if let Err(e) = session.history().append_later(turn) {
            tracing::debug!(error = %e, "the answer could not join the history");
        }
    }
}

impl http_body::Body for HistoryBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), f.data_ref()) {
                    tap.observe(data);
                }
                if this.inner.is_end_stream()
                    && let Some(tap) = this.tap.take()
                {
                    Self::finish(tap, this.session);
                }
            }
            None => {
                if let Some(tap) = this.tap.take() {
                    Self::finish(tap, this.session);
                }
            }
            // A broken answer doesn't join the history.
            Some(Err(_)) => *this.tap = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
