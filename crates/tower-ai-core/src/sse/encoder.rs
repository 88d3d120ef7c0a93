//! Writing events in the `text/event-stream` format.

use std::fmt::{self, Write as _};

use bytes::{BufMut, Bytes, BytesMut};

use super::event::Event;

/// Why an event could not be written.
///
/// The encoder never writes a frame that a parser would read differently
/// from the [`Event`] it was given, so a value that cannot be carried on one
/// line is refused instead of being cut or escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncodeError {
    /// The event type contains CR or LF: it would end the `event:` line early.
    LineBreakInEventType,
    /// The id contains CR or LF: it would end the `id:` line early.
    LineBreakInId,
    /// The id contains NUL: a parser ignores such an `id` field.
    NulInId,
    /// The comment contains CR or LF: the rest would be read as a field.
    LineBreakInComment,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LineBreakInEventType => "SSE event type contains a line break (CR or LF)",
            Self::LineBreakInId => "SSE event id contains a line break (CR or LF)",
            Self::NulInId => "SSE event id contains NUL, which parsers ignore",
            Self::LineBreakInComment => "SSE comment contains a line break (CR or LF)",
        })
    }
}

impl std::error::Error for EncodeError {}

/// Appends `event` to `dst` in the `text/event-stream` format, ending with
/// the blank line that dispatches it.
///
/// Lines are written in this order: the comment (`: text`), `event`, `id`,
/// `retry` (whole milliseconds), then one `data` line per line of the data:
/// CR, LF and CRLF inside the data all split it, so a parser gets the data
/// back with every line break as LF (the format has no way to carry a CR).
/// A value starting with a space keeps it, since a space always follows the
/// colon.
///
/// # Errors
///
/// An event type, id or comment containing CR or LF, and an id containing
/// NUL, are refused; nothing is written to `dst` then.
///
/// ```
/// use bytes::BytesMut;
/// use tower_ai_core::sse::{encode, EncodeError, Event};
///
/// let mut out = BytesMut::new();
/// encode(&Event::new().with_event("delta").with_data("a\r\nb"), &mut out)?;
/// assert_eq!(&out[..], b"event: delta\ndata: a\ndata: b\n\n");
///
/// let bad = Event::new().with_id("1\n2").with_data("x");
/// assert_eq!(encode(&bad, &mut out), Err(EncodeError::LineBreakInId));
/// # Ok::<(), EncodeError>(())
/// ```
pub fn encode(event: &Event, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let comment = event.raw_comment();
    let event_type = event.raw_event();
    let id = event.raw_id();
    if comment.is_some_and(has_line_break) {
        return Err(EncodeError::LineBreakInComment);
    }
    if event_type.is_some_and(has_line_break) {
        return Err(EncodeError::LineBreakInEventType);
    }
    if let Some(id) = id {
        if has_line_break(id) {
            return Err(EncodeError::LineBreakInId);
        }
        if memchr::memchr(0, id).is_some() {
            return Err(EncodeError::NulInId);
        }
    }

    dst.reserve(encoded_len_hint(event));
    if let Some(comment) = comment {
        put_line(dst, b"", comment);
    }
    if let Some(event_type) = event_type {
        put_line(dst, b"event", event_type);
    }
    if let Some(id) = id {
        put_line(dst, b"id", id);
    }
    if let Some(retry) = event.retry() {
        // Writing into a `BytesMut` cannot fail: it grows as needed.
        let _ = writeln!(dst, "retry: {}", retry.as_millis());
    }
    if let Some(mut data) = event.raw_data() {
        loop {
            match memchr::memchr2(b'\r', b'\n', data) {
                Some(end) => {
                    put_line(dst, b"data", &data[..end]);
                    let after = if data[end] == b'\r' && data.get(end + 1) == Some(&b'\n') {
                        end + 2
                    } else {
                        end + 1
                    };
                    data = &data[after..];
                }
                None => {
                    put_line(dst, b"data", data);
                    break;
                }
            }
        }
    }
    dst.put_u8(b'\n');
    Ok(())
}

/// Appends a comment block (`: text` and a blank line) to `dst`: the usual
/// keep-alive heartbeat, which a client ignores. An empty `text` writes
/// `:\n\n`.
///
/// # Errors
///
/// [`EncodeError::LineBreakInComment`] when `text` contains CR or LF; nothing
/// is written then.
pub fn encode_comment(text: &str, dst: &mut BytesMut) -> Result<(), EncodeError> {
    if has_line_break(text.as_bytes()) {
        return Err(EncodeError::LineBreakInComment);
    }
    dst.reserve(text.len() + 4);
    put_line(dst, b"", text.as_bytes());
    dst.put_u8(b'\n');
    Ok(())
}

/// Roughly the encoded size of `event`, for reserving capacity once.
/// The encoder's side of [`Event`]: its wire format.
impl Event {
    /// Appends this event in the wire format to `dst`; see [`encode`].
    ///
    /// # Errors
    ///
    /// When a field cannot be written as one line; `dst` is then unchanged.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode(self, dst)
    }

    /// This event in the wire format, as one [`Bytes`]; see [`encode`].
    ///
    /// # Errors
    ///
    /// When a field cannot be written as one line.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::with_capacity(encoded_len_hint(self));
        encode(self, &mut dst)?;
        Ok(dst.freeze())
    }
}

pub(crate) fn encoded_len_hint(event: &Event) -> usize {
    const PER_LINE: usize = "event: \n".len();
    let len = |field: Option<&[u8]>| field.map_or(0, |value| value.len() + PER_LINE);
    let data = event.raw_data().map_or(0, |data| {
        data.len() + PER_LINE * (1 + memchr::memchr_iter(b'\n', data).count())
    });
    len(event.raw_comment())
        + len(event.raw_event())
        + len(event.raw_id())
        + event.retry().map_or(0, |_| 28)
        + data
        + 1
}

/// Writes `name: value\n`, or `name:\n` for an empty value (the space after
/// the colon is what lets a value start with a space of its own).
fn put_line(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    if value.is_empty() {
        dst.put_slice(b":\n");
    } else {
        dst.put_slice(b": ");
        dst.put_slice(value);
        dst.put_u8(b'\n');
    }
}

fn has_line_break(value: &[u8]) -> bool {
    memchr::memchr2(b'\r', b'\n', value).is_some()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn encoded(event: &Event) -> Result<String, EncodeError> {
        let mut dst = BytesMut::new();
        encode(event, &mut dst)?;
        Ok(String::from_utf8_lossy(&dst).into_owned())
    }

    #[test]
    fn writes_every_field_in_order() {
        let event = Event::new()
            .with_comment("hi")
            .with_event("delta")
            .with_id("7")
            .with_retry(Duration::from_millis(1500))
            .with_data("x");
        assert_eq!(
            encoded(&event),
            Ok(": hi\nevent: delta\nid: 7\nretry: 1500\ndata: x\n\n".to_owned())
        );
    }

    #[test]
    fn splits_data_on_every_line_break() {
        let event = Event::new().with_data("a\rb\nc\r\nd\n\re");
        assert_eq!(
            encoded(&event),
            Ok("data: a\ndata: b\ndata: c\ndata: d\ndata:\ndata: e\n\n".to_owned())
        );
        assert_eq!(
            encoded(&Event::new().with_data("")),
            Ok("data:\n\n".to_owned())
        );
        assert_eq!(
            encoded(&Event::new().with_data("\n")),
            Ok("data:\ndata:\n\n".to_owned())
        );
        assert_eq!(
            encoded(&Event::new().with_data(" x")),
            Ok("data:  x\n\n".to_owned())
        );
    }

    #[test]
    fn refuses_what_cannot_be_one_line() {
        let data = || Event::new().with_data("x");
        assert_eq!(
            encoded(&data().with_event("a\rb")),
            Err(EncodeError::LineBreakInEventType)
        );
        assert_eq!(
            encoded(&data().with_id("a\nb")),
            Err(EncodeError::LineBreakInId)
        );
        assert_eq!(encoded(&data().with_id("a\0b")), Err(EncodeError::NulInId));
        assert_eq!(
            encoded(&data().with_comment("a\r\nb")),
            Err(EncodeError::LineBreakInComment)
        );
        let mut dst = BytesMut::from(&b"kept"[..]);
        assert!(encode(&data().with_id("\n"), &mut dst).is_err());
        assert_eq!(&dst[..], b"kept");
    }

    #[test]
    fn empty_id_resets_and_comments_heartbeat() {
        assert_eq!(encoded(&Event::new().with_id("")), Ok("id:\n\n".to_owned()));
        let mut dst = BytesMut::new();
        assert_eq!(encode_comment("", &mut dst), Ok(()));
        assert_eq!(encode_comment("keep-alive", &mut dst), Ok(()));
        assert_eq!(&dst[..], b":\n\n: keep-alive\n\n");
        assert_eq!(
            encode_comment("a\nb", &mut dst),
            Err(EncodeError::LineBreakInComment)
        );
    }
}
