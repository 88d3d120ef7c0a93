//! `POST /v1/responses`, OpenAI's Responses API: the request, the `response` object and its
//! stream of named events (`response.created` ... `response.completed`).

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::admit::{Admitted, Generating, generate};
use crate::error::Dialect;
use crate::generate::{self, Generated, TOKENS_PER_MESSAGE};
use crate::stats::Endpoint;
use crate::stream::{self, ERROR_EVENT_MESSAGE, Ending};
use crate::{MockLlm, unix_now};

/// Fields that do not change the answer's text (see the chat route's list).
const NOT_HASHED: [&str; 3] = ["stream", "stream_options", "max_output_tokens"];

/// Content part types whose `text` counts as prompt.
const TEXT_PARTS: [&str; 3] = ["input_text", "output_text", "text"];

/// A valid Responses request, reduced to what the mock needs.
#[derive(Debug)]
pub(crate) struct ResponsesRequest {
    model: String,
    pub(crate) stream: bool,
    instructions: Option<String>,
    max_output_tokens: Option<u64>,
    temperature: f64,
    top_p: f64,
    pub(crate) answer: Generated,
    /// 4 plus the words of each input item (a string `input` is one item), and 4 plus the words
    /// of `instructions` if there are some.
    pub(crate) input_tokens: u64,
}

impl ResponsesRequest {
    /// Reads a request body; `Err` carries the message of the 400.
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        let object = generate::object(value)?;
        let model = generate::model(object)?;
        let mut input_tokens = match object.get("input") {
            Some(Value::String(text)) => TOKENS_PER_MESSAGE + generate::words(text),
            Some(Value::Array(items)) => {
                let mut tokens = 0;
                for (index, item) in items.iter().enumerate() {
                    let Some(item) = item.as_object() else {
                        return Err(format!(
                            "Invalid type for 'input[{index}]': expected an object."
                        ));
                    };
                    tokens += TOKENS_PER_MESSAGE
                        + generate::content_words(item.get("content"), &TEXT_PARTS);
                }
                tokens
            }
            Some(_) => {
                return Err(
                    "Invalid type for 'input': expected a string or an array of items.".to_owned(),
                );
            }
            None => return Err("Missing required parameter: 'input'.".to_owned()),
        };
        let instructions = match object.get("instructions") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                input_tokens += TOKENS_PER_MESSAGE + generate::words(text);
                Some(text.clone())
            }
            Some(_) => return Err("Invalid type for 'instructions': expected a string.".to_owned()),
        };
        let max_output_tokens = generate::limit(object, "max_output_tokens")?;
        let number = |name: &str| object.get(name).and_then(Value::as_f64).unwrap_or(1.0);
        Ok(Self {
            stream: generate::flag(object, "stream")?,
            instructions,
            max_output_tokens,
            temperature: number("temperature"),
            top_p: number("top_p"),
            answer: Generated::new(object, &NOT_HASHED, max_output_tokens),
            input_tokens,
            model,
        })
    }

    /// `"completed"`, or `"incomplete"` when `max_output_tokens` cut the answer.
    pub(crate) fn status(&self) -> &'static str {
        if self.answer.truncated {
            "incomplete"
        } else {
            "completed"
        }
    }

    /// `resp_` and the request hash in hex.
    fn id(&self) -> String {
        format!("resp_{:016x}", self.answer.hash)
    }

    /// `msg_` and the request hash in hex: the one output item.
    fn item_id(&self) -> String {
        format!("msg_{:016x}", self.answer.hash)
    }

    /// The `response` object: `output` and `usage` only once `finished`.
    fn response<'a>(
        &'a self,
        id: &'a str,
        created_at: u64,
        output: &'a [OutputMessage<'a>],
        finished: bool,
    ) -> ResponseObject<'a> {
        let usage = finished.then(|| {
            let output_tokens = self.answer.output_tokens();
            ResponseUsage {
                input_tokens: self.input_tokens,
                input_tokens_details: InputTokensDetails { cached_tokens: 0 },
                output_tokens,
                output_tokens_details: OutputTokensDetails {
                    reasoning_tokens: 0,
                },
                total_tokens: self.input_tokens + output_tokens,
            }
        });
        let incomplete = finished && self.answer.truncated;
        ResponseObject {
            id,
            object: "response",
            created_at,
            status: if finished {
                self.status()
            } else {
                "in_progress"
            },
            error: None,
            incomplete_details: incomplete.then_some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
            instructions: self.instructions.as_deref(),
            max_output_tokens: self.max_output_tokens,
            model: &self.model,
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: Reasoning {
                effort: None,
                summary: None,
            },
            store: true,
            temperature: self.temperature,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: [],
            top_p: self.top_p,
            truncation: "disabled",
            usage,
            user: None,
            metadata: Metadata {},
        }
    }

    /// The output message item, `in_progress` and empty until `finished`.
    fn message<'a>(
        &self,
        item_id: &'a str,
        content: &'a [OutputText<'a>],
        finished: bool,
    ) -> OutputMessage<'a> {
        OutputMessage {
            kind: "message",
            id: item_id,
            status: if finished {
                self.status()
            } else {
                "in_progress"
            },
            role: "assistant",
            content,
        }
    }
}

#[derive(Debug, Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<()>,
    incomplete_details: Option<IncompleteDetails>,
    instructions: Option<&'a str>,
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: &'a [OutputMessage<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<()>,
    reasoning: Reasoning,
    store: bool,
    temperature: f64,
    text: TextConfig,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: f64,
    truncation: &'static str,
    usage: Option<ResponseUsage>,
    user: Option<()>,
    metadata: Metadata,
}

#[derive(Debug, Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Debug, Serialize)]
struct Reasoning {
    effort: Option<()>,
    summary: Option<()>,
}

#[derive(Debug, Serialize)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Debug, Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// `{}`.
#[derive(Debug, Serialize)]
struct Metadata {}

#[derive(Debug, Serialize)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

#[derive(Debug, Serialize)]
struct InputTokensDetails {
    cached_tokens: u64,
}

#[derive(Debug, Serialize)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

#[derive(Debug, Serialize)]
struct OutputMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText<'a>],
}

#[derive(Debug, Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [(); 0],
}

impl<'a> OutputText<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: [],
        }
    }
}

/// `POST /v1/responses`.
pub(crate) async fn responses(State(mock): State<MockLlm>, request: Request) -> Response {
    generate(
        &mock,
        Endpoint::Responses,
        Dialect::OpenAi,
        request,
        ResponsesRequest::parse,
        plan,
        |request, _| {
            let id = request.id();
            let item_id = request.item_id();
            let text = request.answer.text();
            let content = [OutputText::new(&text)];
            let output = [request.message(&item_id, &content, true)];
            let body = request.response(&id, unix_now(), &output, true);
            Json(body).into_response()
        },
    )
    .await
}

/// Numbers the events of one stream and writes each as `event: <type>` and
/// `data: {"type", "sequence_number", ...}`.
#[derive(Debug, Default)]
struct Sequencer {
    next: u64,
}

#[derive(Debug, Serialize)]
struct Event<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    body: T,
}

impl Sequencer {
    fn event<T: Serialize>(&mut self, kind: &str, body: T) -> Bytes {
        let sequence_number = self.next;
        self.next += 1;
        stream::named(
            kind,
            &Event {
                kind,
                sequence_number,
                body,
            },
        )
    }
}

#[derive(Debug, Serialize)]
struct WithResponse<'a> {
    response: &'a ResponseObject<'a>,
}

#[derive(Debug, Serialize)]
struct WithItem<'a> {
    output_index: u32,
    item: &'a OutputMessage<'a>,
}

#[derive(Debug, Serialize)]
struct WithPart<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: &'a OutputText<'a>,
}

#[derive(Debug, Serialize)]
struct TextDelta<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    delta: &'a str,
    logprobs: [(); 0],
}

#[derive(Debug, Serialize)]
struct TextDone<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    text: &'a str,
    logprobs: [(); 0],
}

#[derive(Debug, Serialize)]
struct StreamError<'a> {
    code: &'a str,
    message: &'a str,
    param: Option<()>,
}

/// Every event of the stream: the lifecycle events and the empty item and part, one
/// `response.output_text.delta` per token, then the done events and `response.completed`
/// (`response.incomplete` when `max_output_tokens` cut the answer).
fn plan(admitted: &Admitted<ResponsesRequest>) -> stream::Plan {
    let request = &admitted.request;
    let id = request.id();
    let item_id = request.item_id();
    let created_at = unix_now();
    let mut events = Sequencer::default();
    let started = request.response(&id, created_at, &[], false);
    let empty = OutputText::new("");
    let tokens: Vec<String> = request.answer.tokens().collect();

    let mut plan = admitted.plan(tokens.len());
    plan.event(events.event("response.created", WithResponse { response: &started }));
    plan.event(events.event("response.in_progress", WithResponse { response: &started }));
    plan.event(events.event(
        "response.output_item.added",
        WithItem {
            output_index: 0,
            item: &request.message(&item_id, &[], false),
        },
    ));
    plan.event(events.event(
        "response.content_part.added",
        WithPart {
            item_id: &item_id,
            output_index: 0,
            content_index: 0,
            part: &empty,
        },
    ));
    for token in tokens.iter().take(plan.tokens_to_send()) {
        plan.token(events.event(
            "response.output_text.delta",
            TextDelta {
                item_id: &item_id,
                output_index: 0,
                content_index: 0,
                delta: token,
                logprobs: [],
            },
        ));
    }
    match plan.ending() {
        Ending::ErrorEvent => plan.error(events.event(
            "error",
            StreamError {
                code: "server_error",
                message: ERROR_EVENT_MESSAGE,
                param: None,
            },
        )),
        Ending::Abort => plan.abort(),
        Ending::Finish => {
            let text = request.answer.text();
            plan.event(events.event(
                "response.output_text.done",
                TextDone {
                    item_id: &item_id,
                    output_index: 0,
                    content_index: 0,
                    text: &text,
                    logprobs: [],
                },
            ));
            let content = [OutputText::new(&text)];
            plan.event(events.event(
                "response.content_part.done",
                WithPart {
                    item_id: &item_id,
                    output_index: 0,
                    content_index: 0,
                    part: &content[0],
                },
            ));
            let output = [request.message(&item_id, &content, true)];
            plan.event(events.event(
                "response.output_item.done",
                WithItem {
                    output_index: 0,
                    item: &output[0],
                },
            ));
            let done = if request.answer.truncated {
                "response.incomplete"
            } else {
                "response.completed"
            };
            let finished = request.response(&id, created_at, &output, true);
            plan.complete(events.event(
                done,
                WithResponse {
                    response: &finished,
                },
            ));
        }
    }
    plan
}

impl Generating for ResponsesRequest {
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
