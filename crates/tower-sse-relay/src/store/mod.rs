//! Where resumable streams are kept: [`MemoryStore`] for one process and,
//! with the `redis` feature, `RedisStore` (Redis Streams) shared by every
//! replica.
//!
//! A store keeps each stream's encoded events in order, numbered from 1, and
//! its end. The relay's generation task [`create`](StreamStore::create)s a
//! stream, [`append`](StreamStore::append)s events as the upstream produces
//! them and [`finish`](StreamStore::finish)es it; every client, the first one
//! included, reads it through a [`Subscription`]: the events after its resume
//! point that are kept, then the live tail, each exactly once and in order,
//! until the stream's end.
//!
//! [`AnyStore`] picks one of them at run time (memory by default, Redis when
//! the application is given one).
//!
//! Stores are bounded: each forgets a stream some time after its last event
//! (its TTL), keeps at most a configured number of events and bytes of one
//! stream (the oldest go first), and the memory store holds at most a
//! configured number of streams and bytes in all.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use futures_util::StreamExt;
//! use tower_sse_relay::store::{MemoryStore, Outcome, StoredEvent, StreamStore};
//! use tower_sse_relay::{ResumeFrom, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let id = StreamId::random()?;
//! store.create(&id).await?;
//! store.append(&id, &[StoredEvent::new(1, "data: a\n\n"), StoredEvent::new(2, "data: b\n\n")]).await?;
//! store.finish(&id, 2, Outcome::Completed).await?;
//!
//! let mut events = store.subscribe(&id, ResumeFrom::Earliest).await?.into_stream();
//! assert_eq!(events.next().await.transpose()?, Some(Bytes::from("data: a\n\n")));
//! assert_eq!(events.next().await.transpose()?, Some(Bytes::from("data: b\n\n")));
//! assert!(events.next().await.is_none());
//! # Ok(()) }
//! ```

mod any;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

pub use any::AnyStore;
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};

use crate::id::{ResumeFrom, StreamId};

/// One event of a stream as a store keeps it: its sequence number and its
/// encoded SSE frame (with the `id:` line, ending with the blank line).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The sequence number, from 1.
    pub seq: u64,
    /// The encoded frame.
    pub frame: Bytes,
}

impl StoredEvent {
    /// Event `seq` with its encoded `frame`.
    pub fn new(seq: u64, frame: impl Into<Bytes>) -> Self {
        Self {
            seq,
            frame: frame.into(),
        }
    }
}

impl fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEvent")
            .field("seq", &self.seq)
            .field("bytes", &self.frame.len())
            .finish()
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The upstream's body ended normally.
    Completed,
    /// The upstream's body failed, or its answer was not an event stream
    /// (the relay stored an in-band error event last).
    Failed,
    /// The relay stopped the generation at its configured limit (the relay
    /// stored an in-band error event last).
    Truncated,
}

impl Outcome {
    /// `completed`, `failed` or `truncated`: how stores write it, and the
    /// metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Truncated => "truncated",
        }
    }

    /// Reads [`as_str`](Self::as_str)'s output back.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            "truncated" => Some(Self::Truncated),
            _ => None,
        }
    }
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached (Redis down or too slow); the relay
    /// serves from its local fallback where it can.
    Unavailable(String),
    /// The stream is not (or no longer) kept.
    NotFound,
    /// A reader fell so far behind that the events it needs next were
    /// dropped to keep the stream within its bounds. The reader's response
    /// ends with an error; its client reconnects with the last id it got and
    /// is told the events are gone.
    Lagged,
    /// The stream's events are out of order (a bug in a store, or a Redis
    /// key written by something else); the reader stops rather than send a
    /// gap or a duplicate.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "the stream store is unavailable: {why}"),
            Self::NotFound => f.write_str("the stream is not kept (unknown or expired)"),
            Self::Lagged => f.write_str(
                "the reader fell behind and the events it needs were dropped from the stream",
            ),
            Self::Corrupt(why) => write!(f, "the stored stream is inconsistent: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Why a stream cannot be resumed from the point a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeError {
    /// No such stream is kept: it never existed, or it expired. `404`.
    UnknownStream,
    /// The stream is kept but never had this event (its sequence number is
    /// past the stream's last event). `404`.
    UnknownEvent,
    /// The events right after the requested one were dropped (the stream
    /// outgrew its bounds), so resuming would leave a gap. `410`.
    Expired,
    /// The store could not answer. `503`.
    Unavailable(String),
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownStream => f.write_str("no such stream is kept (unknown or expired)"),
            Self::UnknownEvent => f.write_str("the stream never had an event with this id"),
            Self::Expired => f.write_str(
                "the events after this id are no longer kept; resuming would leave a gap",
            ),
            Self::Unavailable(why) => write!(f, "the stream store is unavailable: {why}"),
        }
    }
}

impl std::error::Error for ResumeError {}

/// A boxed stream of encoded frames, as a [`Subscription`] yields them.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// A client's read of one stream: the kept events after its resume point,
/// then the live tail, each once and in order, ending after the stream's
/// last event. A [`StoreError`] item ends it.
///
/// Made by [`StreamStore::subscribe`]; one allocation per subscription.
pub struct Subscription {
    frames: Option<FrameStream>,
}

impl Subscription {
    /// A subscription reading `frames`.
    pub fn new(frames: FrameStream) -> Self {
        Self {
            frames: Some(frames),
        }
    }

    /// A subscription to a stream that has ended with nothing after the
    /// resume point: the relay answers `204 No Content`, which tells an
    /// `EventSource` to stop reconnecting.
    pub const fn finished() -> Self {
        Self { frames: None }
    }

    /// Whether this is [`Subscription::finished`].
    pub const fn is_finished(&self) -> bool {
        self.frames.is_none()
    }

    /// The frames as a [`Stream`].
    pub fn into_stream(self) -> FrameStream {
        self.frames
            .unwrap_or_else(|| Box::pin(futures_util::stream::empty()))
    }
}

impl Stream for Subscription {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.frames.as_mut() {
            Some(frames) => frames.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

/// Keeps resumable streams.
///
/// The relay calls [`create`](Self::create) once, then
/// [`append`](Self::append) with events numbered 1, 2, 3, … in order (a
/// batch at a time), then [`finish`](Self::finish) once, all from one task;
/// any number of [`subscribe`](Self::subscribe) calls may run meanwhile, from
/// any replica sharing the store. A store must deliver to each subscriber
/// every kept event after its resume point exactly once, in order, then the
/// events appended later, and end the subscription after the event the
/// stream finished at.
///
/// Implementations are cheap to clone (an `Arc` inside); every clone shares
/// the same streams.
pub trait StreamStore: Clone + Send + Sync + 'static {
    /// Starts keeping stream `id`, empty.
    fn create(&self, id: &StreamId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends events to stream `id`; their sequence numbers follow the
    /// last appended one without a gap.
    fn append(
        &self,
        id: &StreamId,
        events: &[StoredEvent],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks stream `id` as ended after event `last_seq` (0: no event).
    fn finish(
        &self,
        id: &StreamId,
        last_seq: u64,
        outcome: Outcome,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads stream `id` from `from` on.
    ///
    /// The resume point is checked before anything is sent, so a client can
    /// be told at once why it can't resume ([`ResumeError`]). A point equal
    /// to the end of a finished stream gives [`Subscription::finished`].
    fn subscribe(
        &self,
        id: &StreamId,
        from: ResumeFrom,
    ) -> impl Future<Output = Result<Subscription, ResumeError>> + Send;
}
