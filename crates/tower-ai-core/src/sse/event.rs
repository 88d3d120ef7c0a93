//! The [`Event`] type: what the decoder dispatches and what the encoder writes.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// The event type a listener sees when the stream did not name one.
const DEFAULT_EVENT_TYPE: &str = "message";

/// One Server-Sent Event.
///
/// A decoded event carries what the WHATWG interpretation rules give a
/// browser's `MessageEvent`: the data, the type, the last event ID and, in
/// addition, the reconnection time if its block set one. An event made with
/// the `with_*` builders is the input of the [encoder](super::encode).
///
/// Every string is stored in a [`Bytes`] that holds valid UTF-8, so a clone
/// costs a few reference-count increments and no copy; the decoder slices the
/// network chunk itself when a `data` line arrived whole. The `&str` accessors
/// check UTF-8 validity on each call (a pass over the bytes, no allocation);
/// [`data_bytes`](Self::data_bytes) hands out the bytes without that pass.
///
/// ```
/// use std::time::Duration;
/// use tower_ai_core::sse::Event;
///
/// let event = Event::new()
///     .with_event("delta")
///     .with_id("42")
///     .with_retry(Duration::from_secs(3))
///     .with_data("first line\nsecond line");
/// assert_eq!(event.event_type(), "delta");
/// assert_eq!(event.data(), "first line\nsecond line");
/// assert_eq!(event.id(), Some("42"));
/// assert_eq!(event.retry(), Some(Duration::from_secs(3)));
/// assert_eq!(Event::new().with_data("x").event_type(), "message");
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// The data buffer (lines joined by LF, no trailing LF); `None` when no
    /// `data` field is present, which the encoder then leaves out.
    data: Option<Bytes>,
    /// The event type buffer; `None` when unset or empty.
    event: Option<Bytes>,
    /// The last event ID; `None` when never set.
    id: Option<Bytes>,
    /// The reconnection time set in this event's block.
    retry: Option<Duration>,
    /// A comment line, written first by the encoder; the decoder never sets
    /// it. Boxed rather than `Bytes` to keep the decoder's events small.
    comment: Option<Box<str>>,
}

impl Event {
    /// An empty event: no data, the default type, no id, no retry, no comment.
    ///
    /// Encoded as it is, it is a lone blank line, which dispatches nothing.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            data: None,
            event: None,
            id: None,
            retry: None,
            comment: None,
        }
    }

    /// Sets the data. Line breaks (CR, LF or CRLF) are allowed: the encoder
    /// writes one `data:` line per line, and a decoder joins them with LF.
    #[must_use]
    pub fn with_data(mut self, data: impl Into<String>) -> Self {
        self.data = Some(Bytes::from(data.into()));
        self
    }

    /// Sets the event type (the `event` field). The encoder refuses a type
    /// containing CR or LF. An empty type means the default, `message`.
    #[must_use]
    pub fn with_event(mut self, event_type: impl Into<String>) -> Self {
        let event_type = event_type.into();
        self.event = (!event_type.is_empty()).then(|| Bytes::from(event_type));
        self
    }

    /// Sets the id (the `id` field). An empty id resets the client's last
    /// event ID. The encoder refuses an id containing CR, LF or NUL.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(Bytes::from(id.into()));
        self
    }

    /// Sets the reconnection time (the `retry` field), written in whole
    /// milliseconds.
    #[must_use]
    pub const fn with_retry(mut self, retry: Duration) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets a comment, written as a `: comment` line before the fields. A
    /// comment alone (no data) makes a heartbeat that keeps a connection busy
    /// without dispatching anything. The encoder refuses a comment containing
    /// CR or LF.
    #[must_use]
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into().into_boxed_str());
        self
    }

    /// The data, or `""` when there is none.
    #[must_use]
    pub fn data(&self) -> &str {
        self.data.as_ref().map_or("", as_str)
    }

    /// The data as bytes (valid UTF-8), without the validity pass of
    /// [`data`](Self::data): what `serde_json::from_slice` wants.
    #[must_use]
    pub fn data_bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }

    /// The data as a shared [`Bytes`] (valid UTF-8); cloning it costs a
    /// reference-count increment.
    #[must_use]
    pub fn data_shared(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }

    /// Whether a `data` field is present (a decoded event always has one, it
    /// may be empty).
    #[must_use]
    pub const fn has_data(&self) -> bool {
        self.data.is_some()
    }

    /// The event type a listener sees: the `event` field, or `message` when
    /// the block had none (or an empty one).
    #[must_use]
    pub fn event_type(&self) -> &str {
        self.event.as_ref().map_or(DEFAULT_EVENT_TYPE, as_str)
    }

    /// The `event` field as given, or `None` when it was not set (or empty),
    /// which [`event_type`](Self::event_type) reports as `message`.
    #[must_use]
    pub fn event(&self) -> Option<&str> {
        self.event.as_ref().map(as_str)
    }

    /// The id.
    ///
    /// For a decoded event this is the stream's last event ID buffer at
    /// dispatch: it persists across events, so an event without an `id` line
    /// carries the previous one, and `Some("")` means an `id` line reset it.
    /// `None` means no `id` line has been seen in the stream (a browser reports
    /// `""` in both cases).
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        self.id.as_ref().map(as_str)
    }

    /// The reconnection time, if a valid `retry` field (ASCII digits only)
    /// appeared in this event's block.
    #[must_use]
    pub const fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// The comment set with [`with_comment`](Self::with_comment).
    #[must_use]
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// Builds a decoded event; every `Bytes` must hold valid UTF-8.
    pub(crate) const fn decoded(
        data: Bytes,
        event: Option<Bytes>,
        id: Option<Bytes>,
        retry: Option<Duration>,
    ) -> Self {
        Self {
            data: Some(data),
            event,
            id,
            retry,
            comment: None,
        }
    }

    pub(crate) fn raw_data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    pub(crate) fn raw_event(&self) -> Option<&[u8]> {
        self.event.as_deref()
    }

    pub(crate) fn raw_id(&self) -> Option<&[u8]> {
        self.id.as_deref()
    }

    pub(crate) fn raw_comment(&self) -> Option<&[u8]> {
        self.comment.as_deref().map(str::as_bytes)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Event");
        if let Some(event) = self.event() {
            s.field("event", &event);
        }
        if self.has_data() {
            s.field("data", &self.data());
        }
        if let Some(id) = self.id() {
            s.field("id", &id);
        }
        if let Some(retry) = self.retry {
            s.field("retry", &retry);
        }
        if let Some(comment) = self.comment() {
            s.field("comment", &comment);
        }
        s.finish()
    }
}

/// Reads bytes that are valid UTF-8 by construction (builders take `String`s,
/// the decoder replaces invalid sequences), so the fallback is never taken.
fn as_str(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_small_enough_to_move_cheaply() {
        // Past 128 bytes, moving an event (each `next_event`, each poll) became
        // a `memcpy` call that showed up in the parse benchmark.
        assert!(size_of::<Event>() <= 128);
        assert!(size_of::<Option<Result<Event, super::super::DecodeError>>>() <= 128);
    }

    #[test]
    fn builders_and_accessors() {
        let event = Event::new().with_comment("c").with_event("").with_data("d");
        assert_eq!(event.comment(), Some("c"));
        assert_eq!(event.event(), None);
        assert_eq!(event.event_type(), "message");
        assert_eq!(event.data_shared(), Bytes::from_static(b"d"));
        assert_eq!(Event::new().data(), "");
        assert!(!Event::new().has_data());
        assert_eq!(Event::new(), Event::default());
        assert_eq!(
            format!("{:?}", event),
            r#"Event { data: "d", comment: "c" }"#
        );
    }
}
