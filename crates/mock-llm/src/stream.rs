//! The streaming (`stream: true`) answer: one SSE chunk per token, paced by a timer.

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

use crate::answer::ChatRequest;
use crate::fault::Fault;
use crate::stats::{Counters, InFlight, Outcome, StreamGuard};
use crate::wire::{Chunk, ChunkChoice, Delta, StreamError, StreamErrorDetail, Usage};
use crate::{shutdown_requested, unix_now};

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
        bytes: Bytes,
        token: bool,
        outcome: Option<Outcome>,
    },
    /// Fail the body, which makes the server close the connection mid-stream.
    Abort,
}

struct State {
    steps: std::vec::IntoIter<Step>,
    start: Instant,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
}

/// Builds the `text/event-stream` response; the stream counts as started now.
pub(crate) fn respond(
    request: &ChatRequest,
    fault: Fault,
    token_delay: Duration,
    in_flight: InFlight,
) -> Response {
    let guard = StreamGuard::start(in_flight);
    let shutdown = guard.inner().shutdown.subscribe();
    let state = State {
        steps: plan(request, fault, token_delay).into_iter(),
        start: Instant::now(),
        guard,
        shutdown,
    };
    let body = stream::unfold(state, |mut state| async move {
        let step = state.steps.next()?;
        let deadline = state.start + step.at;
        if Instant::now() < deadline {
            let stopped = tokio::select! {
                biased;
                () = shutdown_requested(&mut state.shutdown) => true,
                () = tokio::time::sleep_until(deadline) => false,
            };
            if stopped {
                state.guard.finish(Outcome::Broken);
                state.steps = Vec::new().into_iter();
                return Some((Err(io::Error::other("mock-llm is shutting down")), state));
            }
        }
        match step.kind {
            Kind::Data {
                bytes,
                token,
                outcome,
            } => {
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

/// Every event of the stream, with its time.
fn plan(request: &ChatRequest, fault: Fault, token_delay: Duration) -> Vec<Step> {
    let id = request.id();
    let created = unix_now();
    let model = request.model.as_str();
    let usage_field = request.include_usage.then_some(None);
    let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        }];
        event(&Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: &choices,
            usage: usage_field,
        })
    };

    let tokens: Vec<String> = request.tokens().collect();
    let total = tokens.len() as u64;
    let sent = fault.break_after_tokens.map_or(total, |n| n.min(total));
    let mut steps = Vec::with_capacity(tokens.len() + 4);
    steps.push(Step {
        at: Duration::ZERO,
        kind: Kind::Data {
            bytes: chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                },
                None,
            ),
            token: false,
            outcome: None,
        },
    });
    let mut at = Duration::ZERO;
    for token in tokens
        .iter()
        .take(usize::try_from(sent).unwrap_or(usize::MAX))
    {
        at = at.saturating_add(token_delay);
        steps.push(Step {
            at,
            kind: Kind::Data {
                bytes: chunk(
                    Delta {
                        role: None,
                        content: Some(token),
                    },
                    None,
                ),
                token: true,
                outcome: None,
            },
        });
    }

    let data = |bytes, outcome| Step {
        at,
        kind: Kind::Data {
            bytes,
            token: false,
            outcome,
        },
    };
    if fault.error_event {
        let error = StreamError {
            error: StreamErrorDetail {
                message: "The server had an error while processing your request (mock-llm fault: error_event).",
                kind: "server_error",
            },
        };
        steps.push(data(event(&error), Some(Outcome::Errored)));
    } else if sent < total {
        // The connection drops when the next token was due.
        steps.push(Step {
            at: at.saturating_add(token_delay),
            kind: Kind::Abort,
        });
    } else {
        steps.push(data(
            chunk(Delta::default(), Some(request.finish_reason)),
            None,
        ));
        if request.include_usage {
            let usage = Usage::new(request.prompt_tokens, request.completion_tokens());
            steps.push(data(
                event(&Chunk {
                    id: &id,
                    object: "chat.completion.chunk",
                    created,
                    model,
                    choices: &[],
                    usage: Some(Some(usage)),
                }),
                None,
            ));
        }
        steps.push(data(
            Bytes::from_static(b"data: [DONE]\n\n"),
            Some(Outcome::Completed),
        ));
    }
    steps
}

/// `data: <json>\n\n`.
fn event<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serializing these plain structs into a Vec cannot fail; if it ever did, the event would
    // carry `{}` rather than panic.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.truncate(6);
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
