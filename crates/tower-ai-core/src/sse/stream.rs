//! [`EventStream`]: the decoder as a [`Stream`] adapter.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use pin_project_lite::pin_project;

use super::decoder::{DecodeError, Decoder};
use super::event::Event;

pin_project! {
    /// Events parsed from a stream of byte chunks, such as a response body's
    /// data frames.
    ///
    /// Wraps any `Stream<Item = Result<B, E>>` whose chunks `B` convert into
    /// [`Bytes`] without a copy (`Bytes`, `Vec<u8>`, `String`, ...) and yields
    /// each event as soon as its blank line has arrived. A transport error is
    /// passed through as [`StreamError::Transport`] and the inner stream is
    /// polled again afterwards if the caller goes on; when the inner stream
    /// ends, the unfinished tail is discarded and this stream ends too.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use futures_util::{StreamExt, stream};
    /// use tower_ai_core::sse::EventStream;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let chunks = [&b"data: {\"delta\":\"Hel"[..], b"lo\"}\n", b"\ndata: [DONE]\n\n"];
    /// let body = stream::iter(chunks.map(|chunk| Ok::<_, std::io::Error>(Bytes::from_static(chunk))));
    /// let mut events = EventStream::new(body);
    /// let first = events.next().await.unwrap().unwrap();
    /// assert_eq!(first.data(), r#"{"delta":"Hello"}"#);
    /// assert_eq!(events.next().await.unwrap().unwrap().data(), "[DONE]");
    /// assert!(events.next().await.is_none());
    /// # }
    /// ```
    pub struct EventStream<S> {
        #[pin]
        inner: S,
        decoder: Decoder,
        inner_done: bool,
    }
}

impl<S> EventStream<S> {
    /// Parses `inner` with a [`Decoder::new`].
    pub fn new(inner: S) -> Self {
        Self::with_decoder(inner, Decoder::new())
    }

    /// Parses `inner` with `decoder`, for another size limit or a starting
    /// last event ID.
    pub const fn with_decoder(inner: S, decoder: Decoder) -> Self {
        Self {
            inner,
            decoder,
            inner_done: false,
        }
    }

    /// The decoder, for the [reconnection time](Decoder::retry) and the
    /// [last event ID](Decoder::last_event_id) read so far.
    pub const fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The inner stream.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner stream, pinned.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().inner
    }

    /// The inner stream; bytes buffered in the decoder are dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, E> Stream for EventStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: Into<Bytes>,
{
    type Item = Result<Event, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(result) = this.decoder.next_event() {
                return Poll::Ready(Some(result.map_err(StreamError::Decode)));
            }
            if *this.inner_done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.decoder.push(chunk),
                Some(Err(error)) => return Poll::Ready(Some(Err(StreamError::Transport(error)))),
                None => {
                    *this.inner_done = true;
                    this.decoder.finish();
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.inner_done && !self.decoder.is_mid_event() {
            (0, Some(0))
        } else {
            (0, None)
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for EventStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("inner", &self.inner)
            .field("decoder", &self.decoder)
            .field("inner_done", &self.inner_done)
            .finish()
    }
}

/// An error of an [`EventStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError<E> {
    /// The bytes could not be decoded into an event; the stream goes on with
    /// the next event.
    Decode(DecodeError),
    /// The inner stream failed.
    Transport(E),
}

impl<E: fmt::Display> fmt::Display for StreamError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(error) => error.fmt(f),
            Self::Transport(error) => write!(f, "SSE transport error: {error}"),
        }
    }
}

impl<E> std::error::Error for StreamError<E>
where
    E: std::error::Error + 'static,
{
    // `Display` already shows the wrapped error, so `source` skips it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Decode(_) => None,
            Self::Transport(error) => error.source(),
        }
    }
}
