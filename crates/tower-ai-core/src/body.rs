//! A response body that is either the inner service's own body or bytes a
//! layer produced itself.
//!
//! A layer that answers on its own (a refusal, a cached answer) must still
//! return the inner service's response type. [`ResponseBody`] is that type:
//! an enum over the inner body and a buffer of bytes, so no layer needs to box
//! bodies or ask for `ResBody: From<Bytes>`.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http_body::Body as _;
//! use tower_ai_core::body::ResponseBody;
//!
//! let body: ResponseBody<http_body_util::Empty<Bytes>> = ResponseBody::full("refused");
//! assert_eq!(body.size_hint().exact(), Some(7));
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or bytes produced by a layer.
    #[project = ResponseBodyProj]
    #[derive(Debug)]
    #[allow(missing_docs)] // the fields are described with their variants
    pub enum ResponseBody<B> {
        /// The inner service's `body`, passed through untouched.
        Inner {
            #[pin]
            body: B,
        },
        /// Bytes produced by the layer, sent as one frame; `data` is what is
        /// left to send.
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub const fn inner(body: B) -> Self {
        Self::Inner { body }
    }

    /// A body of the given bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    /// An empty body.
    pub const fn empty() -> Self {
        Self::Full { data: None }
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::inner(B::default())
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            ResponseBodyProj::Inner { body } => body.poll_frame(cx),
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// An error a body can end with, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body could not be read whole by [`read_limited`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// The body is longer than the limit (answer `413`).
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body failed before its end (answer `400`).
    Failed(BoxError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(f, "the body is larger than {limit} bytes"),
            Self::Failed(e) => write!(f, "the body could not be read: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a whole body, at most `limit` bytes: for a layer that must see a
/// request body (a cost estimate, a cache key) and then rebuilds the request
/// from the bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    // A layer before this one left the body as one buffer, which is the
    // answer as it is: no list of buffers, no copy.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        // Trailers carry nothing a reader of the bytes wants.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(ReadError::TooLarge { limit });
        }
        if data.is_empty() {
            continue;
        }
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(_), None) => {
                let mut buf = bytes::BytesMut::with_capacity(len);
                buf.extend_from_slice(first.take().as_deref().unwrap_or_default());
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match joined {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};

    use super::*;

    /// A body of these frames, in order.
    type Frames = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<FrameResult>>>;
    type FrameResult = Result<Frame<Bytes>, BoxError>;

    fn frames(parts: Vec<Result<Frame<Bytes>, &'static str>>) -> Frames {
        let parts: Vec<FrameResult> = parts
            .into_iter()
            .map(|p| p.map_err(BoxError::from))
            .collect();
        StreamBody::new(futures_util::stream::iter(parts))
    }

    #[tokio::test]
    async fn one_buffer_is_the_answer_itself() {
        let bytes = Bytes::from_static(b"{\"model\":\"m\"}");
        let read = read_limited(Full::new(bytes.clone()), 64).await;
        let Ok(read) = read else {
            panic!("read: {read:?}")
        };
        assert_eq!(read, bytes);
        assert_eq!(read.as_ptr(), bytes.as_ptr(), "no copy");
        let empty = read_limited(http_body_util::Empty::<Bytes>::new(), 0).await;
        assert!(matches!(empty, Ok(b) if b.is_empty()));
    }

    #[tokio::test]
    async fn frames_are_joined_in_order_and_trailers_skipped() {
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::new())),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::data(Bytes::from_static(b"e"))),
            Ok(Frame::trailers(http::HeaderMap::new())),
        ]);
        assert!(matches!(read_limited(body, 5).await, Ok(b) if b == "abcde"));
    }

    #[tokio::test]
    async fn the_limit_holds_across_frames() {
        let body = || {
            frames(vec![
                Ok(Frame::data(Bytes::from_static(b"abc"))),
                Ok(Frame::data(Bytes::from_static(b"def"))),
            ])
        };
        assert!(matches!(read_limited(body(), 6).await, Ok(b) if b == "abcdef"));
        assert!(matches!(
            read_limited(body(), 5).await,
            Err(ReadError::TooLarge { limit: 5 })
        ));
        let one = Full::new(Bytes::from_static(b"abcdef"));
        assert!(matches!(
            read_limited(one, 5).await,
            Err(ReadError::TooLarge { limit: 5 })
        ));
    }

    #[tokio::test]
    async fn a_failed_body_is_a_failed_read() {
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("reset"),
        ]);
        let read = read_limited(body, 64).await;
        assert!(
            matches!(&read, Err(ReadError::Failed(e)) if e.to_string() == "reset"),
            "{read:?}"
        );
    }
}
