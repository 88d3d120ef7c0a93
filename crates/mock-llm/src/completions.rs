//! `POST /v1/completions`, OpenAI's legacy text completions: the request, the JSON answer and
//! the stream of `text_completion` chunks.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::admit::{Admitted, Generating, generate};
use crate::error::Dialect;
use crate::generate::{self, Generated};
use crate::stats::Endpoint;
use crate::stream::{self, ERROR_EVENT_MESSAGE, Ending};
use crate::wire::{StreamError, StreamErrorDetail, Usage};
use crate::{MockLlm, unix_now};

/// Fields that do not change the answer's text (see the chat route's list).
const NOT_HASHED: [&str; 3] = ["stream", "stream_options", "max_tokens"];

/// A valid completions request, reduced to what the mock needs.
#[derive(Debug)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) answer: Generated,
    /// The words of every prompt (one per token of a token-id prompt); no per-prompt overhead.
    pub(crate) prompt_tokens: u64,
}

impl CompletionRequest {
    /// Reads a request body; `Err` carries the message of the 400.
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        let object = generate::object(value)?;
        let model = generate::model(object)?;
        let prompt = object
            .get("prompt")
            .ok_or_else(|| "Missing required parameter: 'prompt'.".to_owned())?;
        let prompt_tokens = generate::texts(prompt, "prompt")?
            .iter()
            .map(|text| generate::words(text))
            .sum();
        let stream = generate::flag(object, "stream")?;
        let max_tokens = generate::limit(object, "max_tokens")?;
        Ok(Self {
            model,
            stream,
            include_usage: generate::include_usage(object),
            answer: Generated::new(object, &NOT_HASHED, max_tokens),
            prompt_tokens,
        })
    }

    /// `"stop"`, or `"length"` when `max_tokens` cut the answer.
    pub(crate) fn finish_reason(&self) -> &'static str {
        if self.answer.truncated {
            "length"
        } else {
            "stop"
        }
    }

    /// `cmpl-` and the request hash in hex.
    fn id(&self) -> String {
        format!("cmpl-{:016x}", self.answer.hash)
    }
}

/// A `text_completion`: the whole answer, or one chunk of a stream.
#[derive(Debug, Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<'a>],
    /// Always there in an answer; in a stream, absent unless `stream_options.include_usage`,
    /// then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    /// Always `null`: the mock has no log probabilities.
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(mock): State<MockLlm>, request: Request) -> Response {
    generate(
        &mock,
        Endpoint::Completions,
        Dialect::OpenAi,
        request,
        CompletionRequest::parse,
        plan,
        |request, _| {
            let id = request.id();
            let text = request.answer.text();
            let completion_tokens = request.answer.output_tokens();
            let choices = [TextChoice {
                text: &text,
                index: 0,
                logprobs: None,
                finish_reason: Some(request.finish_reason()),
            }];
            let completion = TextCompletion {
                id: &id,
                object: "text_completion",
                created: unix_now(),
                model: &request.model,
                choices: &choices,
                usage: Some(Some(Usage::new(request.prompt_tokens, completion_tokens))),
            };
            Json(completion).into_response()
        },
    )
    .await
}

/// Every chunk of the stream: one per token, then the finish chunk, the usage chunk (with
/// `stream_options.include_usage`) and `[DONE]`.
fn plan(admitted: &Admitted<CompletionRequest>) -> stream::Plan {
    let request = &admitted.request;
    let id = request.id();
    let created = unix_now();
    let chunk = |choices: &[TextChoice<'_>], usage: Option<Option<Usage>>| {
        stream::data(&TextCompletion {
            id: &id,
            object: "text_completion",
            created,
            model: &request.model,
            choices,
            usage,
        })
    };
    let usage_field = request.include_usage.then_some(None);
    let piece = |text: &str, finish_reason: Option<&'static str>| {
        chunk(
            &[TextChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            usage_field,
        )
    };

    let tokens: Vec<String> = request.answer.tokens().collect();
    let mut plan = admitted.plan(tokens.len());
    for token in tokens.iter().take(plan.tokens_to_send()) {
        plan.token(piece(token, None));
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
            plan.event(piece("", Some(request.finish_reason())));
            if request.include_usage {
                let usage = Usage::new(request.prompt_tokens, request.answer.output_tokens());
                plan.event(chunk(&[], Some(Some(usage))));
            }
            plan.complete(Bytes::from_static(b"data: [DONE]\n\n"));
        }
    }
    plan
}

impl Generating for CompletionRequest {
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
