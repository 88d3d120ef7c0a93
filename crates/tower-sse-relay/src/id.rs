//! Stream ids, event ids and the resume point a client asks for.
//!
//! A [`StreamId`] is made by the relay from 128 random bits (never from the
//! request), and an event's id is `{stream id}-{sequence}`, the sequence
//! counting the stream's events from 1. A client that reconnects sends the
//! last id it saw as `Last-Event-ID` (or the `lastEventID` query parameter);
//! [`ResumeFrom::parse`] reads it strictly, so nothing a client sends reaches
//! a store key unchecked.
//!
//! # Example
//! ```
//! use tower_sse_relay::{EventId, ResumeFrom, StreamId};
//!
//! let stream = StreamId::random()?;
//! let id = EventId::new(stream, 7);
//! assert_eq!(id.to_string(), format!("{stream}-7"));
//!
//! assert_eq!(ResumeFrom::parse(&id.to_string()), Ok(ResumeFrom::After(id)));
//! assert_eq!(ResumeFrom::parse("earliest"), Ok(ResumeFrom::Earliest));
//! assert!(ResumeFrom::parse("42").is_err());
//! assert!(StreamId::parse("not-a-stream-id").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes in a stream id.
const RAW_LEN: usize = 16;
/// Characters of a stream id: 16 bytes in unpadded base64url.
pub(crate) const STREAM_ID_LEN: usize = 22;
/// The longest event id: a stream id, `-`, and a `u64` in decimal.
const MAX_EVENT_ID_LEN: usize = STREAM_ID_LEN + 1 + 20;

/// The id of one relayed stream: 128 random bits, written as 22 characters
/// of unpadded base64url (`A–Z a–z 0–9 - _`).
///
/// Made by the relay ([`StreamId::random`]), handed to the client in the
/// `X-Stream-Id` response header and in every event id. It is `Copy` and
/// holds its text inline, so passing it around never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId([u8; STREAM_ID_LEN]);

impl StreamId {
    /// A new id from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`IdError::NoEntropy`] when the operating system has no randomness to
    /// give (practically never; the relay then serves the stream without
    /// making it resumable).
    pub fn random() -> Result<Self, IdError> {
        let mut raw = [0u8; RAW_LEN];
        getrandom::fill(&mut raw).map_err(|_| IdError::NoEntropy)?;
        Ok(Self::from_raw(&raw))
    }

    fn from_raw(raw: &[u8; RAW_LEN]) -> Self {
        let mut text = [0u8; STREAM_ID_LEN];
        // 16 bytes always encode to exactly 22 characters.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, &mut text);
        Self(text)
    }

    /// Reads a stream id, strictly: exactly 22 base64url characters that
    /// decode to 16 bytes with no stray bits.
    ///
    /// # Errors
    ///
    /// [`IdError`] for anything else.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let bytes = text.as_bytes();
        if bytes.len() != STREAM_ID_LEN {
            return Err(IdError::Malformed);
        }
        let mut raw = [0u8; RAW_LEN + 2];
        match URL_SAFE_NO_PAD.decode_slice(bytes, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(IdError::Malformed),
        }
        let mut text = [0u8; STREAM_ID_LEN];
        text.copy_from_slice(bytes);
        Ok(Self(text))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        // Only base64url bytes are ever stored: always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.as_str())
    }
}

impl FromStr for StreamId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The id of one relayed event: its stream and its sequence number (the
/// first event of a stream is 1), written `{stream}-{seq}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    stream: StreamId,
    seq: u64,
}

impl EventId {
    /// The id of event `seq` of `stream`.
    pub const fn new(stream: StreamId, seq: u64) -> Self {
        Self { stream, seq }
    }

    /// The stream.
    pub const fn stream(&self) -> StreamId {
        self.stream
    }

    /// The sequence number (1 for the first event; 0 names the point before
    /// the first event).
    pub const fn seq(&self) -> u64 {
        self.seq
    }

    /// Reads `{stream}-{seq}`, strictly (no sign, no leading `+`, no spaces,
    /// no leading zeros).
    ///
    /// # Errors
    ///
    /// [`IdError::Malformed`] for anything else.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.len() <= STREAM_ID_LEN + 1 || text.len() > MAX_EVENT_ID_LEN {
            return Err(IdError::Malformed);
        }
        let (stream, rest) = text.split_at(STREAM_ID_LEN);
        let seq = rest.strip_prefix('-').ok_or(IdError::Malformed)?;
        let canonical =
            seq.bytes().all(|b| b.is_ascii_digit()) && !(seq.len() > 1 && seq.starts_with('0'));
        if !canonical {
            return Err(IdError::Malformed);
        }
        let seq = seq.parse::<u64>().map_err(|_| IdError::Malformed)?;
        Ok(Self {
            stream: StreamId::parse(stream)?,
            seq,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.stream, self.seq)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl FromStr for EventId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Where a re-attaching client wants its stream to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeFrom {
    /// `earliest`: every event still kept.
    Earliest,
    /// Every event after this one.
    After(EventId),
}

impl ResumeFrom {
    /// Reads a `Last-Event-ID` value: `earliest`, or an [`EventId`].
    /// Surrounding spaces are ignored.
    ///
    /// # Errors
    ///
    /// [`IdError::Malformed`] for anything else.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let text = text.trim_matches(|c| c == ' ' || c == '\t');
        if text == "earliest" {
            Ok(Self::Earliest)
        } else {
            EventId::parse(text).map(Self::After)
        }
    }

    /// The sequence number after which events are wanted (0 for `earliest`).
    pub const fn after_seq(&self) -> u64 {
        match self {
            Self::Earliest => 0,
            Self::After(id) => id.seq,
        }
    }
}

impl fmt::Display for ResumeFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Earliest => f.write_str("earliest"),
            Self::After(id) => id.fmt(f),
        }
    }
}

/// A stream id or event id that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdError {
    /// Not an id the relay makes.
    Malformed,
    /// No random bytes for a new id.
    NoEntropy,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("not a stream or event id made by this relay"),
            Self::NoEntropy => f.write_str("the operating system gave no random bytes for an id"),
        }
    }
}

impl std::error::Error for IdError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamId {
        StreamId::from_raw(&[7u8; RAW_LEN])
    }

    #[test]
    fn stream_ids_are_random_and_round_trip() {
        let (Ok(a), Ok(b)) = (StreamId::random(), StreamId::random()) else {
            panic!("no randomness");
        };
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), STREAM_ID_LEN);
        assert_eq!(StreamId::parse(a.as_str()), Ok(a));
        assert_eq!(a.as_str().parse::<StreamId>(), Ok(a));
    }

    #[test]
    fn stream_ids_are_read_strictly() {
        let good = stream();
        let text = good.as_str().to_owned();
        assert!(StreamId::parse(&text[1..]).is_err());
        assert!(StreamId::parse(&format!("{text}A")).is_err());
        // A character outside base64url, and a key-breaking one.
        for bad in ["{", "}", ":", "+", "/", "=", " ", "é"] {
            let candidate = format!("{}{bad}", &text[..STREAM_ID_LEN - 1]);
            assert!(StreamId::parse(&candidate).is_err(), "{candidate}");
        }
        // Stray bits in the last character.
        let last = text.as_bytes()[STREAM_ID_LEN - 1];
        let stray = if last == b'B' { 'C' } else { 'B' };
        let candidate = format!("{}{stray}", &text[..STREAM_ID_LEN - 1]);
        assert!(StreamId::parse(&candidate).is_err());
    }

    #[test]
    fn event_ids_and_resume_points() {
        let s = stream();
        let id = EventId::new(s, 42);
        assert_eq!(id.to_string(), format!("{s}-42"));
        assert_eq!(EventId::parse(&id.to_string()), Ok(id));
        assert_eq!(
            ResumeFrom::parse(&format!(" {s}-0 ")),
            Ok(ResumeFrom::After(EventId::new(s, 0)))
        );
        assert_eq!(ResumeFrom::parse("earliest").map(|r| r.after_seq()), Ok(0));
        assert_eq!(ResumeFrom::Earliest.to_string(), "earliest");
        for bad in [
            String::new(),
            "earliest ".repeat(2),
            format!("{s}"),
            format!("{s}-"),
            format!("{s}-01"),
            format!("{s}-+1"),
            format!("{s}--1"),
            format!("{s}-1a"),
            format!("{s}-18446744073709551616"),
            format!("{s}:1"),
            format!("x{s}-1"),
        ] {
            assert_eq!(ResumeFrom::parse(&bad), Err(IdError::Malformed), "{bad:?}");
        }
        assert_eq!(
            EventId::parse(&format!("{s}-18446744073709551615")).map(|e| e.seq()),
            Ok(u64::MAX)
        );
    }
}
