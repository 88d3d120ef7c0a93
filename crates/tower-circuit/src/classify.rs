//! Telling a successful call from a failed one, at the end of the body.
//!
//! In the spirit of tower-http's `classify` module, but judged where a
//! circuit breaker needs it: a response is classified when its head arrives
//! ([`Classify::classify_response`]), and unless the head already decides
//! (a `503`, a trailers-only gRPC error), a [`JudgeBody`] watches the body as
//! it passes and gives the verdict when it ends. A stream that breaks midway
//! is a failure even though its status was `200`; a client that hangs up
//! before the end makes the call count as neither ([`Outcome::Ignored`]).
//!
//! [`DefaultClassifier`] implements the usual rules for HTTP, gRPC and LLM
//! event streams; write your own [`Classify`] to change them.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use http::{Response, StatusCode};
//! use tower_circuit::classify::{Classified, Classify, DefaultClassifier, JudgeBody, Outcome};
//!
//! let classifier = DefaultClassifier::new();
//!
//! // A 503 is a failure as soon as its head arrives.
//! let res = Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(()).unwrap();
//! assert!(matches!(classifier.classify_response(&res), Classified::Decided(Outcome::Failure)));
//!
//! // An event stream is judged at its end: here it ended with `[DONE]`.
//! let res = Response::builder().header("content-type", "text/event-stream").body(()).unwrap();
//! let Classified::AtEnd(mut judge) = classifier.classify_response(&res) else { unreachable!() };
//! judge.data(&Bytes::from_static(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"));
//! assert_eq!(judge.end(), Outcome::Success);
//! ```

use std::fmt;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Response, StatusCode};
use tower_ai_core::llm::StreamChunk;
use tower_ai_core::sse::Decoder;

/// What a call counts as, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded: it counts as a success (and may still be slow).
    Success,
    /// The call failed: it counts towards the failure rate.
    Failure,
    /// The call counts as neither (the client went away before the end, or
    /// the classifier chose to ignore it). A half-open trial that ends this
    /// way gives its slot back.
    Ignored,
}

impl Outcome {
    /// `"success"`, `"failure"` or `"ignored"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Ignored => "ignored",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of looking at a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified<J> {
    /// The head decides: the outcome is recorded now and the body passes
    /// through unwatched.
    Decided(Outcome),
    /// The body decides: `J` watches it and gives the outcome at its end.
    AtEnd(J),
}

/// Classifies responses and errors of the wrapped service.
///
/// The breaker clones the classifier for each call (keep it small: the
/// default is a few bytes), calls [`classify_response`](Self::classify_response)
/// when the head arrives and [`classify_error`](Self::classify_error) when the
/// service returns an error.
pub trait Classify {
    /// Watches a response body and judges it at its end.
    type Judge: JudgeBody;

    /// Classifies a response head.
    fn classify_response<B>(&self, res: &Response<B>) -> Classified<Self::Judge>;

    /// Classifies an error of the wrapped service (a transport error, a
    /// timeout). By default every error is a failure.
    fn classify_error<E>(&self, error: &E) -> Outcome
    where
        E: fmt::Display + 'static,
    {
        let _ = error;
        Outcome::Failure
    }
}

/// Watches one response body and judges the call when the body ends.
///
/// Exactly one of [`end`](Self::end), [`error`](Self::error) and
/// [`abandoned`](Self::abandoned) is called, once.
pub trait JudgeBody {
    /// Sees each data frame as it passes (a no-op by default).
    fn data(&mut self, data: &Bytes) {
        let _ = data;
    }

    /// Sees the trailers, if the body has any (a no-op by default).
    fn trailers(&mut self, trailers: &HeaderMap) {
        let _ = trailers;
    }

    /// The body ended properly.
    fn end(self) -> Outcome;

    /// The body failed midway (the upstream broke the stream): a failure by
    /// default.
    fn error(self) -> Outcome
    where
        Self: Sized,
    {
        Outcome::Failure
    }

    /// The body was dropped before its end (the client hung up): neither
    /// success nor failure by default.
    fn abandoned(self) -> Outcome
    where
        Self: Sized,
    {
        Outcome::Ignored
    }
}

/// The [`JudgeBody`] of a plain body: a success when it ends properly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BodyCompletes;

impl JudgeBody for BodyCompletes {
    fn end(self) -> Outcome {
        Outcome::Success
    }
}

/// The gRPC status codes, as a set (bit `n` is code `n`).
const GRPC_DEFAULT_FAILURES: u32 = (1 << 4) | (1 << 8) | (1 << 13) | (1 << 14);

/// The default classification, for HTTP, gRPC and LLM event streams.
///
/// - **HTTP**: `5xx`, `429 Too Many Requests` and `408 Request Timeout` are
///   failures at the head. Other statuses (`2xx`, `3xx`, `4xx`) are judged at
///   the end of the body: a success if it ends properly, a failure if it
///   breaks. A `4xx` other than `429`/`408` shows a working upstream, so it
///   counts as a success.
/// - **Event streams** (`content-type: text/event-stream`): a success only if
///   the stream sent `data: [DONE]`, or ended properly after at least one
///   event with no in-band error (`{"error": …}` or `event: error`). A stream
///   that breaks midway, ends inside an event, is empty, or carried an
///   in-band error is a failure; one the client abandons counts as neither
///   (unless an in-band error or `[DONE]` was already seen).
/// - **gRPC** (`content-type: application/grpc*`): the `grpc-status` of a
///   trailers-only response, else of the trailers. `UNAVAILABLE`,
///   `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` and `INTERNAL` are failures
///   (change the set with [`grpc_failure_codes`](Self::grpc_failure_codes)),
///   and so is a stream that ends without a status.
/// - **Errors** of the wrapped service (transport errors, timeouts) are
///   failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultClassifier {
    grpc_failures: u32,
    judge_streams: bool,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultClassifier {
    /// The rules described above.
    pub const fn new() -> Self {
        Self {
            grpc_failures: GRPC_DEFAULT_FAILURES,
            judge_streams: true,
        }
    }

    /// The gRPC status codes that count as failures (codes above 16 are
    /// ignored).
    #[must_use]
    pub fn grpc_failure_codes(mut self, codes: impl IntoIterator<Item = u8>) -> Self {
        self.grpc_failures = codes
            .into_iter()
            .filter(|c| *c <= 16)
            .fold(0, |set, c| set | (1 << c));
        self
    }

    /// Whether event streams are read for `[DONE]` and in-band errors
    /// (default `true`). When off, an event stream is judged like any body:
    /// a success when it ends properly.
    #[must_use]
    pub const fn judge_event_streams(mut self, on: bool) -> Self {
        self.judge_streams = on;
        self
    }

    fn grpc_outcome(&self, status: Option<&http::HeaderValue>) -> Outcome {
        let code = status
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u32>().ok());
        match code {
            Some(code) if code <= 16 && self.grpc_failures & (1 << code) != 0 => Outcome::Failure,
            Some(_) => Outcome::Success,
            None => Outcome::Failure,
        }
    }
}

impl Classify for DefaultClassifier {
    type Judge = DefaultJudge;

    #[inline]
    fn classify_response<B>(&self, res: &Response<B>) -> Classified<DefaultJudge> {
        let status = res.status();
        let content_type = res.headers().get(CONTENT_TYPE).map(|v| v.as_bytes());
        if let Some(ct) = content_type
            && ct.starts_with(b"application/grpc")
        {
            if status != StatusCode::OK {
                return Classified::Decided(Outcome::Failure);
            }
            return match res.headers().get("grpc-status") {
                Some(code) => Classified::Decided(self.grpc_outcome(Some(code))),
                None => Classified::AtEnd(DefaultJudge(JudgeKind::Grpc {
                    classifier: *self,
                    outcome: None,
                })),
            };
        }
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Classified::Decided(Outcome::Failure);
        }
        if self.judge_streams
            && status.is_success()
            && content_type.is_some_and(|ct| ct.starts_with(b"text/event-stream"))
        {
            return Classified::AtEnd(DefaultJudge(JudgeKind::Stream(Box::default())));
        }
        Classified::AtEnd(DefaultJudge(JudgeKind::Completes))
    }
}

/// The [`JudgeBody`] of [`DefaultClassifier`].
#[derive(Debug)]
pub struct DefaultJudge(JudgeKind);

#[derive(Debug)]
enum JudgeKind {
    Completes,
    // Boxed: the decoder is only needed for event streams, and keeping it
    // out of line keeps every other response's body wrapper small.
    Stream(Box<StreamJudge>),
    Grpc {
        classifier: DefaultClassifier,
        outcome: Option<Outcome>,
    },
}

impl JudgeBody for DefaultJudge {
    fn data(&mut self, data: &Bytes) {
        if let JudgeKind::Stream(judge) = &mut self.0 {
            judge.data(data);
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let JudgeKind::Grpc {
            classifier,
            outcome,
        } = &mut self.0
        {
            *outcome = Some(classifier.grpc_outcome(trailers.get("grpc-status")));
        }
    }

    fn end(self) -> Outcome {
        match self.0 {
            JudgeKind::Completes => Outcome::Success,
            JudgeKind::Stream(judge) => judge.end(),
            // A gRPC stream that ends without a status was cut short.
            JudgeKind::Grpc { outcome, .. } => outcome.unwrap_or(Outcome::Failure),
        }
    }

    fn error(self) -> Outcome {
        match self.0 {
            JudgeKind::Stream(judge) => judge.error(),
            _ => Outcome::Failure,
        }
    }

    fn abandoned(self) -> Outcome {
        match self.0 {
            JudgeKind::Stream(judge) => judge.abandoned(),
            _ => Outcome::Ignored,
        }
    }
}

/// Judges an LLM event stream (`text/event-stream`) as it passes: counts
/// events, and notes `data: [DONE]` and in-band error events.
///
/// Used by [`DefaultClassifier`]; usable on its own in a classifier of your
/// own. Each chunk is pushed into a [`Decoder`] without copying; an event's
/// data is parsed as JSON only when it mentions `error`.
#[derive(Debug, Default)]
pub struct StreamJudge {
    decoder: Decoder,
    events: u64,
    done: bool,
    error: bool,
}

impl StreamJudge {
    /// A judge at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an in-band error event was seen.
    pub const fn saw_error(&self) -> bool {
        self.error
    }

    /// Whether the stream's end was seen: `data: [DONE]`, or a terminal
    /// named event (`message_stop`, `response.completed`,
    /// `response.incomplete`).
    pub const fn saw_done(&self) -> bool {
        self.done
    }

    fn drain(&mut self) {
        while let Some(event) = self.decoder.next_event() {
            // An oversized event is skipped by the decoder; it says nothing
            // about the upstream's health.
            let Ok(event) = event else { continue };
            self.events += 1;
            // The APIs that name their events end with a named one
            // (Anthropic's `message_stop`, the Responses API's
            // `response.completed`): read from the name, no JSON needed.
            match event.event_type() {
                "error" | "response.failed" => {
                    self.error = true;
                    continue;
                }
                "message_stop" | "response.completed" | "response.incomplete" => {
                    self.done = true;
                    continue;
                }
                _ => {}
            }
            let data = event.data();
            if data.trim() == "[DONE]" {
                self.done = true;
            } else if data.contains("error") && StreamChunk::parse(data).error {
                self.error = true;
            }
        }
    }
}

impl JudgeBody for StreamJudge {
    fn data(&mut self, data: &Bytes) {
        if self.done {
            return;
        }
        self.decoder.push(data.clone());
        self.drain();
    }

    fn end(mut self) -> Outcome {
        self.decoder.finish();
        self.drain();
        if self.error {
            Outcome::Failure
        } else if self.done {
            Outcome::Success
        } else if self.events == 0 || self.decoder.is_mid_event() {
            // Empty, or cut inside an event.
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    fn error(self) -> Outcome {
        if self.done && !self.error {
            // Everything was sent; only the connection's end went wrong.
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    fn abandoned(self) -> Outcome {
        if self.error {
            Outcome::Failure
        } else if self.done {
            Outcome::Success
        } else {
            Outcome::Ignored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, content_type: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(ct) = content_type {
            b = b.header(CONTENT_TYPE, ct);
        }
        b.body(()).unwrap_or_default()
    }

    fn judge(r: &Response<()>) -> DefaultJudge {
        match DefaultClassifier::new().classify_response(r) {
            Classified::AtEnd(j) => j,
            Classified::Decided(o) => panic!("decided at the head: {o}"),
        }
    }

    #[test]
    fn http_statuses() {
        let c = DefaultClassifier::new();
        for status in [500, 502, 503, 504, 429, 408] {
            assert_eq!(
                c.classify_response(&res(status, None)),
                Some(Outcome::Failure),
                "{status}"
            );
        }
        for status in [200, 201, 204, 301, 400, 401, 404, 422] {
            assert_eq!(
                judge(&res(status, None)).end(),
                Outcome::Success,
                "{status}"
            );
            assert_eq!(judge(&res(status, None)).error(), Outcome::Failure);
            assert_eq!(judge(&res(status, None)).abandoned(), Outcome::Ignored);
        }
    }

    // `Classified<DefaultJudge>` isn't `PartialEq` (the judge holds a
    // decoder); compare the decided outcomes only.
    impl PartialEq<Option<Outcome>> for Classified<DefaultJudge> {
        fn eq(&self, other: &Option<Outcome>) -> bool {
            match self {
                Self::Decided(o) => Some(*o) == *other,
                Self::AtEnd(_) => other.is_none(),
            }
        }
    }

    fn stream(chunks: &[&'static str]) -> DefaultJudge {
        let mut j = judge(&res(200, Some("text/event-stream; charset=utf-8")));
        for c in chunks {
            j.data(&Bytes::from_static(c.as_bytes()));
        }
        j
    }

    #[test]
    fn event_streams() {
        let chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert_eq!(stream(&[chunk, "data: [DONE]\n\n"]).end(), Outcome::Success);
        // Split anywhere.
        assert_eq!(
            stream(&[chunk, "data: [DO", "NE]\n", "\n"]).end(),
            Outcome::Success
        );
        // A final event and a proper end, without [DONE]: a success.
        assert_eq!(stream(&[chunk]).end(), Outcome::Success);
        // Empty, cut inside an event, in-band error: failures.
        assert_eq!(stream(&[]).end(), Outcome::Failure);
        assert_eq!(stream(&[chunk, "data: {\"cho"]).end(), Outcome::Failure);
        let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        assert_eq!(stream(&[chunk, error]).end(), Outcome::Failure);
        assert_eq!(
            stream(&[chunk, "event: error\ndata: {\"type\":\"error\"}\n\n"]).end(),
            Outcome::Failure
        );
        // A word "error" in the content is not an error event.
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"no error here\"}}]}\n\n";
        assert_eq!(
            stream(&[content, "data: [DONE]\n\n"]).end(),
            Outcome::Success
        );
        // A broken stream fails; an abandoned one counts as neither.
        assert_eq!(stream(&[chunk]).error(), Outcome::Failure);
        assert_eq!(stream(&[chunk]).abandoned(), Outcome::Ignored);
        assert_eq!(stream(&[chunk, error]).abandoned(), Outcome::Failure);
        assert_eq!(
            stream(&[chunk, "data: [DONE]\n\n"]).abandoned(),
            Outcome::Success
        );
        assert_eq!(
            stream(&[chunk, "data: [DONE]\n\n"]).error(),
            Outcome::Success
        );
        // Anthropic's and the Responses API's named events.
        let start = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n";
        let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        assert_eq!(stream(&[start, stop]).end(), Outcome::Success);
        assert_eq!(stream(&[start, stop]).error(), Outcome::Success);
        let overloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
        assert_eq!(stream(&[start, overloaded]).end(), Outcome::Failure);
        let completed = "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
        assert_eq!(stream(&[completed]).error(), Outcome::Success);
        let failed = "event: response.failed\ndata: {\"type\":\"response.failed\"}\n\n";
        assert_eq!(stream(&[failed]).end(), Outcome::Failure);
        // Judging can be switched off.
        let c = DefaultClassifier::new().judge_event_streams(false);
        match c.classify_response(&res(200, Some("text/event-stream"))) {
            Classified::AtEnd(j) => assert_eq!(j.end(), Outcome::Success),
            Classified::Decided(o) => panic!("{o}"),
        }
    }

    #[test]
    fn grpc() {
        let c = DefaultClassifier::new();
        let head = |code: &str| {
            Response::builder()
                .header(CONTENT_TYPE, "application/grpc")
                .header("grpc-status", code)
                .body(())
                .unwrap_or_default()
        };
        for code in ["14", "4", "8", "13"] {
            assert_eq!(c.classify_response(&head(code)), Some(Outcome::Failure));
        }
        for code in ["0", "3", "5", "16"] {
            assert_eq!(c.classify_response(&head(code)), Some(Outcome::Success));
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let mut j = judge(&res(200, Some("application/grpc+proto")));
        j.trailers(&trailers);
        assert_eq!(j.end(), Outcome::Failure);
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut j = judge(&res(200, Some("application/grpc")));
        j.trailers(&trailers);
        assert_eq!(j.end(), Outcome::Success);
        // No status at all: cut short.
        assert_eq!(
            judge(&res(200, Some("application/grpc"))).end(),
            Outcome::Failure
        );
        let c = c.grpc_failure_codes([5]);
        assert_eq!(c.classify_response(&head("5")), Some(Outcome::Failure));
        assert_eq!(c.classify_response(&head("14")), Some(Outcome::Success));
    }
}
