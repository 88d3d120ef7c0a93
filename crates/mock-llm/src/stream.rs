//! The streaming body every route shares: a [`Plan`] of timed SSE events, one per token paced
//! by [`Config::token_delay`](crate::Config::token_delay), and the stream faults applied to it.
//!
//! A route writes its events into a plan (what a chunk looks like is the route's business);
//! [`respond`] plays it, keeps the counters and ends the stream on shutdown.
//!
//! In simulate mode the simulator paces the plan instead of the clock: the first event waits
//! for the sequence's first token (admission and prefill, as vLLM sends nothing before its
//! first output), each token event (and a `break_after_tokens` abort) is sent when the
//! simulator decodes a token, and the event that completes the stream waits until the
//! sequence is done. The other events follow the one before them at once.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fault::Fault;
use crate::shutdown_requested;
use crate::simulate::{Simulated, Stop};
use crate::stats::{Counters, InFlight, Outcome, StreamGuard};

/// The message of every in-band error event.
pub(crate) const ERROR_EVENT_MESSAGE: &str =
    "The server had an error while processing your request (mock-llm fault: error_event).";

/// How a stream ends under the faults in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The route's normal end events.
    Finish,
    /// An in-band error event ([`Fault::error_event`]), then the end of the body.
    ErrorEvent,
    /// The connection drops when the next token was due ([`Fault::break_after_tokens`]).
    Abort,
}

/// The events of one stream, with their times.
#[derive(Debug)]
pub(crate) struct Plan {
    steps: Vec<Step>,
    at: Duration,
    token_delay: Duration,
    tokens_to_send: usize,
    ending: Ending,
}

impl Plan {
    /// An empty plan for an answer of `tokens` tokens, under `fault`.
    pub(crate) fn new(token_delay: Duration, fault: &Fault, tokens: usize) -> Self {
        let tokens_to_send = fault.break_after_tokens.map_or(tokens, |n| {
            usize::try_from(n).unwrap_or(usize::MAX).min(tokens)
        });
        let ending = if fault.error_event {
            Ending::ErrorEvent
        } else if tokens_to_send < tokens {
            Ending::Abort
        } else {
            Ending::Finish
        };
        Self {
            steps: Vec::with_capacity(tokens + 8),
            at: Duration::ZERO,
            token_delay,
            tokens_to_send,
            ending,
        }
    }

    /// How many token events the route should add: all of them, or fewer when
    /// [`Fault::break_after_tokens`] cuts the stream.
    pub(crate) fn tokens_to_send(&self) -> usize {
        self.tokens_to_send
    }

    /// What the route should add after the tokens.
    pub(crate) fn ending(&self) -> Ending {
        self.ending
    }

    /// An event sent together with the one before it (at the start for the first).
    pub(crate) fn event(&mut self, bytes: Bytes) {
        self.push(bytes, false, None);
    }

    /// An [`event`](Self::event) built when it is sent, from the prompt tokens the simulator's
    /// prefix cache served (`None` when the stream is not simulated).
    pub(crate) fn deferred(&mut self, build: impl FnOnce(Option<u32>) -> Bytes + Send + 'static) {
        self.steps.push(Step {
            at: self.at,
            kind: Kind::Data {
                payload: Payload::Deferred(Deferred(Box::new(build))),
                token: false,
                outcome: None,
            },
        });
    }

    /// An event carrying one token, due one token delay after the previous token; it counts in
    /// [`Stats::tokens_sent`](crate::Stats::tokens_sent) when sent.
    pub(crate) fn token(&mut self, bytes: Bytes) {
        self.at = self.at.saturating_add(self.token_delay);
        self.push(bytes, true, None);
    }

    /// The last event of a stream that reached its normal end.
    pub(crate) fn complete(&mut self, bytes: Bytes) {
        self.push(bytes, false, Some(Outcome::Completed));
    }

    /// The in-band error event that ends the stream.
    pub(crate) fn error(&mut self, bytes: Bytes) {
        self.push(bytes, false, Some(Outcome::Errored));
    }

    /// The connection drops when the next token was due.
    pub(crate) fn abort(&mut self) {
        self.steps.push(Step {
            at: self.at.saturating_add(self.token_delay),
            kind: Kind::Abort,
        });
    }

    fn push(&mut self, bytes: Bytes, token: bool, outcome: Option<Outcome>) {
        self.steps.push(Step {
            at: self.at,
            kind: Kind::Data {
                payload: Payload::Ready(bytes),
                token,
                outcome,
            },
        });
    }
}

/// One thing the body yields, at `at` after the stream started.
#[derive(Debug)]
struct Step {
    at: Duration,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Bytes to send; `token` if they carry one answer token; `outcome` if they end the stream.
    Data {
        payload: Payload,
        token: bool,
        outcome: Option<Outcome>,
    },
    /// Fail the body, which makes the server close the connection mid-stream.
    Abort,
}

/// The bytes of an event: at hand, or built when sent.
#[derive(Debug)]
enum Payload {
    Ready(Bytes),
    Deferred(Deferred),
}

/// Builds an event from the simulator's cached prompt tokens.
struct Deferred(Box<dyn FnOnce(Option<u32>) -> Bytes + Send>);

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

struct State {
    steps: std::vec::IntoIter<Step>,
    start: Instant,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
    pacer: Option<SimPacer>,
}

/// The simulator's pacing of a stream.
struct SimPacer {
    sequence: Simulated,
    /// Whether the first event was sent (it waits for the first token).
    started: bool,
    /// Tokens decoded but not sent yet.
    banked: u32,
}

impl SimPacer {
    /// Waits until the simulator allows an event that is `due` to be sent.
    async fn wait(&mut self, due: Due, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        if !self.started {
            self.started = true;
            self.sequence.token(shutdown).await?;
            self.banked += 1;
        }
        match due {
            Due::Token if self.banked > 0 => {
                self.banked -= 1;
                Ok(())
            }
            Due::Token => self.sequence.token(shutdown).await,
            Due::Done => self.sequence.done(shutdown).await.map(|_| ()),
            Due::Now => Ok(()),
        }
    }
}

/// What an event waits for in a simulated stream.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// The next decoded token (a token event, or the abort due in its place).
    Token,
    /// The end of the sequence (the event that completes the stream).
    Done,
    /// Nothing: it follows the event before it.
    Now,
}

impl Kind {
    /// What this event waits for in a simulated stream.
    fn due(&self) -> Due {
        match self {
            Self::Data { token: true, .. } | Self::Abort => Due::Token,
            Self::Data {
                outcome: Some(Outcome::Completed),
                ..
            } => Due::Done,
            Self::Data { .. } => Due::Now,
        }
    }
}

/// Builds the `text/event-stream` response that plays `plan`, paced by the clock or, with
/// `simulated`, by the simulator; the stream counts as started now.
pub(crate) fn respond(plan: Plan, in_flight: InFlight, simulated: Option<Simulated>) -> Response {
    let guard = StreamGuard::start(in_flight);
    let shutdown = guard.inner().shutdown.subscribe();
    let state = State {
        steps: plan.steps.into_iter(),
        start: Instant::now(),
        guard,
        shutdown,
        pacer: simulated.map(|sequence| SimPacer {
            sequence,
            started: false,
            banked: 0,
        }),
    };
    let body = stream::unfold(state, |mut state| async move {
        let step = state.steps.next()?;
        let waited = match state.pacer.as_mut() {
            Some(pacer) => pacer.wait(step.kind.due(), &mut state.shutdown).await,
            None => {
                let deadline = state.start + step.at;
                if Instant::now() < deadline {
                    tokio::select! {
                        biased;
                        () = shutdown_requested(&mut state.shutdown) => Err(Stop::Shutdown),
                        () = tokio::time::sleep_until(deadline) => Ok(()),
                    }
                } else {
                    Ok(())
                }
            }
        };
        if let Err(stop) = waited {
            state.guard.finish(Outcome::Broken);
            state.steps = Vec::new().into_iter();
            // Frees the simulator's slot now rather than when the body is dropped.
            state.pacer = None;
            let error = match stop {
                Stop::Shutdown => io::Error::other("mock-llm is shutting down"),
                Stop::Lost => io::Error::other("mock-llm: the simulator ended the sequence"),
            };
            return Some((Err(error), state));
        }
        match step.kind {
            Kind::Data {
                payload,
                token,
                outcome,
            } => {
                let bytes = match payload {
                    Payload::Ready(bytes) => bytes,
                    Payload::Deferred(Deferred(build)) => build(
                        state
                            .pacer
                            .as_ref()
                            .and_then(|pacer| pacer.sequence.cached_tokens()),
                    ),
                };
                if token {
                    Counters::bump(&state.guard.inner().stats.tokens_sent);
                }
                if let Some(outcome) = outcome {
                    state.guard.finish(outcome);
                }
                Some((Ok(bytes), state))
            }
            Kind::Abort => {
                // Pending once, so the server flushes the chunks already produced before it
                // sees the error and drops the connection.
                tokio::task::yield_now().await;
                state.guard.finish(Outcome::Broken);
                state.pacer = None;
                let error = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "mock-llm fault: break_after_tokens",
                );
                Some((Err(error), state))
            }
        }
    });

    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `data: <json>\n\n`.
pub(crate) fn data<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    json(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `event: <name>\ndata: <json>\n\n`.
pub(crate) fn named<T: Serialize>(name: &str, value: &T) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    json(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let len = out.len();
    // Serializing these plain structs into a Vec cannot fail; if it ever did, the event would
    // carry `{}` rather than panic.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(len);
        out.extend_from_slice(b"{}");
    }
}
