//! Counters and their snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::Inner;

/// A snapshot of the mock's counters, as returned by [`MockLlm::stats`](crate::MockLlm::stats)
/// and served as JSON by `GET /admin/stats` (the field names are the JSON keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every `POST /v1/chat/completions` received: answered, invalid, failed and stalled ones.
    pub requests: u64,
    /// Non-streaming completions answered with `200`.
    pub completions: u64,
    /// Requests refused with `400` (unreadable body, not JSON, missing `model`/`messages`, ...).
    pub invalid: u64,
    /// Requests answered with `500` because of [`Fault::fail_rate`](crate::Fault::fail_rate).
    pub failed: u64,
    /// Streaming responses whose head was sent.
    pub streams_started: u64,
    /// Streams that reached `data: [DONE]`.
    pub streams_completed: u64,
    /// Streams the client dropped before the end.
    pub streams_cancelled: u64,
    /// Streams the mock cut short: [`Fault::break_after_tokens`](crate::Fault::break_after_tokens)
    /// or a shutdown of the mock.
    pub streams_broken: u64,
    /// Streams that ended with an in-band error event ([`Fault::error_event`](crate::Fault::error_event)).
    pub streams_errored: u64,
    /// Completion requests being handled now, streams until their last chunk. Not zeroed by a reset.
    pub in_flight: u64,
    /// Completion tokens sent: token chunks of streams plus `completion_tokens` of
    /// non-streaming answers.
    pub tokens_sent: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) completions: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) streams_started: AtomicU64,
    pub(crate) streams_completed: AtomicU64,
    pub(crate) streams_cancelled: AtomicU64,
    pub(crate) streams_broken: AtomicU64,
    pub(crate) streams_errored: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) tokens_sent: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            requests: self.requests.load(Relaxed),
            completions: self.completions.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            failed: self.failed.load(Relaxed),
            streams_started: self.streams_started.load(Relaxed),
            streams_completed: self.streams_completed.load(Relaxed),
            streams_cancelled: self.streams_cancelled.load(Relaxed),
            streams_broken: self.streams_broken.load(Relaxed),
            streams_errored: self.streams_errored.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            tokens_sent: self.tokens_sent.load(Relaxed),
        }
    }

    /// Zeroes every counter except the `in_flight` gauge.
    pub(crate) fn reset(&self) {
        for counter in [
            &self.requests,
            &self.completions,
            &self.invalid,
            &self.failed,
            &self.streams_started,
            &self.streams_completed,
            &self.streams_cancelled,
            &self.streams_broken,
            &self.streams_errored,
            &self.tokens_sent,
        ] {
            counter.store(0, Relaxed);
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Counts a completion request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    inner: Arc<Inner>,
}

impl InFlight {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        inner.stats.in_flight.fetch_add(1, Relaxed);
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.stats.in_flight.fetch_sub(1, Relaxed);
    }
}

/// How a stream ended, from the mock's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Broken,
    Errored,
}

/// Lives in a streaming body: records how the stream ended, and counts it as cancelled if the
/// body is dropped (the client went away) before an outcome was recorded.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    in_flight: Option<InFlight>,
    inner: Arc<Inner>,
}

impl StreamGuard {
    pub(crate) fn start(in_flight: InFlight) -> Self {
        let inner = Arc::clone(in_flight.inner());
        Counters::bump(&inner.stats.streams_started);
        Self {
            in_flight: Some(in_flight),
            inner,
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Records the outcome (once) and leaves the in-flight count: called as the last chunk is
    /// produced, so the counters are current by the time the client reads it.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if self.in_flight.take().is_some() {
            let stats = &self.inner.stats;
            Counters::bump(match outcome {
                Outcome::Completed => &stats.streams_completed,
                Outcome::Broken => &stats.streams_broken,
                Outcome::Errored => &stats.streams_errored,
            });
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.in_flight.take().is_some() {
            Counters::bump(&self.inner.stats.streams_cancelled);
        }
    }
}
