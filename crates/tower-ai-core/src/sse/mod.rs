//! Server-Sent Events codec: a spec-exact, incremental parser and an encoder
//! that never writes a malformed frame.
//!
//! - [`Decoder`] parses `text/event-stream` bytes pushed in chunks of any
//!   size, split anywhere, following the WHATWG HTML interpretation rules
//!   exactly (BOM, CR/LF/CRLF line ends, comments, `data` joining, `id`
//!   persistence, `retry` validation, discarded unfinished events). Each byte
//!   is scanned once, and a line that arrives whole is sliced out of its
//!   chunk, not copied. One event's size is bounded.
//! - [`EventStream`] wraps any `Stream` of byte chunks (a response body's data
//!   frames) and yields [`Event`]s.
//! - [`encode`] (or [`Event::encode`], [`Event::to_bytes`]) writes an event;
//!   data with line breaks becomes several `data:` lines, and a type, id or
//!   comment that cannot be one line is an [`EncodeError`], not a panic.
//!   [`encode_comment`] writes keep-alive heartbeats.
//!
//! A layer that watches a response stream pushes each body chunk into a
//! [`Decoder`] as it passes, then forwards the chunk unchanged; a relay
//! re-encodes the [`Event`]s it decoded.
//!
//! # Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use tower_ai_core::sse::{Decoder, Event};
//!
//! // Encode two events; the second one's data spans two lines.
//! let mut wire = BytesMut::new();
//! Event::new().with_id("1").with_data("Hello").encode(&mut wire)?;
//! Event::new().with_event("done").with_data("line one\r\nline two").encode(&mut wire)?;
//! let wire: Bytes = wire.freeze();
//!
//! // Decode them again, fed one byte at a time.
//! let mut decoder = Decoder::new();
//! let mut events = Vec::new();
//! for i in 0..wire.len() {
//!     decoder.push(wire.slice(i..i + 1));
//!     while let Some(event) = decoder.next_event() {
//!         events.push(event?);
//!     }
//! }
//! decoder.finish();
//!
//! assert_eq!(events.len(), 2);
//! assert_eq!((events[0].event_type(), events[0].data()), ("message", "Hello"));
//! assert_eq!(events[1].event_type(), "done");
//! assert_eq!(events[1].data(), "line one\nline two"); // CRLF comes back as LF
//! assert_eq!(events[1].id(), Some("1")); // the last event ID persists
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decoder;
mod encoder;
mod event;
mod stream;

pub use decoder::{DEFAULT_MAX_EVENT_SIZE, DecodeError, Decoder};
pub use encoder::{EncodeError, encode, encode_comment};
pub use event::Event;
pub use stream::{EventStream, StreamError};
