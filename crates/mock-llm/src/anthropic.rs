//! `POST /v1/messages`, Anthropic's Messages API: the request, the `message` answer and its
//! stream of named events (`message_start` ... `message_stop`). Every error on this route has
//! Anthropic's shape.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::MockLlm;
use crate::admit::{Admitted, Generating, generate};
use crate::error::{AnthropicError, AnthropicErrorDetail, Dialect};
use crate::generate::{self, ECHO_SEPARATOR, Generated, TOKENS_PER_MESSAGE};
use crate::stats::Endpoint;
use crate::stream::{self, ERROR_EVENT_MESSAGE, Ending};

/// Fields that do not change the answer's text (see the chat route's list).
const NOT_HASHED: [&str; 2] = ["stream", "max_tokens"];

/// A valid Messages request, reduced to what the mock needs.
#[derive(Debug)]
pub(crate) struct MessagesRequest {
    model: String,
    pub(crate) stream: bool,
    pub(crate) answer: Generated,
    /// Per message, 4 plus the words of its content (a string or its `text` blocks); the same
    /// for `system` if there is one.
    pub(crate) input_tokens: u64,
}

impl MessagesRequest {
    /// Reads a request body; `Err` carries the message of the 400.
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        Self::parse_with(value, false)
    }

    /// [`parse`](Self::parse), answering with the echo of `system` when `echo_system` is set
    /// (see [`Config::echo_system`](crate::Config::echo_system)).
    pub(crate) fn parse_with(value: &Value, echo_system: bool) -> Result<Self, String> {
        let object = generate::object(value)?;
        let model = generate::model(object)?;
        let max_tokens = generate::limit(object, "max_tokens")?
            .ok_or_else(|| "max_tokens: Field required".to_owned())?;
        let messages = match object.get("messages") {
            Some(Value::Array(messages)) => messages,
            Some(_) => return Err("messages: Input should be a valid list".to_owned()),
            None => return Err("messages: Field required".to_owned()),
        };
        let mut input_tokens = generate::messages_tokens(messages, &["text"])?;
        let system = object.get("system");
        match system {
            None | Some(Value::Null) => {}
            Some(system @ (Value::String(_) | Value::Array(_))) => {
                input_tokens +=
                    TOKENS_PER_MESSAGE + generate::content_words(Some(system), &["text"]);
            }
            Some(_) => {
                return Err("system: Input should be a string or a list of text blocks".to_owned());
            }
        }
        let answer = if echo_system {
            Generated::echo(object, &NOT_HASHED, &system_text(system), Some(max_tokens))
        } else {
            Generated::new(object, &NOT_HASHED, Some(max_tokens))
        };
        Ok(Self {
            stream: generate::flag(object, "stream")?,
            answer,
            input_tokens,
            model,
        })
    }

    /// `"end_turn"`, or `"max_tokens"` when `max_tokens` cut the answer.
    pub(crate) fn stop_reason(&self) -> &'static str {
        if self.answer.truncated {
            "max_tokens"
        } else {
            "end_turn"
        }
    }

    /// `msg_` and the request hash in hex.
    fn id(&self) -> String {
        format!("msg_{:016x}", self.answer.hash)
    }
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [TextBlock<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Debug, Serialize)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
}

/// The text of a (valid) `system` field: a string itself, or the `text` of each of its blocks
/// of type `text`, joined with [`ECHO_SEPARATOR`]; nothing when there is none.
fn system_text(system: Option<&Value>) -> String {
    match system {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect();
            texts.join(ECHO_SEPARATOR)
        }
        _ => String::new(),
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(State(mock): State<MockLlm>, request: Request) -> Response {
    let echo_system = mock.config().echo_system;
    generate(
        &mock,
        Endpoint::Messages,
        Dialect::Anthropic,
        request,
        |value| MessagesRequest::parse_with(value, echo_system),
        plan,
        |request, _| {
            let id = request.id();
            let text = request.answer.text();
            let output_tokens = request.answer.output_tokens();
            let message = Message {
                id: &id,
                kind: "message",
                role: "assistant",
                model: &request.model,
                content: &[TextBlock {
                    kind: "text",
                    text: &text,
                }],
                stop_reason: Some(request.stop_reason()),
                stop_sequence: None,
                usage: Usage {
                    input_tokens: request.input_tokens,
                    output_tokens,
                },
            };
            Json(message).into_response()
        },
    )
    .await
}

/// Any method but `POST` on `/v1/messages`.
pub(crate) async fn method_not_allowed(method: Method) -> Response {
    Dialect::Anthropic.error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        &format!("Method {method} is not allowed on /v1/messages."),
    )
}

#[derive(Debug, Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Message<'a>,
}

#[derive(Debug, Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: TextBlock<'a>,
}

#[derive(Debug, Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: TextBlock<'a>,
}

#[derive(Debug, Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Debug, Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: OutputUsage,
}

#[derive(Debug, Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Debug, Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

/// `{"type": <kind>}`: `ping` and `message_stop`.
#[derive(Debug, Serialize)]
struct Bare {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Every event of the stream, named as Anthropic names them: `message_start`,
/// `content_block_start`, `ping`, one `content_block_delta` per token, `content_block_stop`,
/// `message_delta`, `message_stop`.
fn plan(admitted: &Admitted<MessagesRequest>) -> stream::Plan {
    let request = &admitted.request;
    let id = request.id();
    let tokens: Vec<String> = request.answer.tokens().collect();
    let mut plan = admitted.plan(tokens.len());
    plan.event(stream::named(
        "message_start",
        &MessageStart {
            kind: "message_start",
            message: Message {
                id: &id,
                kind: "message",
                role: "assistant",
                model: &request.model,
                content: &[],
                stop_reason: None,
                stop_sequence: None,
                // What Anthropic reports before the first token.
                usage: Usage {
                    input_tokens: request.input_tokens,
                    output_tokens: 1,
                },
            },
        },
    ));
    plan.event(stream::named(
        "content_block_start",
        &BlockStart {
            kind: "content_block_start",
            index: 0,
            content_block: TextBlock {
                kind: "text",
                text: "",
            },
        },
    ));
    plan.event(stream::named("ping", &Bare { kind: "ping" }));
    for token in tokens.iter().take(plan.tokens_to_send()) {
        plan.token(stream::named(
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index: 0,
                delta: TextBlock {
                    kind: "text_delta",
                    text: token,
                },
            },
        ));
    }
    match plan.ending() {
        Ending::ErrorEvent => plan.error(stream::named(
            "error",
            &AnthropicError {
                kind: "error",
                error: AnthropicErrorDetail {
                    kind: "overloaded_error",
                    message: ERROR_EVENT_MESSAGE,
                },
            },
        )),
        Ending::Abort => plan.abort(),
        Ending::Finish => {
            plan.event(stream::named(
                "content_block_stop",
                &BlockStop {
                    kind: "content_block_stop",
                    index: 0,
                },
            ));
            plan.event(stream::named(
                "message_delta",
                &MessageDelta {
                    kind: "message_delta",
                    delta: StopDelta {
                        stop_reason: request.stop_reason(),
                        stop_sequence: None,
                    },
                    usage: OutputUsage {
                        output_tokens: request.answer.output_tokens(),
                    },
                },
            ));
            plan.complete(stream::named(
                "message_stop",
                &Bare {
                    kind: "message_stop",
                },
            ));
        }
    }
    plan
}

impl Generating for MessagesRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn streams(&self) -> bool {
        self.stream
    }

    fn answer(&self) -> &Generated {
        &self.answer
    }
}
