//! Counters and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::Inner;

/// A snapshot of the mock's counters, as returned by [`MockLlm::stats`](crate::MockLlm::stats)
/// and served as JSON by `GET /admin/stats` (the field names are the JSON keys).
///
/// The counters add up over every model route: `POST /v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings`, `/v1/responses` and `/v1/messages`; [`EndpointStats`] tells them apart.
/// A mock that only serves chat completions counts exactly as it did before the other routes
/// existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every request to a model route received: answered, invalid, failed and stalled ones.
    /// `GET /v1/models` is not one (it counts in [`EndpointStats::models`] only).
    pub requests: u64,
    /// Non-streaming answers sent with `200` (embeddings included).
    pub completions: u64,
    /// Requests refused with `400` (unreadable body, not JSON, missing `model`/`messages`, ...).
    pub invalid: u64,
    /// Requests answered with `500` because of [`Fault::fail_rate`](crate::Fault::fail_rate).
    pub failed: u64,
    /// Streaming responses whose head was sent.
    pub streams_started: u64,
    /// Streams that reached their normal end: `data: [DONE]` (chat, completions),
    /// `response.completed`/`response.incomplete` (responses), `message_stop` (messages).
    pub streams_completed: u64,
    /// Streams the client dropped before the end.
    pub streams_cancelled: u64,
    /// Streams the mock cut short: [`Fault::break_after_tokens`](crate::Fault::break_after_tokens)
    /// or a shutdown of the mock.
    pub streams_broken: u64,
    /// Streams that ended with an in-band error event ([`Fault::error_event`](crate::Fault::error_event)).
    pub streams_errored: u64,
    /// Model route requests being handled now, streams until their last event. Not zeroed by a
    /// reset.
    pub in_flight: u64,
    /// Output tokens sent: token events of streams plus the output tokens of non-streaming
    /// answers (an embedding sends none).
    pub tokens_sent: u64,
}

/// Requests received per route, valid or not, as returned by
/// [`MockLlm::endpoints`](crate::MockLlm::endpoints) and served under `"endpoints"` by
/// `GET /admin/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointStats {
    /// `POST /v1/chat/completions`.
    pub chat: u64,
    /// `POST /v1/completions`.
    pub completions: u64,
    /// `POST /v1/embeddings`.
    pub embeddings: u64,
    /// `POST /v1/responses`.
    pub responses: u64,
    /// `POST /v1/messages`.
    pub messages: u64,
    /// `GET /v1/models`.
    pub models: u64,
}

/// What the last request to a `/v1` route carried, as it reached the mock: returned by
/// [`MockLlm::last_request`](crate::MockLlm::last_request) and served under `"last_request"` by
/// `GET /admin/stats`, so a test can check which credentials and which model name a gateway sent
/// upstream.
///
/// Recorded as soon as the body is read, before any fault applies: an invalid or failed request
/// is recorded too. Header values that are not UTF-8 are read lossily.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastRequest {
    /// The request path, e.g. `/v1/messages`.
    pub path: String,
    /// The body's `model`, if the body is a JSON object with a string `model`.
    pub model: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `x-api-key` header (Anthropic's credential).
    pub x_api_key: Option<String>,
    /// The `anthropic-version` header.
    pub anthropic_version: Option<String>,
}

/// Everything `GET /admin/stats` (and `POST /admin/reset`) serves: the [`Stats`] fields at the
/// top level, then `"endpoints"` and `"last_request"`. Returned by
/// [`MockLlm::report`](crate::MockLlm::report).
///
/// A client that deserializes the JSON into [`Stats`] alone still can: the extra keys are
/// ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsReport {
    /// The counters.
    #[serde(flatten)]
    pub stats: Stats,
    /// Requests per route.
    pub endpoints: EndpointStats,
    /// The last request to a `/v1` route since the start or the last reset.
    pub last_request: Option<LastRequest>,
}

/// The routes counted in [`EndpointStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
    Models,
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
    endpoints: [AtomicU64; 6],
    last_request: Mutex<Option<LastRequest>>,
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

    pub(crate) fn endpoints(&self) -> EndpointStats {
        let count = |endpoint: Endpoint| self.endpoint(endpoint).load(Relaxed);
        EndpointStats {
            chat: count(Endpoint::Chat),
            completions: count(Endpoint::Completions),
            embeddings: count(Endpoint::Embeddings),
            responses: count(Endpoint::Responses),
            messages: count(Endpoint::Messages),
            models: count(Endpoint::Models),
        }
    }

    pub(crate) fn last_request(&self) -> Option<LastRequest> {
        self.last_request_slot().clone()
    }

    /// Counts a request to `endpoint` and remembers what it carried.
    pub(crate) fn record(&self, endpoint: Endpoint, request: LastRequest) {
        Self::bump(self.endpoint(endpoint));
        *self.last_request_slot() = Some(request);
    }

    fn endpoint(&self, endpoint: Endpoint) -> &AtomicU64 {
        &self.endpoints[endpoint as usize]
    }

    fn last_request_slot(&self) -> MutexGuard<'_, Option<LastRequest>> {
        // An `Option` assignment cannot be left half done by a panic.
        self.last_request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Zeroes every counter except the `in_flight` gauge, and forgets the last request.
    pub(crate) fn reset(&self) {
        *self.last_request_slot() = None;
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
        ]
        .into_iter()
        .chain(&self.endpoints)
        {
            counter.store(0, Relaxed);
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Counts a model route request as in flight until dropped.
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
