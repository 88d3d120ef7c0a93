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
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge { limit }),
        Err(e) => Err(ReadError::Failed(e)),
    }
}
