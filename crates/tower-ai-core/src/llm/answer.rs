//! What the layers read of an answer: [`Usage`], [`FinishReason`],
//! [`Completion`] from a JSON body and [`StreamChunk`] from a stream event.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::json::{
    First, Lenient, List, LlmError, Obj, Piece, Skim, Str, Text, floor_char_boundary,
};

/// Token usage as an answer reports it, in OpenAI's terms.
///
/// Deserializing reads every API's shape: OpenAI's `prompt_tokens` /
/// `completion_tokens` / `total_tokens`, and the Responses and Anthropic
/// APIs' `input_tokens` / `output_tokens`. Anthropic reports cached input
/// apart (`cache_creation_input_tokens`, `cache_read_input_tokens`); those are
/// added to the prompt tokens, since they are input the call consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "RawUsage")]
#[non_exhaustive]
pub struct Usage {
    /// `prompt_tokens`, or `input_tokens` (plus Anthropic's cache reads and
    /// writes).
    pub prompt_tokens: u64,
    /// `completion_tokens`, or `output_tokens`.
    pub completion_tokens: u64,
    /// `total_tokens` (0 when the answer left it out, as Anthropic does).
    pub total_tokens: u64,
}

impl Usage {
    /// A usage record.
    pub const fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }

    /// The total, computed from the parts where the answer left it out.
    pub fn total(&self) -> u64 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.prompt_tokens + self.completion_tokens
        }
    }

    /// Takes in a later report of the same answer's usage. Streams report
    /// running totals, and not every field each time (Anthropic sends the
    /// input tokens when the message starts and the output tokens as it
    /// ends), so each field keeps the larger count.
    ///
    /// ```
    /// use tower_ai_core::llm::Usage;
    ///
    /// let mut usage = Usage::new(25, 1);
    /// usage.merge(Usage::new(0, 15));
    /// assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total()), (25, 15, 40));
    /// ```
    pub fn merge(&mut self, later: Self) {
        self.prompt_tokens = self.prompt_tokens.max(later.prompt_tokens);
        self.completion_tokens = self.completion_tokens.max(later.completion_tokens);
        self.total_tokens = self.total_tokens.max(later.total_tokens);
        if self.total_tokens > 0 {
            self.total_tokens = self
                .total_tokens
                .max(self.prompt_tokens.saturating_add(self.completion_tokens));
        }
    }
}

/// Why the model stopped (`finish_reason`, Anthropic's `stop_reason`, a
/// response's `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// A natural end, or a stop sequence: `stop`; Anthropic's `end_turn`,
    /// `stop_sequence`; a response `completed`.
    Stop,
    /// Cut off by the token limit: `length`; Anthropic's `max_tokens` (and
    /// `model_context_window_exceeded`); a response `incomplete` for
    /// `max_output_tokens`.
    Length,
    /// `tool_calls` (or `function_call`); Anthropic's `tool_use`.
    ToolCalls,
    /// `content_filter` (also a response `incomplete` for it); Anthropic's
    /// `refusal`.
    ContentFilter,
    /// Anything else, e.g. Anthropic's `pause_turn`, a response `cancelled`
    /// or still `in_progress`.
    Other(String),
}

impl FinishReason {
    fn from_str(s: &str) -> Self {
        match s {
            "stop" | "end_turn" | "stop_sequence" => Self::Stop,
            "length" | "max_tokens" | "max_output_tokens" | "model_context_window_exceeded" => {
                Self::Length
            }
            "tool_calls" | "function_call" | "tool_use" => Self::ToolCalls,
            "content_filter" | "refusal" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether the answer ended on its own (`stop` or `tool_calls`), so it is
    /// complete.
    pub fn is_complete(&self) -> bool {
        matches!(self, Self::Stop | Self::ToolCalls)
    }
}

/// What a non-streamed answer body says about itself: a chat or text
/// completion, an embeddings list, a response, an Anthropic message, or an
/// error object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completion {
    /// `usage`, when present.
    pub usage: Option<Usage>,
    /// The first choice's `finish_reason`, Anthropic's `stop_reason`, or what
    /// a response's `status` (and `incomplete_details.reason`) means. `None`
    /// for embeddings and for a failed response.
    pub finish_reason: Option<FinishReason>,
    /// Whether the body is an error: an `error` that isn't `null` (OpenAI,
    /// Anthropic), Anthropic's `"type": "error"`, or a response whose
    /// `status` is `failed`.
    pub error: bool,
    /// The answer's text: the first choice's `message.content` (chat) or
    /// `text` (completions), the `output_text` parts of a response's
    /// `output`, or the `text` blocks of an Anthropic message's `content`,
    /// joined. `None` when the body holds none (embeddings, errors).
    pub content: Option<String>,
}

impl Completion {
    /// Reads an answer body. A body that isn't JSON is an error. Costs one
    /// pass over the body and a copy of the answer's text.
    ///
    /// ```
    /// use tower_ai_core::llm::{Completion, FinishReason};
    ///
    /// let c = Completion::from_json(br#"{"object":"response","status":"incomplete",
    ///     "incomplete_details":{"reason":"max_output_tokens"},"error":null,
    ///     "output":[{"type":"message","content":[{"type":"output_text","text":"Once upon"}]}],
    ///     "usage":{"input_tokens":12,"output_tokens":2,"total_tokens":14}}"#).unwrap();
    /// assert_eq!(c.finish_reason, Some(FinishReason::Length));
    /// assert!(!c.error);
    /// assert_eq!(c.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((12, 2)));
    /// assert_eq!(c.content.as_deref(), Some("Once upon"));
    /// ```
    pub fn from_json(body: &[u8]) -> Result<Self, LlmError> {
        read_answer(body, Some(usize::MAX))
    }

    /// Reads an answer body's usage, finish reason and error, skipping its
    /// text ([`Completion::content`] is `None`): one pass, no copy.
    ///
    /// ```
    /// use tower_ai_core::llm::{Completion, FinishReason};
    ///
    /// let c = Completion::without_content(br#"{"choices":[{"message":{"content":"Hi"},
    ///     "finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#).unwrap();
    /// assert_eq!(c.finish_reason, Some(FinishReason::Stop));
    /// assert_eq!(c.usage.map(|u| u.total()), Some(4));
    /// assert_eq!(c.content, None);
    /// ```
    pub fn without_content(body: &[u8]) -> Result<Self, LlmError> {
        read_answer(body, None)
    }
}

/// One `data:` payload of a streamed answer: a chat or text completion chunk,
/// a Responses event or an Anthropic event (each of which carries its event
/// name in its `type`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamChunk {
    /// The usage this chunk reports. OpenAI sends it once, in a final chunk
    /// with no choices, when `stream_options.include_usage` is set; a
    /// response in its `response.completed` (or `incomplete`, `failed`)
    /// event; Anthropic in parts, the input tokens in `message_start` and the
    /// output tokens so far in `message_delta` (combine them with
    /// [`Usage::merge`]).
    pub usage: Option<Usage>,
    /// The finish reason this chunk sets: the first choice's
    /// `finish_reason`, Anthropic's `message_delta` `stop_reason`, or what a
    /// response's final event says.
    pub finish_reason: Option<FinishReason>,
    /// Whether the chunk is an in-band error event: an `error` that isn't
    /// `null`, a `"type": "error"` event (Anthropic, Responses), or
    /// `response.failed`.
    pub error: bool,
    /// Whether this event ends the stream: the `[DONE]` sentinel (chat and
    /// text completions), Anthropic's `message_stop`, or a response's
    /// `response.completed`, `response.incomplete` or `response.failed`.
    pub done: bool,
    /// Whether the payload failed to parse as JSON (and is not `[DONE]`).
    pub malformed: bool,
}

impl StreamChunk {
    /// Reads an event's data. Never fails: what can't be read is reported in
    /// [`StreamChunk::malformed`]. One pass over the data, without copying
    /// it.
    pub fn parse(data: &str) -> Self {
        read_chunk(data, None::<fn(&str)>)
    }
}

// ---- The bodies, as read -------------------------------------------------

/// Every API's `usage` fields; [`Usage`] is read through it.
#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Self {
        let prompt_tokens = raw.prompt_tokens.unwrap_or_else(|| {
            [
                raw.input_tokens,
                raw.cache_creation_input_tokens,
                raw.cache_read_input_tokens,
            ]
            .into_iter()
            .flatten()
            .fold(0, u64::saturating_add)
        });
        Self {
            prompt_tokens,
            completion_tokens: raw.completion_tokens.or(raw.output_tokens).unwrap_or(0),
            total_tokens: raw.total_tokens.unwrap_or(0),
        }
    }
}

/// An answer body or a stream event of any API, in one struct: the APIs'
/// field names don't collide, so which fields are set tells the API. `S`
/// holds the pieces of the answer's text: [`Text`] to gather them, [`Skim`]
/// when they won't be read.
#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
struct RawAnswer<'a, S> {
    /// Anthropic's and the Responses API's event type; `message` for an
    /// Anthropic answer, `error` for an error.
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    /// OpenAI's object type: `response` for a Responses answer.
    #[serde(borrow)]
    object: Str<'a>,
    usage: Obj<Usage>,
    error: Option<IgnoredAny>,
    /// Chat and text completions.
    #[serde(borrow)]
    choices: First<Obj<RawChoice<'a, S>>>,
    /// An Anthropic answer's.
    #[serde(borrow)]
    stop_reason: Str<'a>,
    /// An Anthropic answer's blocks.
    #[serde(borrow)]
    content: List<Obj<RawBlock<'a, S>>>,
    /// A Responses text delta (a string); an Anthropic `content_block_delta`
    /// (a block) or `message_delta` (with its `stop_reason`).
    #[serde(borrow)]
    delta: Lenient<S, RawBlock<'a, S>>,
    /// Anthropic's `message_start`: the message, with the input usage.
    #[serde(borrow)]
    message: Obj<Box<RawAnswer<'a, S>>>,
    /// A Responses event's response.
    #[serde(borrow)]
    response: Obj<Box<RawAnswer<'a, S>>>,
    /// A response's.
    #[serde(borrow)]
    status: Str<'a>,
    #[serde(borrow)]
    incomplete_details: Obj<RawIncomplete<'a>>,
    #[serde(borrow)]
    output: List<Obj<RawOutputItem<'a, S>>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
struct RawChoice<'a, S> {
    #[serde(borrow)]
    finish_reason: Str<'a>,
    message: Obj<RawChatText<S>>,
    delta: Obj<RawChatText<S>>,
    /// A text completion's.
    text: Lenient<S, IgnoredAny>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
struct RawChatText<S> {
    content: Lenient<S, IgnoredAny>,
}

/// An Anthropic content block or delta, or a Responses content part.
#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
struct RawBlock<'a, S> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    text: Lenient<S, IgnoredAny>,
    #[serde(borrow)]
    stop_reason: Str<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct RawIncomplete<'a> {
    #[serde(borrow)]
    reason: Str<'a>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "S: Deserialize<'de> + Default"))]
struct RawOutputItem<'a, S> {
    #[serde(borrow)]
    content: List<Obj<RawBlock<'a, S>>>,
}

impl<S: Piece> List<Obj<RawBlock<'_, S>>> {
    /// The `text` of the blocks of type `kind`.
    fn texts_of<'s>(&'s self, kind: &'s str) -> impl Iterator<Item = &'s str> {
        self.0
            .iter()
            .filter_map(Lenient::object)
            .filter(move |block| block.kind.is(kind))
            .filter_map(|block| block.text.text())
    }
}

impl<S: Piece> RawAnswer<'_, S> {
    fn usage(&self) -> Option<Usage> {
        self.usage
            .object()
            .or_else(|| self.message.object()?.usage.object())
            .or_else(|| self.response.object()?.usage.object())
            .copied()
    }

    fn finish_reason(&self) -> Option<FinishReason> {
        if let Some(choice) = &self.choices.0 {
            return choice
                .object()?
                .finish_reason
                .text()
                .map(FinishReason::from_str);
        }
        let stop_reason = self
            .stop_reason
            .text()
            .or_else(|| self.delta.object()?.stop_reason.text());
        if let Some(reason) = stop_reason {
            return Some(FinishReason::from_str(reason));
        }
        match self.kind.text() {
            // Earlier events carry the response too, still `in_progress`.
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                self.response.object()?.status_finish()
            }
            _ if self.object.is("response") => self.status_finish(),
            _ => None,
        }
    }

    /// What a response's `status` says of its end.
    fn status_finish(&self) -> Option<FinishReason> {
        match self.status.text()? {
            "completed" => Some(FinishReason::Stop),
            "incomplete" => Some(
                self.incomplete_details
                    .object()
                    .and_then(|d| d.reason.text())
                    .map_or_else(
                        || FinishReason::Other("incomplete".to_owned()),
                        FinishReason::from_str,
                    ),
            ),
            // An error, not a finish.
            "failed" => None,
            other => Some(FinishReason::Other(other.to_owned())),
        }
    }

    fn is_error(&self) -> bool {
        self.error.is_some()
            || matches!(self.kind.text(), Some("error" | "response.failed"))
            || (self.object.is("response") && self.status.is("failed"))
    }

    fn is_done(&self) -> bool {
        matches!(
            self.kind.text(),
            Some("message_stop" | "response.completed" | "response.incomplete" | "response.failed")
        )
    }

    fn chunk(&self) -> StreamChunk {
        StreamChunk {
            usage: self.usage(),
            finish_reason: self.finish_reason(),
            error: self.is_error(),
            done: self.is_done(),
            malformed: false,
        }
    }

    fn completion(&self, content: Option<String>) -> Completion {
        Completion {
            usage: self.usage(),
            finish_reason: self.finish_reason(),
            error: self.is_error(),
            content,
        }
    }

    /// Calls `f` with each piece of the answer's text, in order (all of it
    /// only when `S` is [`Text`]).
    fn texts(&self, mut f: impl FnMut(&str)) {
        if let Some(choice) = self.choices.0.as_ref().and_then(Lenient::object) {
            let text = match choice.message.object().or(choice.delta.object()) {
                Some(chat) => chat.content.text(),
                None => choice.text.text(),
            };
            if let Some(text) = text {
                f(text);
            }
        }
        self.content.texts_of("text").for_each(&mut f);
        match &self.delta {
            Lenient::Text(delta) if self.kind.is("response.output_text.delta") => {
                if let Some(text) = delta.get() {
                    f(text);
                }
            }
            Lenient::Object(delta) if delta.kind.is("text_delta") => {
                if let Some(text) = delta.text.text() {
                    f(text);
                }
            }
            _ => {}
        }
        for item in self.output.0.iter().filter_map(Lenient::object) {
            item.content.texts_of("output_text").for_each(&mut f);
        }
    }
}

/// Reads a stream event's data; with `text`, hands it the event's text
/// pieces.
pub(super) fn read_chunk<F: FnMut(&str)>(data: &str, text: Option<F>) -> StreamChunk {
    let data = data.trim();
    if data == "[DONE]" {
        return StreamChunk {
            done: true,
            ..StreamChunk::default()
        };
    }
    let chunk = match text {
        Some(text) => serde_json::from_str::<RawAnswer<'_, Text<'_>>>(data).map(|raw| {
            raw.texts(text);
            raw.chunk()
        }),
        None => serde_json::from_str::<RawAnswer<'_, Skim<'_>>>(data).map(|raw| raw.chunk()),
    };
    chunk.unwrap_or_else(|_| StreamChunk {
        malformed: true,
        ..StreamChunk::default()
    })
}

/// Reads an answer body, gathering its text up to `content_limit` bytes
/// when one is given.
pub(super) fn read_answer(
    body: &[u8],
    content_limit: Option<usize>,
) -> Result<Completion, LlmError> {
    let Some(limit) = content_limit else {
        let raw: RawAnswer<'_, Skim<'_>> = serde_json::from_slice(body).map_err(LlmError::Json)?;
        return Ok(raw.completion(None));
    };
    let raw: RawAnswer<'_, Text<'_>> = serde_json::from_slice(body).map_err(LlmError::Json)?;
    let mut content = None::<String>;
    raw.texts(|piece| content.get_or_insert_with(String::new).push_str(piece));
    if let Some(text) = &mut content {
        text.truncate(floor_char_boundary(text, limit));
    }
    Ok(raw.completion(content))
}
