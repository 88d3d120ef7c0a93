//! [`PullBody`]: an answer's body as it arrives through its reply stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use super::error::PullError;

/// What the task that reads a reply stream hands on.
#[derive(Debug)]
pub(super) enum Msg {
    Head(StatusCode, HeaderMap),
    Data(Bytes),
    End,
    Fail(PullError),
}

/// The body of a pulled answer: the chunks the puller wrote, each once, as
/// they arrive.
///
/// It ends cleanly only at the puller's end marker. An error marker, a
/// retried attempt that answered differently, or a reply stream that can't
/// be read any further end it with an error instead, so a cut answer never
/// looks complete. Dropping it stops reading (after the read in flight, at
/// most a second).
#[derive(Debug)]
pub struct PullBody {
    rx: mpsc::Receiver<Msg>,
    done: bool,
}

impl PullBody {
    pub(super) fn new(rx: mpsc::Receiver<Msg>) -> Self {
        Self { rx, done: false }
    }
}

impl Body for PullBody {
    type Data = Bytes;
    type Error = PullError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let msg = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(msg) => msg,
        };
        Poll::Ready(match msg {
            Some(Msg::Data(data)) => Some(Ok(Frame::data(data))),
            Some(Msg::End) => {
                self.done = true;
                None
            }
            Some(Msg::Fail(e)) => {
                self.done = true;
                Some(Err(e))
            }
            // A second head can't come; the reader is gone without an end.
            Some(Msg::Head(..)) | None => {
                self.done = true;
                Some(Err(PullError::Lost))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
