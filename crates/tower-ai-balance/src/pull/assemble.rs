//! [`Assembler`]: turns a reply stream, with its restarts, duplicates and
//! late entries of dead attempts, into the one answer the client sees.
//!
//! The rules, entry by entry in stream order:
//!
//! - An entry of an attempt older than the newest seen is ignored: it was
//!   written by a puller that has since been replaced (a command it sent
//!   before it died).
//! - An entry of a newer attempt starts that attempt (its `restart` marker
//!   comes first, but any entry will do): the bytes the client already has
//!   are neither sent again nor forgotten. The new attempt's body is
//!   compared with them as it arrives, and only what lies past them is
//!   passed on.
//! - Data carries its offset in its attempt's body, so a write the puller
//!   retried (sent twice) is passed on once.
//!
//! Skipping bytes assumes the upstream answers the same request the same
//! way (the mock LLM does, and so does a model with a fixed seed or at
//! temperature 0). Where it doesn't, the answer ends with
//! [`PullError::Diverged`] instead of a garbled text: a new status, a
//! replayed prefix that differs (compared by a 64-bit FNV-1a digest), or a
//! body shorter than what was already passed on.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::error::PullError;
use super::wire::{Kind, ReplyEntry, decode_head};

/// What one reply entry means for the client.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing to pass on.
    Skip,
    /// The head, once per answer.
    Head(StatusCode, HeaderMap),
    /// New body bytes.
    Data(Bytes),
    /// The body ended cleanly.
    End,
    /// The answer failed.
    Fail(PullError),
}

/// The state of one answer being read.
#[derive(Debug, Default)]
pub(super) struct Assembler {
    /// The newest attempt seen.
    attempt: u64,
    /// Whether that attempt's head came.
    head_seen: bool,
    /// The status passed on with the head.
    status: Option<StatusCode>,
    /// Body bytes passed on to the client.
    passed: u64,
    /// The digest of those bytes.
    digest: Fnv,
    /// Bytes of the current attempt's body seen so far.
    covered: u64,
    /// A replaying attempt: how many bytes it must replay, and the digest
    /// they must have, and the digest of what it replayed so far.
    replay: Option<Replay>,
}

#[derive(Debug)]
struct Replay {
    until: u64,
    expected: u64,
    seen: Fnv,
}

impl Assembler {
    /// The next step of the answer.
    pub(super) fn push(&mut self, entry: ReplyEntry) -> Step {
        if entry.attempt < self.attempt {
            return Step::Skip;
        }
        if entry.attempt > self.attempt {
            self.attempt = entry.attempt;
            self.head_seen = false;
            self.covered = 0;
            self.replay = (self.passed > 0).then(|| Replay {
                until: self.passed,
                expected: self.digest.finish(),
                seen: Fnv::default(),
            });
        }
        match entry.kind {
            Kind::Restart => Step::Skip,
            Kind::Head => self.head(&entry.payload),
            Kind::Data => self.data(entry.offset, entry.payload),
            Kind::End => {
                if !self.head_seen || self.status.is_none() {
                    Step::Fail(PullError::Lost)
                } else if self.covered < self.passed || self.replay.is_some() {
                    Step::Fail(PullError::Diverged)
                } else {
                    Step::End
                }
            }
            Kind::Error => Step::Fail(PullError::Upstream(
                String::from_utf8_lossy(&entry.payload).into_owned(),
            )),
        }
    }

    fn head(&mut self, payload: &Bytes) -> Step {
        let Some((status, headers)) = decode_head(payload) else {
            return Step::Fail(PullError::Lost);
        };
        if self.head_seen {
            // The same attempt's head again (a retried write).
            return Step::Skip;
        }
        self.head_seen = true;
        match self.status {
            None => {
                self.status = Some(status);
                Step::Head(status, headers)
            }
            Some(first) if first == status => Step::Skip,
            Some(_) => Step::Fail(PullError::Diverged),
        }
    }

    fn data(&mut self, offset: u64, payload: Bytes) -> Step {
        if !self.head_seen || offset > self.covered {
            // Data before its head, or a gap: not what a puller writes.
            return Step::Fail(PullError::Lost);
        }
        let len = payload.len() as u64;
        let end = offset + len;
        if end <= self.covered {
            return Step::Skip;
        }
        // The part of this entry not seen before in this attempt.
        let fresh = payload.slice(usize_of(self.covered - offset)..);
        let fresh_start = self.covered;
        self.covered = end;
        let mut pass_from = 0usize;
        if let Some(replay) = &mut self.replay {
            let replayed = (replay.until - fresh_start).min(fresh.len() as u64);
            replay.seen.write(&fresh[..usize_of(replayed)]);
            if end < replay.until {
                return Step::Skip;
            }
            if replay.seen.finish() != replay.expected {
                return Step::Fail(PullError::Diverged);
            }
            self.replay = None;
            pass_from = usize_of(replayed);
        }
        let new = fresh.slice(pass_from..);
        if new.is_empty() {
            return Step::Skip;
        }
        self.digest.write(&new);
        self.passed += new.len() as u64;
        Step::Data(new)
    }
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// FNV-1a, 64 bits: byte by byte, so the digest of a body doesn't depend on
/// how it was cut into chunks.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::wire::encode_head;

    fn entry(attempt: u64, kind: Kind, offset: u64, payload: &'static [u8]) -> ReplyEntry {
        ReplyEntry {
            attempt,
            kind,
            offset,
            payload: Bytes::from_static(payload),
        }
    }

    fn head(attempt: u64, status: u16) -> ReplyEntry {
        ReplyEntry {
            attempt,
            kind: Kind::Head,
            offset: 0,
            payload: encode_head(StatusCode::from_u16(status).unwrap(), &HeaderMap::new()),
        }
    }

    /// Runs the entries; the body passed on, and how it ended.
    fn run(entries: Vec<ReplyEntry>) -> (Vec<u8>, Option<Result<(), String>>) {
        let mut a = Assembler::default();
        let mut body = Vec::new();
        for e in entries {
            match a.push(e) {
                Step::Skip | Step::Head(..) => {}
                Step::Data(b) => body.extend_from_slice(&b),
                Step::End => return (body, Some(Ok(()))),
                Step::Fail(e) => return (body, Some(Err(e.to_string()))),
            }
        }
        (body, None)
    }

    #[test]
    fn one_attempt_passes_through_and_retried_writes_pass_once() {
        let (body, end) = run(vec![
            head(1, 200),
            head(1, 200),
            entry(1, Kind::Data, 0, b"hel"),
            entry(1, Kind::Data, 0, b"hel"),
            entry(1, Kind::Data, 3, b"lo"),
            entry(1, Kind::End, 0, b""),
        ]);
        assert_eq!(body, b"hello");
        assert_eq!(end, Some(Ok(())));
    }

    #[test]
    fn a_restart_skips_what_the_client_has_and_ignores_the_dead_attempt() {
        let (body, end) = run(vec![
            head(1, 200),
            entry(1, Kind::Data, 0, b"hel"),
            entry(2, Kind::Restart, 0, b""),
            // A late write of the dead attempt.
            entry(1, Kind::Data, 3, b"lo"),
            entry(1, Kind::End, 0, b""),
            head(2, 200),
            entry(2, Kind::Data, 0, b"he"),
            entry(2, Kind::Data, 2, b"llo"),
            entry(2, Kind::Data, 5, b" world"),
            entry(2, Kind::End, 0, b""),
        ]);
        assert_eq!(body, b"hello world");
        assert_eq!(end, Some(Ok(())));
    }

    #[test]
    fn a_restart_before_any_byte_simply_starts_over() {
        let (body, end) = run(vec![
            entry(2, Kind::Restart, 0, b""),
            head(2, 200),
            entry(2, Kind::Data, 0, b"ok"),
            entry(2, Kind::End, 0, b""),
        ]);
        assert_eq!(body, b"ok");
        assert_eq!(end, Some(Ok(())));
    }

    #[test]
    fn a_divergent_retry_ends_with_an_error() {
        // Another status.
        let (_, end) = run(vec![
            head(1, 200),
            entry(2, Kind::Restart, 0, b""),
            head(2, 500),
        ]);
        assert!(end.unwrap().unwrap_err().contains("differently"));
        // Another prefix.
        let (body, end) = run(vec![
            head(1, 200),
            entry(1, Kind::Data, 0, b"hello"),
            head(2, 200),
            entry(2, Kind::Data, 0, b"HELLO world"),
        ]);
        assert_eq!(body, b"hello");
        assert!(end.unwrap().unwrap_err().contains("differently"));
        // A shorter body.
        let (_, end) = run(vec![
            head(1, 200),
            entry(1, Kind::Data, 0, b"hello"),
            head(2, 200),
            entry(2, Kind::Data, 0, b"hel"),
            entry(2, Kind::End, 0, b""),
        ]);
        assert!(end.unwrap().unwrap_err().contains("differently"));
    }

    #[test]
    fn an_error_marker_and_a_gap_are_errors() {
        let (_, end) = run(vec![head(1, 200), entry(1, Kind::Error, 0, b"boom")]);
        assert!(end.unwrap().unwrap_err().contains("boom"));
        let (_, end) = run(vec![head(1, 200), entry(1, Kind::Data, 4, b"x")]);
        assert!(end.unwrap().is_err());
        let (_, end) = run(vec![entry(1, Kind::End, 0, b"")]);
        assert!(end.unwrap().is_err());
    }
}
