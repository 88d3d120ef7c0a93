//! Hooks for other layers: a [`Tap`] sees each event as the relay passes it
//! on, and the stream's end with what the answer said about itself.
//!
//! The cache records streams with it; the rate limiter reconciles token
//! usage from [`StreamSummary::answer`] (the final usage chunk). A tap is
//! made per stream by the layer's [`MakeTap`] (a closure works), which sees
//! the request head, so it can pick up what an outer layer left in the
//! request's extensions.
//!
//! In resumable mode the tap runs in the generation task: it sees each event
//! exactly once, however many clients read the stream, and it sees the end
//! even when every client went away. In direct mode it runs in the response
//! body; when the client goes away early, [`EndReason::ClientGone`] is
//! reported, after the usage drain when one is configured
//! ([`SseRelayBuilder::drain_usage`](crate::SseRelayBuilder::drain_usage)).
//!
//! # Example
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_sse_relay::{SseRelayLayer, StreamSummary, Tap};
//!
//! #[derive(Default)]
//! struct Usage(Arc<Mutex<Option<u64>>>);
//!
//! impl Tap for Usage {
//!     fn on_end(&mut self, end: &StreamSummary) {
//!         *self.0.lock().unwrap() = end.answer.usage.map(|u| u.total());
//!     }
//! }
//!
//! let seen = Arc::new(Mutex::new(None));
//! let seen2 = seen.clone();
//! let layer = SseRelayLayer::builder()
//!     .tap(move |_head: tower_ai_core::key::RequestHead<'_>, _stream| {
//!         Some(Box::new(Usage(seen2.clone())) as Box<dyn Tap>)
//!     })
//!     .build()
//!     .unwrap();
//! # let _ = (layer, seen);
//! ```

use std::fmt;
use std::time::Duration;

use tower_ai_core::key::RequestHead;
use tower_ai_core::llm::{AnswerSummary, StreamChunk};
use tower_ai_core::sse::Event;

use crate::id::{EventId, StreamId};

/// Sees a relayed stream's events and its end.
pub trait Tap: Send + 'static {
    /// One event, with the id the relay gave it, as it is passed on (before
    /// the client has it).
    fn on_event(&mut self, event: &Event, id: EventId) {
        let _ = (event, id);
    }

    /// The end of the stream, once.
    fn on_end(&mut self, end: &StreamSummary) {
        let _ = end;
    }
}

/// Makes the [`Tap`] of each relayed stream, or none.
///
/// Implemented by closures `Fn(RequestHead<'_>, StreamId) -> Option<Box<dyn Tap>>`.
pub trait MakeTap: Send + Sync + 'static {
    /// The tap for the stream `stream` answering the request `head`.
    fn make_tap(&self, head: RequestHead<'_>, stream: StreamId) -> Option<Box<dyn Tap>>;
}

impl<F> MakeTap for F
where
    F: Fn(RequestHead<'_>, StreamId) -> Option<Box<dyn Tap>> + Send + Sync + 'static,
{
    fn make_tap(&self, head: RequestHead<'_>, stream: StreamId) -> Option<Box<dyn Tap>> {
        self(head, stream)
    }
}

/// Why a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// The upstream's body ended.
    Completed,
    /// The upstream's body failed, or answered with something that is not
    /// an event stream.
    Failed,
    /// The relay stopped the generation at its configured limit.
    Truncated,
    /// Direct mode: the client went away first; the upstream was dropped
    /// (after the usage drain, when configured).
    ClientGone,
}

impl EndReason {
    /// The metric label: `completed`, `failed`, `truncated`, `client_gone`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Truncated => "truncated",
            Self::ClientGone => "client_gone",
        }
    }
}

/// What a [`Tap`] is told at the end of a stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream.
    pub stream: StreamId,
    /// How it ended.
    pub reason: EndReason,
    /// Events relayed (with their relay id), in-band error events included.
    pub events: u64,
    /// From the request to the end.
    pub duration: Duration,
    /// What the answer said about itself: usage, finish reason, in-band
    /// error, `[DONE]`, read from each event's data (OpenAI, Responses or Anthropic events).
    pub answer: AnswerSummary,
}

/// A tap and the answer summary it is told at the end.
pub(crate) struct TapState {
    tap: Box<dyn Tap>,
    pub(crate) answer: AnswerSummary,
}

impl TapState {
    pub(crate) fn new(tap: Box<dyn Tap>) -> Self {
        Self {
            tap,
            answer: AnswerSummary::default(),
        }
    }

    pub(crate) fn on_event(&mut self, event: &Event, id: EventId) {
        // Usage merges across events: Anthropic reports the input tokens
        // first and the output at the end.
        self.answer.absorb(StreamChunk::parse(event.data()));
        self.tap.on_event(event, id);
    }

    /// Whether the final usage (or the end of the answer) has passed: what
    /// a usage drain waits for. Usage seen before the finish reason is a
    /// running count (Anthropic's `message_start`), not the final one.
    pub(crate) fn has_usage(&self) -> bool {
        self.answer.done || (self.answer.usage.is_some() && self.answer.finish_reason.is_some())
    }

    pub(crate) fn on_end(
        mut self,
        stream: StreamId,
        reason: EndReason,
        events: u64,
        duration: Duration,
    ) {
        let summary = StreamSummary {
            stream,
            reason,
            events,
            duration,
            answer: std::mem::take(&mut self.answer),
        };
        self.tap.on_end(&summary);
    }
}

impl fmt::Debug for TapState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapState")
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}
