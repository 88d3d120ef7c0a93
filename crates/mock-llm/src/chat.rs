//! `POST /v1/chat/completions`: the request, the JSON answer and the stream of
//! `chat.completion.chunk`s.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::admit::{Admitted, Generating, generate};
use crate::error::Dialect;
use crate::generate::{self, ECHO_SEPARATOR, Generated};
use crate::stats::Endpoint;
use crate::stream::{self, ERROR_EVENT_MESSAGE, Ending};
use crate::wire::{
    Choice, Chunk, ChunkChoice, Completion, Delta, Message, StreamError, StreamErrorDetail, Usage,
};
use crate::{MockLlm, unix_now};

/// Top-level request fields that do not change the answer's text: how it is delivered
/// (`stream`, `stream_options`) and where it is cut (`max_tokens`, `max_completion_tokens`), so
/// that a streamed answer equals the non-streamed one and a truncated answer is a prefix of the
/// full one.
const NOT_HASHED: [&str; 4] = [
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
];

/// A valid chat request, reduced to what the mock needs.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) answer: Generated,
    /// Per message, 4 plus the words of its content (a string or its `text` parts).
    pub(crate) prompt_tokens: u64,
    /// The prompt a simulated server gets: see [`simulated_prompt`].
    pub(crate) simulated_prompt: String,
}

impl ChatRequest {
    /// Reads a request body; `Err` carries the message of the 400.
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        Self::parse_with(value, false)
    }

    /// [`parse`](Self::parse), answering with the echo of the system messages when
    /// `echo_system` is set (see [`Config::echo_system`](crate::Config::echo_system)).
    pub(crate) fn parse_with(value: &Value, echo_system: bool) -> Result<Self, String> {
        let object = generate::object(value)?;
        let model = generate::model(object)?;
        let messages = match object.get("messages") {
            Some(Value::Array(messages)) => messages,
            Some(_) => return Err("Invalid type for 'messages': expected an array.".to_owned()),
            None => return Err("Missing required parameter: 'messages'.".to_owned()),
        };
        let prompt_tokens = generate::messages_tokens(messages, &["text"])?;
        let simulated_prompt = simulated_prompt(messages);
        let stream = generate::flag(object, "stream")?;
        let include_usage = generate::include_usage(object);
        // `max_completion_tokens` replaced `max_tokens`; it wins when both are present.
        let max_tokens = match generate::limit(object, "max_completion_tokens")? {
            Some(max) => Some(max),
            None => generate::limit(object, "max_tokens")?,
        };
        let answer = if echo_system {
            Generated::echo(object, &NOT_HASHED, &system_text(messages), max_tokens)
        } else {
            Generated::new(object, &NOT_HASHED, max_tokens)
        };
        Ok(Self {
            model,
            stream,
            include_usage,
            answer,
            prompt_tokens,
            simulated_prompt,
        })
    }

    /// `"stop"`, or `"length"` when the limit cut the answer.
    pub(crate) fn finish_reason(&self) -> &'static str {
        if self.answer.truncated {
            "length"
        } else {
            "stop"
        }
    }

    /// `chatcmpl-` and the request hash in hex.
    fn id(&self) -> String {
        format!("chatcmpl-{:016x}", self.answer.hash)
    }
}

/// The prompt of a (valid) `messages` array as a simulated server sees it: each message's
/// content text (a string, or its `text` parts concatenated; nothing for any other content),
/// in order, joined with `\n`. Roles and names are left out.
fn simulated_prompt(messages: &[Value]) -> String {
    let texts: Vec<String> = messages
        .iter()
        .map(|message| generate::content_text(message.get("content"), &["text"]))
        .collect();
    texts.join("\n")
}

/// The content text of every message whose role is `system` or `developer`, in order, joined
/// with [`ECHO_SEPARATOR`].
fn system_text(messages: &[Value]) -> String {
    let texts: Vec<String> = messages
        .iter()
        .filter(|message| {
            message
                .get("role")
                .and_then(Value::as_str)
                .is_some_and(|role| role == "system" || role == "developer")
        })
        .map(|message| generate::content_text(message.get("content"), &["text"]))
        .collect();
    texts.join(ECHO_SEPARATOR)
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(mock): State<MockLlm>, request: Request) -> Response {
    let echo_system = mock.config().echo_system;
    generate(
        &mock,
        Endpoint::Chat,
        Dialect::OpenAi,
        request,
        |value| ChatRequest::parse_with(value, echo_system),
        plan,
        |request, cached_tokens| {
            let id = request.id();
            let content = request.answer.text();
            let completion_tokens = request.answer.output_tokens();
            let completion = Completion {
                id: &id,
                object: "chat.completion",
                created: unix_now(),
                model: &request.model,
                choices: [Choice {
                    index: 0,
                    message: Message {
                        role: "assistant",
                        content: &content,
                    },
                    finish_reason: request.finish_reason(),
                }],
                usage: Usage::new(request.prompt_tokens, completion_tokens).cached(cached_tokens),
            };
            Json(completion).into_response()
        },
    )
    .await
}

/// Every chunk of the stream: the role, one per token, then the finish chunk, the usage chunk
/// (with `stream_options.include_usage`) and `[DONE]`.
fn plan(admitted: &Admitted<ChatRequest>) -> stream::Plan {
    let request = &admitted.request;
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
        stream::data(&Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model,
            choices: &choices,
            usage: usage_field,
        })
    };

    let tokens: Vec<String> = request.answer.tokens().collect();
    let mut plan = admitted.plan(tokens.len());
    plan.event(chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    for token in tokens.iter().take(plan.tokens_to_send()) {
        plan.token(chunk(
            Delta {
                role: None,
                content: Some(token),
            },
            None,
        ));
    }
    match plan.ending() {
        Ending::ErrorEvent => plan.error(stream::data(&StreamError {
            error: StreamErrorDetail {
                message: ERROR_EVENT_MESSAGE,
                kind: "server_error",
            },
        })),
        Ending::Abort => plan.abort(),
        Ending::Finish => {
            plan.event(chunk(Delta::default(), Some(request.finish_reason())));
            if request.include_usage {
                let usage = Usage::new(request.prompt_tokens, request.answer.output_tokens());
                let model = model.to_owned();
                plan.deferred(move |cached_tokens| {
                    stream::data(&Chunk {
                        id: &id,
                        object: "chat.completion.chunk",
                        created,
                        model: &model,
                        choices: &[],
                        usage: Some(Some(usage.cached(cached_tokens))),
                    })
                });
            }
            plan.complete(Bytes::from_static(b"data: [DONE]\n\n"));
        }
    }
    plan
}

impl Generating for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn streams(&self) -> bool {
        self.stream
    }

    fn answer(&self) -> &Generated {
        &self.answer
    }

    fn simulated_prompt(&self) -> Option<&str> {
        Some(&self.simulated_prompt)
    }
}
