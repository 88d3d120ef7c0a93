//! The incremental parser: bytes in, [`Event`]s out.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::event::Event;

/// The UTF-8 byte order mark, stripped once at the start of a stream.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// The default of [`Decoder::with_max_event_size`]: 16 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;

/// Why the decoder could not dispatch an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeError {
    /// The data of one event plus the line being read grew past
    /// [`Decoder::max_event_size`]. The decoder dropped that event and skips
    /// the rest of its block, up to and including the next blank line, then
    /// carries on with the next event.
    EventTooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventTooLarge { limit } => {
                write!(f, "SSE event larger than the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// An incremental, push-style `text/event-stream` parser.
///
/// Feed it chunks as they arrive with [`push`](Self::push), in any sizes and
/// split anywhere (inside a CRLF, inside a UTF-8 character, inside the BOM),
/// then take the events that are complete with [`next_event`](Self::next_event)
/// or [`events`](Self::events). The result does not depend on where the
/// chunks were split.
///
/// It follows the WHATWG HTML interpretation rules for event streams: one
/// leading BOM is stripped; lines end at CR, LF or CRLF; lines starting with
/// `:` are comments; `data` lines are joined with LF; `event` sets the type,
/// `id` the last event ID (unless it contains NUL), `retry` the reconnection
/// time (ASCII digits only); one space after the colon is dropped; a line
/// without a colon is a field name with an empty value; other fields are
/// ignored; a blank line dispatches the event if its data buffer is not
/// empty. Invalid UTF-8 becomes U+FFFD. What follows the last blank line when
/// the input ends is discarded, as a browser does.
///
/// Cost: each byte is scanned once (`memchr` for line ends), however the
/// input is split. A line that arrives whole inside one chunk is not copied:
/// its value is a slice of the chunk. Only a line split across chunks, and
/// the data of an event with more than one `data` line, are copied into a
/// buffer; that buffering is bounded by
/// [`max_event_size`](Self::max_event_size).
///
/// ```
/// use tower_ai_core::sse::Decoder;
///
/// let mut decoder = Decoder::new();
/// decoder.push(&b"\xEF\xBB\xBFevent: delta\r\nid: 1\r\ndata: hel"[..]);
/// assert!(decoder.next_event().is_none());
/// decoder.push(&b"lo\r"[..]);
/// decoder.push(&b"\n\r\n: keep-alive\n\ndata: no id line\n\n"[..]);
///
/// let events: Vec<_> = decoder.events().collect::<Result<_, _>>()?;
/// assert_eq!(events[0].event_type(), "delta");
/// assert_eq!(events[0].data(), "hello");
/// assert_eq!(events[1].event_type(), "message");
/// assert_eq!(events[1].id(), Some("1")); // the last event ID persists
/// # Ok::<(), tower_ai_core::sse::DecodeError>(())
/// ```
#[derive(Clone)]
pub struct Decoder {
    input: Input,
    parser: Parser,
}

impl Decoder {
    /// A decoder at the start of a stream, with the
    /// [default](DEFAULT_MAX_EVENT_SIZE) event size limit.
    #[must_use]
    pub fn new() -> Self {
        Self {
            input: Input {
                queue: VecDeque::new(),
                pos: 0,
                bom: Bom::Matching(0),
                finished: false,
            },
            parser: Parser {
                line: BytesMut::new(),
                discard_line: false,
                after_cr: false,
                skip_block: false,
                data: DataBuffer::default(),
                event_type: None,
                last_event_id: None,
                block_retry: None,
                retry: None,
                max_event_size: DEFAULT_MAX_EVENT_SIZE,
            },
        }
    }

    /// Sets the most bytes buffered for one event: its data (with the LF
    /// between lines) plus the line being read. Comment lines don't count and
    /// are never buffered. Past the limit, [`next_event`](Self::next_event)
    /// returns [`DecodeError::EventTooLarge`] once, and the decoder skips the
    /// rest of that event's block (its fields are ignored, `id` and `retry`
    /// included) up to the next blank line.
    #[must_use]
    pub const fn with_max_event_size(mut self, bytes: usize) -> Self {
        self.parser.max_event_size = bytes;
        self
    }

    /// The limit set by [`with_max_event_size`](Self::with_max_event_size).
    #[must_use]
    pub const fn max_event_size(&self) -> usize {
        self.parser.max_event_size
    }

    /// Starts the last event ID buffer at `id` instead of empty, for a
    /// stream that continues one whose last ID is known. Events dispatched
    /// before the stream sends an `id` line carry it.
    #[must_use]
    pub fn with_last_event_id(mut self, id: impl Into<String>) -> Self {
        self.parser.last_event_id = Some(Bytes::from(id.into()));
        self
    }

    /// Adds a chunk of the stream. Nothing is parsed until the events are
    /// taken; the chunk is kept (not copied) until then, so push and drain in
    /// turn to keep memory bounded by one chunk plus
    /// [`max_event_size`](Self::max_event_size).
    ///
    /// Empty chunks are ignored, and so is every chunk pushed after
    /// [`finish`](Self::finish).
    pub fn push(&mut self, chunk: impl Into<Bytes>) {
        self.input.push(chunk.into());
    }

    /// Copies a borrowed chunk into the decoder; [`push`](Self::push) avoids
    /// the copy when the chunk is already a [`Bytes`] (or a `Vec<u8>`).
    pub fn push_slice(&mut self, chunk: &[u8]) {
        if !chunk.is_empty() {
            self.input.push(Bytes::copy_from_slice(chunk));
        }
    }

    /// Marks the end of the input. The events already complete in the pushed
    /// chunks still come out of [`next_event`](Self::next_event); what
    /// follows the last blank line is discarded, as the spec says.
    pub fn finish(&mut self) {
        self.input.finished = true;
    }

    /// Whether [`finish`](Self::finish) was called.
    #[must_use]
    pub const fn is_finished(&self) -> bool {
        self.input.finished
    }

    /// The next complete event of the chunks pushed so far, an error, or
    /// `None` when more input is needed (or, after [`finish`](Self::finish),
    /// when the stream is over).
    ///
    /// # Errors
    ///
    /// [`DecodeError::EventTooLarge`], after which the decoder carries on
    /// with the next event; calling `next_event` again is fine.
    pub fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        let Self { input, parser } = self;
        loop {
            let chunk = input.queue.front()?;
            let mut start = input.pos;
            if start == chunk.len() {
                input.queue.pop_front();
                input.pos = 0;
                continue;
            }
            if parser.after_cr {
                parser.after_cr = false;
                if chunk[start] == b'\n' {
                    // The LF of a CRLF split across chunks: the line already ended.
                    start += 1;
                    input.pos = start;
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', &chunk[start..]) {
                Some(offset) => {
                    let end = start + offset;
                    input.pos = if chunk[end] == b'\n' {
                        end + 1
                    } else {
                        match chunk.get(end + 1) {
                            Some(b'\n') => end + 2,
                            Some(_) => end + 1,
                            None => {
                                parser.after_cr = true;
                                end + 1
                            }
                        }
                    };
                    if let Some(result) = parser.line_end(chunk, start, end) {
                        return Some(result);
                    }
                }
                None => {
                    let result = parser.partial_line(&chunk[start..]);
                    input.queue.pop_front();
                    input.pos = 0;
                    if let Some(error) = result {
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    /// The complete events of the chunks pushed so far, as an iterator that
    /// stops when more input is needed.
    pub fn events(&mut self) -> impl Iterator<Item = Result<Event, DecodeError>> + '_ {
        std::iter::from_fn(move || self.next_event())
    }

    /// The reconnection time set by the last valid `retry` field so far,
    /// including one in a block that dispatched no event.
    #[must_use]
    pub const fn retry(&self) -> Option<Duration> {
        self.parser.retry
    }

    /// The last event ID buffer: set by each `id` field as it is read (not
    /// at dispatch), `None` until the first one.
    #[must_use]
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser
            .last_event_id
            .as_ref()
            .map(|id| std::str::from_utf8(id).unwrap_or_default())
    }

    /// Whether the stream is in the middle of something that ending the
    /// input now would lose: pushed chunks not yet parsed, a line without its
    /// line end, or fields of an event not yet ended by a blank line. After
    /// the events are drained, this tells a stream that ended cleanly from a
    /// truncated one.
    #[must_use]
    pub fn is_mid_event(&self) -> bool {
        !self.input.queue.is_empty()
            || matches!(self.input.bom, Bom::Matching(held) if held > 0)
            || self.parser.is_mid_event()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field(
                "queued_bytes",
                &self
                    .input
                    .queue
                    .iter()
                    .map(Bytes::len)
                    .sum::<usize>()
                    .saturating_sub(self.input.pos),
            )
            .field("finished", &self.input.finished)
            .field("line_bytes", &self.parser.line.len())
            .field("data_bytes", &self.parser.data.len)
            .field("last_event_id", &self.last_event_id())
            .field("retry", &self.parser.retry)
            .field("max_event_size", &self.parser.max_event_size)
            .finish_non_exhaustive()
    }
}

/// Pushed chunks not parsed yet.
#[derive(Clone)]
struct Input {
    queue: VecDeque<Bytes>,
    /// Offset of the first unparsed byte of `queue.front()`.
    pos: usize,
    bom: Bom,
    finished: bool,
}

#[derive(Clone, Copy)]
enum Bom {
    /// At the start of the stream: this many bytes of a BOM were held back.
    Matching(usize),
    /// Past the start of the stream.
    Done,
}

impl Input {
    fn push(&mut self, mut chunk: Bytes) {
        if chunk.is_empty() || self.finished {
            return;
        }
        if let Bom::Matching(held) = self.bom {
            let rest_of_bom = &BOM[held..];
            let matched = chunk
                .iter()
                .zip(rest_of_bom)
                .take_while(|(byte, bom)| byte == bom)
                .count();
            if matched == rest_of_bom.len() {
                self.bom = Bom::Done;
                chunk.advance(matched);
                if chunk.is_empty() {
                    return;
                }
            } else if matched == chunk.len() {
                self.bom = Bom::Matching(held + matched);
                return;
            } else {
                // Not a BOM after all: the bytes held back are text.
                self.bom = Bom::Done;
                if held > 0 {
                    self.queue.push_back(Bytes::from_static(&BOM[..held]));
                }
            }
        }
        self.queue.push_back(chunk);
    }
}

/// The line and event state of the interpretation rules.
#[derive(Clone)]
struct Parser {
    /// The start of the current line, when it began in an earlier chunk.
    line: BytesMut,
    /// The rest of the current line is dropped: a comment, a line of a block
    /// being skipped, or the line that went past the size limit.
    discard_line: bool,
    /// The last chunk ended in CR, so an LF starting the next one belongs to it.
    after_cr: bool,
    /// After [`DecodeError::EventTooLarge`]: ignore lines up to a blank one.
    skip_block: bool,
    data: DataBuffer,
    /// The event type buffer; `None` when empty.
    event_type: Option<Bytes>,
    last_event_id: Option<Bytes>,
    /// A valid `retry` of the current block, reported with its event.
    block_retry: Option<Duration>,
    /// The stream's reconnection time.
    retry: Option<Duration>,
    max_event_size: usize,
}

impl Parser {
    /// A chunk ends inside a line: keep its bytes for when the line ends.
    fn partial_line(&mut self, bytes: &[u8]) -> Option<DecodeError> {
        if self.discard_line {
            return None;
        }
        if self.line.is_empty() && (self.skip_block || bytes.first() == Some(&b':')) {
            self.discard_line = true;
            return None;
        }
        if self.line.len() + bytes.len() > self.room() {
            self.discard_line = true;
            self.line.clear();
            return Some(self.too_large());
        }
        self.line.extend_from_slice(bytes);
        None
    }

    /// `chunk[start..end]` ends the current line.
    fn line_end(
        &mut self,
        chunk: &Bytes,
        start: usize,
        end: usize,
    ) -> Option<Result<Event, DecodeError>> {
        if self.discard_line {
            self.discard_line = false;
            return None;
        }
        if self.line.is_empty() {
            self.process_line(chunk, start, end)
        } else {
            self.line.extend_from_slice(&chunk[start..end]);
            let line = self.line.split().freeze();
            self.process_line(&line, 0, line.len())
        }
    }

    /// Interprets the line `source[start..end]` (without its line end).
    fn process_line(
        &mut self,
        source: &Bytes,
        start: usize,
        end: usize,
    ) -> Option<Result<Event, DecodeError>> {
        let line = &source[start..end];
        let Some(&first) = line.first() else {
            if self.skip_block {
                self.skip_block = false;
                self.reset_block();
                return None;
            }
            return self.dispatch().map(Ok);
        };
        if self.skip_block || first == b':' {
            return None;
        }
        if line.len() > self.room() {
            return Some(Err(self.too_large()));
        }
        let (name, value_start) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value_start = start + colon + 1;
                let value_start = if value_start < end && source[value_start] == b' ' {
                    value_start + 1
                } else {
                    value_start
                };
                (&line[..colon], value_start)
            }
            None => (line, end),
        };
        let value = &source[value_start..end];
        match name {
            b"data" => self.data.push(text(source.slice(value_start..end))),
            b"event" => {
                self.event_type = (!value.is_empty()).then(|| text(source.slice(value_start..end)));
            }
            // An id containing NUL is ignored, leaving the buffer as it was.
            b"id" if memchr::memchr(0, value).is_none() => {
                self.last_event_id = Some(text(source.slice(value_start..end)));
            }
            b"retry" => {
                if let Some(millis) = parse_retry(value) {
                    let retry = Duration::from_millis(millis);
                    self.retry = Some(retry);
                    self.block_retry = Some(retry);
                }
            }
            // Unknown fields (and ignored ids) change nothing.
            _ => {}
        }
        None
    }

    /// A blank line: the "dispatch the event" steps of the spec.
    fn dispatch(&mut self) -> Option<Event> {
        let retry = self.block_retry.take();
        let event_type = self.event_type.take();
        let data = self.data.take()?;
        Some(Event::decoded(
            data,
            event_type,
            self.last_event_id.clone(),
            retry,
        ))
    }

    /// How many more bytes the current line may have.
    const fn room(&self) -> usize {
        self.max_event_size.saturating_sub(self.data.len)
    }

    fn too_large(&mut self) -> DecodeError {
        self.skip_block = true;
        self.reset_block();
        DecodeError::EventTooLarge {
            limit: self.max_event_size,
        }
    }

    fn reset_block(&mut self) {
        self.data.clear();
        self.event_type = None;
        self.block_retry = None;
    }

    fn is_mid_event(&self) -> bool {
        !self.line.is_empty()
            || self.discard_line
            || self.skip_block
            || self.data.lines > 0
            || self.event_type.is_some()
    }
}

/// The data buffer, kept as the lines joined by LF without the final LF
/// that the spec appends and then removes at dispatch.
#[derive(Clone, Default)]
struct DataBuffer {
    /// The only line, while there is one: a slice of the input, not a copy.
    first: Bytes,
    /// From the second line on, all lines joined by LF.
    joined: BytesMut,
    lines: usize,
    /// The length of the spec's data buffer: every line plus one LF each.
    len: usize,
}

impl DataBuffer {
    fn push(&mut self, value: Bytes) {
        self.lines += 1;
        self.len += value.len() + 1;
        match self.lines {
            1 => self.first = value,
            2 => {
                let first = std::mem::take(&mut self.first);
                self.joined.reserve(first.len() + 1 + value.len());
                self.joined.extend_from_slice(&first);
                self.joined.put_u8(b'\n');
                self.joined.extend_from_slice(&value);
            }
            _ => {
                self.joined.put_u8(b'\n');
                self.joined.extend_from_slice(&value);
            }
        }
    }

    /// The data to dispatch, or `None` when the buffer is empty.
    fn take(&mut self) -> Option<Bytes> {
        let data = match self.lines {
            0 => return None,
            1 => std::mem::take(&mut self.first),
            _ => self.joined.split().freeze(),
        };
        self.lines = 0;
        self.len = 0;
        Some(data)
    }

    fn clear(&mut self) {
        self.first = Bytes::new();
        self.joined.clear();
        self.lines = 0;
        self.len = 0;
    }
}

/// The bytes as UTF-8 text: the same bytes when valid (no copy), otherwise
/// a copy with each invalid sequence replaced by U+FFFD.
///
/// Decoding each value on its own gives what decoding the whole stream
/// first would: values are cut at ASCII bytes (CR, LF, `:`, space), which
/// never occur inside a multi-byte sequence.
fn text(bytes: Bytes) -> Bytes {
    match std::str::from_utf8(&bytes) {
        Ok(_) => bytes,
        Err(_) => Bytes::from(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

/// A `retry` value: ASCII digits only, at least one; a value too large for
/// `u64` milliseconds saturates.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0_u64, |millis, digit| {
        millis
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, input: &[u8]) -> Vec<Result<Event, DecodeError>> {
        decoder.push_slice(input);
        decoder.finish();
        decoder.events().collect()
    }

    #[test]
    fn single_line_data_is_a_slice_of_the_chunk() {
        let chunk = Bytes::from_static(b"data: hello\n\n");
        let mut decoder = Decoder::new();
        decoder.push(chunk.clone());
        let event = decoder.next_event().and_then(Result::ok);
        let data = event.map(|event| event.data_shared());
        assert_eq!(data.as_deref(), Some(&b"hello"[..]));
        // Same memory as the chunk: no copy was made.
        assert_eq!(data.map(|data| data.as_ptr()), Some(chunk[6..].as_ptr()));
    }

    #[test]
    fn too_large_skips_to_the_next_blank_line() {
        let mut decoder = Decoder::new().with_max_event_size(8);
        let events = decode_all(
            &mut decoder,
            b"data: 12345\ndata: 6789\nid: skipped\n\ndata: ok\n\n: a long comment is fine\n\n",
        );
        assert_eq!(
            events,
            vec![
                Err(DecodeError::EventTooLarge { limit: 8 }),
                Ok(Event::decoded(Bytes::from_static(b"ok"), None, None, None)),
            ]
        );
    }

    #[test]
    fn too_large_is_reported_the_same_for_split_lines() {
        let input = b"data: 0123456789abcdef\nretry: 5\n\nevent: e\ndata: x\n\n";
        let mut whole = Decoder::new().with_max_event_size(10);
        let expected = decode_all(&mut whole, input);
        assert_eq!(expected.len(), 2);
        assert_eq!(whole.retry(), None);
        let mut split = Decoder::new().with_max_event_size(10);
        for byte in input {
            split.push_slice(std::slice::from_ref(byte));
        }
        split.finish();
        assert_eq!(split.events().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn retry_saturates_and_needs_digits() {
        assert_eq!(parse_retry(b"0"), Some(0));
        assert_eq!(parse_retry(b"02000"), Some(2000));
        assert_eq!(parse_retry(b"99999999999999999999999"), Some(u64::MAX));
        assert_eq!(parse_retry(b""), None);
        assert_eq!(parse_retry(b" 1"), None);
        assert_eq!(parse_retry(b"1x"), None);
        assert_eq!(parse_retry(b"-1"), None);
    }

    #[test]
    fn mid_event_tells_truncated_streams() {
        let mut decoder = Decoder::new();
        decoder.push(&b"data: a\n\n: bye\n"[..]);
        assert!(decoder.is_mid_event());
        assert_eq!(decoder.events().count(), 1);
        assert!(!decoder.is_mid_event());
        decoder.push(&b"data: b\n"[..]);
        assert_eq!(decoder.events().count(), 0);
        assert!(decoder.is_mid_event());
    }

    #[test]
    fn pushes_after_finish_are_ignored() {
        let mut decoder = Decoder::new();
        decoder.push(&b"data: a\n"[..]);
        decoder.finish();
        decoder.push(&b"\n"[..]);
        assert!(decoder.next_event().is_none());
        assert!(decoder.is_finished());
    }
}
