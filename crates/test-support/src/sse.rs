//! Reading `text/event-stream` bodies with the project's spec-exact decoder,
//! [`tower_ai_core::sse::Decoder`].
//!
//! [`decode_chunks`] and [`data`] take bytes at hand; `SseReader` (feature
//! `http`) reads a `reqwest` response event by event as it arrives, noting
//! when each event came.

use std::time::{Duration, Instant};

use tower_ai_core::sse::{DecodeError, Decoder, Event};

/// Everything a decoder made of some input: the events (and errors) in
/// order, and its state at the end.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// Each event, or the error in its place.
    pub events: Vec<Result<Event, DecodeError>>,
    /// The reconnection time of the last valid `retry` field.
    pub retry: Option<Duration>,
    /// The last event ID buffer.
    pub last_id: Option<String>,
}

/// Feeds `chunks` to `decoder` one by one, taking the events after each,
/// then ends the input.
pub fn decode_chunks<'a>(
    mut decoder: Decoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Decoded {
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push_slice(chunk);
        events.extend(decoder.events());
    }
    decoder.finish();
    events.extend(decoder.events());
    Decoded {
        events,
        retry: decoder.retry(),
        last_id: decoder.last_event_id().map(str::to_owned),
    }
}

/// The data of each event of a whole body.
///
/// # Panics
/// When an event can't be decoded.
pub fn data(body: &[u8]) -> Vec<String> {
    decode_chunks(Decoder::new(), [body])
        .events
        .into_iter()
        .map(|event| event.expect("a decodable event").data().to_owned())
        .collect()
}

/// One event as a test client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event ID when it was dispatched (`""` before any `id`).
    pub id: String,
    /// Its type (`"message"` unless an `event` field said otherwise).
    pub event: String,
    /// Its data.
    pub data: String,
    /// When the chunk that completed it arrived.
    pub at: Instant,
}

impl SseEvent {
    #[cfg(feature = "http")]
    fn new(event: &Event, at: Instant) -> Self {
        Self {
            id: event.id().unwrap_or_default().to_owned(),
            event: event.event_type().to_owned(),
            data: event.data().to_owned(),
            at,
        }
    }

    /// The number after the last `-` of the id, as in the relay's
    /// `{stream}-{seq}` ids.
    pub fn seq(&self) -> Option<u64> {
        self.id.rsplit_once('-')?.1.parse().ok()
    }
}

/// The text of a streamed chat completion: the content deltas of `events`,
/// concatenated.
pub fn text(events: &[SseEvent]) -> String {
    crate::chat::streamed_text(events.iter().map(|e| e.data.as_str()))
}

#[cfg(feature = "http")]
pub use reader::SseReader;

#[cfg(feature = "http")]
mod reader {
    use std::fmt;
    use std::pin::Pin;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures_util::{Stream, StreamExt};
    use tower_ai_core::sse::Decoder;

    use super::SseEvent;

    /// How long [`SseReader`] waits for the next chunk before it fails the
    /// test instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// Reads a response as a `text/event-stream`, event by event, keeping
    /// what it read (for the comments, or the body as bytes).
    ///
    /// A body that fails ends the events; [`error`](Self::error) says why.
    pub struct SseReader {
        body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
        decoder: Decoder,
        raw: Vec<u8>,
        first_chunk_at: Option<Instant>,
        last_chunk_at: Instant,
        error: Option<reqwest::Error>,
        ended: bool,
    }

    impl fmt::Debug for SseReader {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SseReader")
                .field("read", &self.raw.len())
                .field("first_chunk_at", &self.first_chunk_at)
                .field("error", &self.error)
                .field("ended", &self.ended)
                .finish_non_exhaustive()
        }
    }

    impl SseReader {
        /// Reads `res`'s body.
        pub fn new(res: reqwest::Response) -> Self {
            Self {
                body: Box::pin(res.bytes_stream()),
                decoder: Decoder::new(),
                raw: Vec::new(),
                first_chunk_at: None,
                last_chunk_at: Instant::now(),
                error: None,
                ended: false,
            }
        }

        /// The next event; `None` at the end of the body (or when it failed).
        ///
        /// # Panics
        /// When an event can't be decoded, or no chunk comes for 20 s.
        pub async fn next(&mut self) -> Option<SseEvent> {
            loop {
                if let Some(event) = self.decoder.next_event() {
                    let event = event.expect("a decodable event");
                    return Some(SseEvent::new(&event, self.last_chunk_at));
                }
                if !self.read_chunk().await {
                    return None;
                }
            }
        }

        /// The next `n` events.
        ///
        /// # Panics
        /// When the body ends (or fails) before, or as [`next`](Self::next).
        pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
            let mut events = Vec::with_capacity(n);
            while events.len() < n {
                match self.next().await {
                    Some(event) => events.push(event),
                    None => panic!(
                        "the stream ended after {} of {n} events (error: {:?})",
                        events.len(),
                        self.error
                    ),
                }
            }
            events
        }

        /// Every event up to the end.
        pub async fn rest(&mut self) -> Vec<SseEvent> {
            let mut events = Vec::new();
            while let Some(event) = self.next().await {
                events.push(event);
            }
            events
        }

        /// Reads the body to its end without decoding it (it may not be an
        /// event stream); [`raw`](Self::raw) has it all then.
        pub async fn read_to_end(&mut self) {
            while self.read_chunk().await {}
        }

        /// Reads one more chunk into the decoder; `false` at the end.
        async fn read_chunk(&mut self) -> bool {
            if self.ended {
                return false;
            }
            match tokio::time::timeout(PATIENCE, self.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.last_chunk_at = Instant::now();
                    if !chunk.is_empty() && self.first_chunk_at.is_none() {
                        self.first_chunk_at = Some(self.last_chunk_at);
                    }
                    self.raw.extend_from_slice(&chunk);
                    self.decoder.push(chunk);
                }
                Ok(Some(Err(error))) => {
                    self.error = Some(error);
                    self.end();
                }
                Ok(None) => self.end(),
                Err(_) => panic!("no chunk of the body for {PATIENCE:?}"),
            }
            true
        }

        fn end(&mut self) {
            self.ended = true;
            self.decoder.finish();
        }

        /// Every byte read so far.
        pub fn raw(&self) -> &[u8] {
            &self.raw
        }

        /// How many comment lines (`:` ...) were read so far.
        pub fn comments(&self) -> usize {
            self.comment_lines().count()
        }

        /// How many comment lines with exactly this text (`: {text}`) were
        /// read so far.
        pub fn comments_with(&self, text: &str) -> usize {
            self.comment_lines()
                .filter(|line| line.strip_prefix(b": ".as_slice()) == Some(text.as_bytes()))
                .count()
        }

        fn comment_lines(&self) -> impl Iterator<Item = &[u8]> {
            self.raw
                .split(|&b| b == b'\n' || b == b'\r')
                .filter(|line| line.starts_with(b":"))
        }

        /// When the first non-empty chunk arrived.
        pub fn first_chunk_at(&self) -> Option<Instant> {
            self.first_chunk_at
        }

        /// Whether the body ended (whole or failed).
        pub fn ended(&self) -> bool {
            self.ended
        }

        /// Why the body failed, if it did.
        pub fn error(&self) -> Option<&reqwest::Error> {
            self.error.as_ref()
        }

        /// Why the body failed, if it did, taking the reader.
        pub fn into_error(self) -> Option<reqwest::Error> {
            self.error
        }

        /// Whether the body failed midway.
        pub fn broken(&self) -> bool {
            self.error.is_some()
        }

        /// Whether the body ended in the middle of an event (an event
        /// without its blank line, a line without its end): once every
        /// event is read, this tells a truncated stream from a whole one.
        pub fn ended_mid_event(&self) -> bool {
            self.ended && self.decoder.is_mid_event()
        }
    }
}
