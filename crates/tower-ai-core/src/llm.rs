//! What the layers read of LLM API requests and answers: the model, output
//! bound and prompt size a request asks for, and the token `usage`, finish
//! reason, in-band errors and text an answer reports, from a JSON body or
//! from stream events.
//!
//! The rate limiter estimates a request's token cost from [`ChatRequest`] and
//! reconciles it with [`Usage`]; the cache reads [`FinishReason`] to store only
//! complete answers; the circuit breaker reads [`StreamChunk`] to tell a
//! finished stream from one that carried an in-band error; the session layer
//! gathers an answer's text through [`AnswerTap`].
//!
//! The same types read every API the gateway serves. A body's shape says
//! which API it belongs to, so no route has to be named:
//!
//! | API | request | answer | stream |
//! |---|---|---|---|
//! | OpenAI `/v1/chat/completions` | `messages` | `choices[].message`, `finish_reason`, `usage` | `choices[].delta`, `data: [DONE]` |
//! | OpenAI `/v1/completions` | `prompt` | `choices[].text`, `finish_reason`, `usage` | `choices[].text`, `data: [DONE]` |
//! | OpenAI `/v1/embeddings` | `input` | `data`, `usage` | — |
//! | OpenAI `/v1/responses` | `input`, `instructions` | `status`, `output`, `usage` | `response.*` events, `response.completed` last |
//! | Anthropic `/v1/messages` | `messages`, `system` | `content`, `stop_reason`, `usage` | `message_start` … `message_delta`, `message_stop` |
//!
//! Token counts are given in OpenAI's terms whatever the API: `input_tokens`
//! (with Anthropic's cache reads and writes) are [`Usage::prompt_tokens`],
//! `output_tokens` are [`Usage::completion_tokens`].
//!
//! # Example
//! ```
//! use tower_ai_core::llm::{ChatRequest, FinishReason, StreamChunk, Usage};
//!
//! let req = ChatRequest::from_json(br#"{"model":"gpt-4o-mini","max_tokens":64,
//!     "messages":[{"role":"user","content":"Say hello"}],"stream":true}"#).unwrap();
//! assert_eq!(req.model.as_deref(), Some("gpt-4o-mini"));
//! assert!(req.stream);
//! assert_eq!(req.max_output_tokens, Some(64));
//!
//! let chunk = StreamChunk::parse(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#);
//! assert_eq!(chunk.usage, Some(Usage::new(9, 12)));
//! assert!(StreamChunk::parse("[DONE]").done);
//!
//! // The same, from Anthropic's Messages API.
//! let req = ChatRequest::from_json(br#"{"model":"claude-sonnet-4-5","max_tokens":1024,
//!     "system":"Be brief","messages":[{"role":"user","content":"Say hello"}]}"#).unwrap();
//! assert_eq!(req.max_output_tokens, Some(1024));
//! let chunk = StreamChunk::parse(r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":1024}}"#);
//! assert_eq!(chunk.finish_reason, Some(FinishReason::Length));
//! assert!(StreamChunk::parse(r#"{"type":"message_stop"}"#).done);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer, StrDeserializer};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Tokens counted per message for the role and framing, as OpenAI counts them.
const TOKENS_PER_MESSAGE: u64 = 4;
/// A rough, widely used estimate: about four bytes of English text per token.
const BYTES_PER_TOKEN: u64 = 4;

/// An estimate of the tokens in `bytes` bytes of text (about four bytes of
/// English per token): what the layers count when an answer reports no
/// usage.
pub const fn estimated_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

/// The text of a request's last user turn: a chat or Anthropic request's last
/// `user` message (text parts joined with newlines), or a Responses request's
/// `input` (a string, or its last `user` item). This is the turn a
/// conversation history keeps of the request. `None` when the body is not
/// such a request or holds no user text.
///
/// ```
/// use tower_ai_core::llm::last_user_message;
///
/// let body = br#"{"messages":[{"role":"system","content":"Be brief"},
///     {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"there"}]}]}"#;
/// assert_eq!(last_user_message(body).as_deref(), Some("Hi\nthere"));
/// assert_eq!(last_user_message(b"not json"), None);
///
/// let body = br#"{"model":"gpt-4.1","input":[{"role":"user","content":[{"type":"input_text","text":"Hi"}]}]}"#;
/// assert_eq!(last_user_message(body).as_deref(), Some("Hi"));
/// ```
pub fn last_user_message(body: &[u8]) -> Option<String> {
    let raw: RawConversation = serde_json::from_slice(body).ok()?;
    let content = match (raw.messages, raw.input) {
        (Some(messages), _) | (None, Some(RawInput::Items(messages))) => {
            messages
                .into_iter()
                .rev()
                .find(|m| m.role.as_deref() == Some("user"))?
                .content
        }
        (None, Some(RawInput::Text(text))) => RawContent::Text(text),
        _ => return None,
    };
    let text = match content {
        RawContent::Text(s) => s,
        RawContent::Parts(parts) => parts
            .into_iter()
            .filter_map(|p| p.text)
            .collect::<Vec<_>>()
            .join("\n"),
        RawContent::None => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// The fields of an LLM API request that the layers read, from any API in
/// the [module's table](self): chat and text completions, embeddings,
/// responses, Anthropic messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatRequest {
    /// `model`.
    pub model: Option<String>,
    /// The bound on the answer's tokens: `max_completion_tokens`, else
    /// `max_tokens` (chat, completions, Anthropic), else `max_output_tokens`
    /// (responses).
    pub max_output_tokens: Option<u64>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`: whether a streamed chat or text
    /// completion ends with a usage chunk. (Anthropic and Responses streams
    /// always report usage; this stays `false` for them.)
    pub include_usage: bool,
    /// `n`: how many choices are asked for (1 when absent).
    pub n: u32,
    /// How many messages `messages` holds (chat completions, Anthropic
    /// messages); 0 for a request without `messages`, whose prompt is in
    /// [`inputs`](Self::inputs).
    pub messages: usize,
    /// How many prompts `prompt` (completions) or `input` (embeddings,
    /// responses) holds: 1 for a string or a single array of token ids, the
    /// array's length for an array of strings, of token arrays or of
    /// Responses items; 0 when there is neither.
    pub inputs: usize,
    /// Bytes of prompt text: every message's content (a string, or the `text`
    /// of its parts, tool calls' `arguments`, tool results), `system`,
    /// `instructions`, and the text of `prompt` and `input`.
    pub prompt_bytes: usize,
    /// Token ids given as numbers (a `prompt` or `input` of token arrays):
    /// counted one token each, not by bytes.
    pub prompt_token_ids: usize,
}

impl ChatRequest {
    /// Reads the fields from a JSON request body of any API in the
    /// [module's table](self).
    ///
    /// One pass over the body; text is measured where it lies, never copied,
    /// so the only allocation is `model`. A body that is not JSON, or whose
    /// `messages` is not an array of objects, is an error.
    ///
    /// ```
    /// use tower_ai_core::llm::ChatRequest;
    ///
    /// // Embeddings of two token arrays: tokens are counted, not bytes.
    /// let req = ChatRequest::from_json(br#"{"model":"text-embedding-3-small","input":[[1,2,3],[4,5]]}"#).unwrap();
    /// assert_eq!((req.inputs, req.prompt_token_ids, req.messages), (2, 5, 0));
    ///
    /// // A Responses request: instructions and input items.
    /// let req = ChatRequest::from_json(br#"{"model":"gpt-4.1","instructions":"Be brief",
    ///     "input":[{"role":"user","content":[{"type":"input_text","text":"Hi"}]}],"max_output_tokens":50}"#).unwrap();
    /// assert_eq!((req.inputs, req.prompt_bytes, req.max_output_tokens), (1, 10, Some(50)));
    /// ```
    pub fn from_json(body: &[u8]) -> Result<Self, LlmError> {
        let raw: RawRequest = serde_json::from_slice(body).map_err(LlmError::Json)?;
        let messages = raw.messages.unwrap_or_default();
        let mut text = messages.text;
        for part in [raw.system, raw.instructions].into_iter().flatten() {
            text.add(part);
        }
        let mut inputs = 0;
        for input in [raw.prompt, raw.input].into_iter().flatten() {
            inputs += input.items;
            text.add(input.text);
        }
        Ok(Self {
            model: raw.model,
            max_output_tokens: raw
                .max_completion_tokens
                .or(raw.max_tokens)
                .or(raw.max_output_tokens),
            stream: raw.stream.unwrap_or(false),
            include_usage: raw
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            n: raw.n.unwrap_or(1).max(1),
            messages: messages.count,
            inputs,
            prompt_bytes: text.bytes,
            prompt_token_ids: text.token_ids,
        })
    }

    /// Reads `body` once for every layer on the way in: the first to read
    /// it leaves its reading in the request's `extensions` (a
    /// [`SharedRequest`]), and the layers after it take that reading when
    /// their body is the same bytes. A layer that changed the body in
    /// between gets its own reading, which the layers after it share.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::Extensions;
    /// use tower_ai_core::llm::ChatRequest;
    ///
    /// let body = Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#);
    /// let mut extensions = Extensions::new();
    /// let first = ChatRequest::read_shared(&mut extensions, &body).unwrap();
    /// let again = ChatRequest::read_shared(&mut extensions, &body).unwrap();
    /// assert!(std::sync::Arc::ptr_eq(&first, &again));
    /// let other = Bytes::from_static(br#"{"model":"n","messages":[]}"#);
    /// let read = ChatRequest::read_shared(&mut extensions, &other).unwrap();
    /// assert_eq!(read.model.as_deref(), Some("n"));
    /// ```
    pub fn read_shared(
        extensions: &mut http::Extensions,
        body: &bytes::Bytes,
    ) -> Result<Arc<Self>, LlmError> {
        if let Some(shared) = extensions.get::<SharedRequest>()
            && shared.body == *body
        {
            return Ok(Arc::clone(&shared.request));
        }
        let request = Arc::new(Self::from_json(body)?);
        extensions.insert(SharedRequest {
            body: body.clone(),
            request: Arc::clone(&request),
        });
        Ok(request)
    }

    /// An estimate of the prompt's tokens: its text by size, its token ids
    /// one each, and each message's framing.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        (estimated_tokens(self.prompt_bytes) + self.messages as u64 * TOKENS_PER_MESSAGE)
            .saturating_add(self.prompt_token_ids as u64)
    }

    /// An estimate of the whole call's tokens before it is made: the prompt,
    /// plus the requested output limit (or `default_output` when the request
    /// sets none) for each of the `n` choices.
    pub fn estimated_total_tokens(&self, default_output: u64) -> u64 {
        let output = self.max_output_tokens.unwrap_or(default_output);
        self.estimated_prompt_tokens()
            .saturating_add(output.saturating_mul(u64::from(self.n)))
    }
}

/// A request body's [`ChatRequest`], kept in the request's extensions by
/// [`ChatRequest::read_shared`] with the bytes it was read from.
#[derive(Debug, Clone)]
pub struct SharedRequest {
    body: bytes::Bytes,
    request: Arc<ChatRequest>,
}

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

/// What an answer said about itself, gathered as its body passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnswerSummary {
    /// The reported usage (for streams, every report merged with
    /// [`Usage::merge`]).
    pub usage: Option<Usage>,
    /// The (last seen) finish reason.
    pub finish_reason: Option<FinishReason>,
    /// Whether an in-band error was seen (an error body, or an error event).
    pub error: bool,
    /// For streams: whether the event that ends the stream arrived
    /// (`data: [DONE]`, `message_stop`, a response's final event; see
    /// [`StreamChunk::done`]).
    pub done: bool,
    /// For streams: how many events arrived.
    pub events: u64,
    /// The answer's text, when the tap was asked to gather it
    /// ([`AnswerTap::gather_content`]).
    pub content: Option<String>,
}

impl AnswerSummary {
    /// Takes in one more event of a stream: counts it, merges its usage into
    /// what came before, keeps its finish reason, and notes an error or the
    /// end. This is what [`AnswerTap`] does with each event; a layer that
    /// decodes the stream itself calls it with [`StreamChunk::parse`].
    ///
    /// ```
    /// use tower_ai_core::llm::{AnswerSummary, FinishReason, StreamChunk};
    ///
    /// let mut summary = AnswerSummary::default();
    /// for data in [
    ///     r#"{"type":"message_start","message":{"type":"message","content":[],"stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
    ///     r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
    ///     r#"{"type":"message_stop"}"#,
    /// ] {
    ///     summary.absorb(StreamChunk::parse(data));
    /// }
    /// assert_eq!(summary.usage.map(|u| u.total()), Some(40));
    /// assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    /// assert!(summary.done && summary.events == 3);
    /// ```
    pub fn absorb(&mut self, chunk: StreamChunk) {
        self.events += 1;
        if let Some(usage) = chunk.usage {
            match &mut self.usage {
                Some(seen) => seen.merge(usage),
                None => self.usage = Some(usage),
            }
        }
        if chunk.finish_reason.is_some() {
            self.finish_reason = chunk.finish_reason;
        }
        self.error |= chunk.error;
        self.done |= chunk.done;
    }
}

/// Reads an answer as its body passes, without holding it up: the events of
/// a `text/event-stream` body through the SSE decoder, or a JSON body
/// buffered up to a limit and read at its end. Every API in the
/// [module's table](self) is understood.
///
/// ```
/// use http::HeaderMap;
/// use tower_ai_core::llm::AnswerTap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "text/event-stream".parse().unwrap());
/// let mut tap = AnswerTap::for_response(&headers, 1 << 20);
/// tap.observe(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
/// tap.observe(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n");
/// let summary = tap.finish();
/// assert!(summary.done);
/// assert_eq!(summary.usage.map(|u| u.total()), Some(7));
///
/// let mut tap = AnswerTap::for_response(&headers, 1 << 20).gather_content(1 << 16);
/// tap.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n");
/// tap.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n");
/// assert_eq!(tap.finish().content.as_deref(), Some("Hello"));
///
/// // A Responses stream: named events, no `[DONE]`.
/// let mut tap = AnswerTap::for_response(&headers, 1 << 20).gather_content(1 << 16);
/// tap.observe(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n");
/// tap.observe(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\
///     \"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"total_tokens\":6}}}\n\n");
/// let summary = tap.finish();
/// assert!(summary.done);
/// assert_eq!(summary.usage.map(|u| u.total()), Some(6));
/// assert_eq!(summary.content.as_deref(), Some("Hi"));
/// ```
#[derive(Debug)]
pub struct AnswerTap {
    kind: TapKind,
    summary: AnswerSummary,
    content_limit: Option<usize>,
    share: Option<Share>,
}

/// A tap's part in a [`SharedAnswer`].
#[derive(Debug)]
enum Share {
    Fill(SharedAnswer),
    Read(SharedAnswer),
}

/// A JSON answer read once for every tap on its way out. The first tap
/// made on a response with [`AnswerTap::share`] puts one in the response's
/// extensions and fills it when the body ends; the taps made after it (the
/// layers above) take its summary instead of parsing the body again, when
/// the bytes they saw are the same.
///
/// ```
/// use http::{Extensions, HeaderMap};
/// use tower_ai_core::llm::{AnswerTap, SharedAnswer};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "application/json".parse().unwrap());
/// let body = br#"{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop"}],
///     "usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
/// let mut extensions = Extensions::new();
/// let mut inner = AnswerTap::for_response(&headers, 1 << 20).share(&mut extensions);
/// let mut outer = AnswerTap::for_response(&headers, 1 << 20).share(&mut extensions);
/// inner.observe(body);
/// outer.observe(body);
/// assert_eq!(inner.finish().usage.map(|u| u.total()), Some(4));
/// let shared = extensions.get::<SharedAnswer>().unwrap();
/// assert_eq!(shared.summary_of(body).and_then(|s| s.usage).map(|u| u.total()), Some(4));
/// assert_eq!(outer.finish().usage.map(|u| u.total()), Some(4)); // read from the share
/// ```
#[derive(Debug, Clone, Default)]
pub struct SharedAnswer(Arc<OnceLock<(bytes::Bytes, AnswerSummary)>>);

impl SharedAnswer {
    /// The summary, without its text, read from exactly `body`; `None`
    /// before the filling tap has finished, or when it saw other bytes.
    pub fn summary_of(&self, body: &[u8]) -> Option<&AnswerSummary> {
        self.0
            .get()
            .filter(|(read, _)| read[..] == *body)
            .map(|(_, summary)| summary)
    }
}

#[derive(Debug)]
enum TapKind {
    Sse(Box<crate::sse::Decoder>),
    Json {
        buf: Vec<u8>,
        limit: usize,
        overflow: bool,
    },
    Other,
}

impl AnswerTap {
    /// A tap for a response with these headers; JSON bodies are buffered up
    /// to `json_limit` bytes (a larger one is not read).
    pub fn for_response(headers: &http::HeaderMap, json_limit: usize) -> Self {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = if ct.starts_with("text/event-stream") {
            TapKind::Sse(Box::default())
        } else if ct.starts_with("application/json") || ct.contains("+json") {
            TapKind::Json {
                buf: Vec::new(),
                limit: json_limit,
                overflow: false,
            }
        } else {
            TapKind::Other
        };
        Self {
            kind,
            summary: AnswerSummary::default(),
            content_limit: None,
            share: None,
        }
    }

    /// Shares this tap's reading of a JSON answer with the other taps on
    /// the same response, through its `extensions`: the first tap made
    /// fills a [`SharedAnswer`], the ones made after it read it. A tap that
    /// gathers the text reads its own.
    #[must_use]
    pub fn share(mut self, extensions: &mut http::Extensions) -> Self {
        if !matches!(self.kind, TapKind::Json { .. }) {
            return self;
        }
        self.share = Some(match extensions.get::<SharedAnswer>() {
            Some(shared) => Share::Read(shared.clone()),
            None => {
                let shared = SharedAnswer::default();
                extensions.insert(shared.clone());
                Share::Fill(shared)
            }
        });
        self
    }

    /// Also gathers the answer's text, up to `limit` bytes: a JSON answer's
    /// [`Completion::content`]; a stream's pieces: the first choice's
    /// `delta.content` (chat) or `text` (completions), a response's
    /// `response.output_text.delta` deltas, Anthropic's `text_delta`s.
    #[must_use]
    pub fn gather_content(mut self, limit: usize) -> Self {
        self.content_limit = Some(limit);
        self
    }

    /// Whether the body is a stream of events.
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, TapKind::Sse(_))
    }

    /// Sees one chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        match &mut self.kind {
            TapKind::Sse(decoder) => {
                decoder.push_slice(chunk);
                while let Some(event) = decoder.next_event() {
                    if let Ok(event) = event {
                        Self::absorb_event(&mut self.summary, self.content_limit, &event);
                    }
                }
            }
            TapKind::Json {
                buf,
                limit,
                overflow,
            } => {
                if buf.len() + chunk.len() > *limit {
                    *overflow = true;
                    buf.clear();
                } else if !*overflow {
                    buf.extend_from_slice(chunk);
                }
            }
            TapKind::Other => {}
        }
    }

    fn absorb_event(
        summary: &mut AnswerSummary,
        content_limit: Option<usize>,
        event: &crate::sse::Event,
    ) {
        let chunk = match content_limit {
            Some(limit) => read_chunk(
                event.data(),
                Some(|piece: &str| {
                    let content = summary.content.get_or_insert_with(String::new);
                    if content.len() + piece.len() <= limit {
                        content.push_str(piece);
                    }
                }),
            ),
            None => StreamChunk::parse(event.data()),
        };
        summary.absorb(chunk);
        // An event named `error` is one whatever its data (Anthropic and
        // Responses name theirs so).
        summary.error |= event.event_type() == "error";
    }

    /// The summary so far, without ending the body.
    pub fn summary(&self) -> &AnswerSummary {
        &self.summary
    }

    /// Ends the body and returns what it said.
    pub fn finish(&mut self) -> &AnswerSummary {
        match &mut self.kind {
            TapKind::Sse(decoder) => {
                decoder.finish();
                while let Some(event) = decoder.next_event() {
                    if let Ok(event) = event {
                        Self::absorb_event(&mut self.summary, self.content_limit, &event);
                    }
                }
            }
            TapKind::Json { buf, overflow, .. } => {
                if !*overflow {
                    let shared = match &self.share {
                        Some(Share::Read(shared)) if self.content_limit.is_none() => {
                            shared.summary_of(buf)
                        }
                        _ => None,
                    };
                    if let Some(shared) = shared {
                        self.summary.clone_from(shared);
                    } else if let Ok(c) = read_answer(buf, self.content_limit) {
                        self.summary.usage = c.usage;
                        self.summary.finish_reason = c.finish_reason;
                        self.summary.error = c.error;
                        if self.content_limit.is_some() {
                            self.summary.content = c.content;
                        }
                    }
                    if let Some(Share::Fill(shared)) = &self.share {
                        let summary = AnswerSummary {
                            content: None,
                            ..self.summary.clone()
                        };
                        let _ = shared.0.set((std::mem::take(buf).into(), summary));
                    }
                }
                buf.clear();
                buf.shrink_to_fit();
            }
            TapKind::Other => {}
        }
        &self.summary
    }
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// A body that could not be read as an LLM API request or answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum LlmError {
    /// Not JSON, or JSON of the wrong shape.
    Json(serde_json::Error),
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "the body is not a valid chat completion request: {e}"),
        }
    }
}

impl std::error::Error for LlmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Json(e) => Some(e),
        }
    }
}

// ---- Requests -------------------------------------------------------------

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<RawStreamOptions>,
    n: Option<u32>,
    messages: Option<Messages>,
    system: Option<TextSize>,
    instructions: Option<TextSize>,
    prompt: Option<InputSize>,
    input: Option<InputSize>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    include_usage: Option<bool>,
}

/// Object keys whose values are (or hold) prompt text: a message's
/// `content` and its parts' `text`, tool calls' `arguments` (under
/// `tool_calls[].function`), a Responses tool result's `output`.
const TEXT_KEYS: [&str; 6] = [
    "content",
    "text",
    "arguments",
    "tool_calls",
    "function",
    "output",
];

/// The bytes of text and the token ids in the text-bearing parts of a JSON
/// value ([`TEXT_KEYS`] in objects), measured as the value is read.
#[derive(Debug, Clone, Copy, Default)]
struct TextSize {
    bytes: usize,
    token_ids: usize,
    /// The value was a single integer: a token id.
    token: bool,
}

impl TextSize {
    fn add(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.token_ids += other.token_ids;
    }

    const fn text(bytes: usize) -> Self {
        Self {
            bytes,
            token_ids: 0,
            token: false,
        }
    }

    const TOKEN: Self = Self {
        bytes: 0,
        token_ids: 1,
        token: true,
    };
}

impl<'de> Deserialize<'de> for TextSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextSizeVisitor)
    }
}

/// The `Visitor` methods of the scalars that carry nothing here (booleans,
/// floats, `null`): each gives `$value`.
macro_rules! skip_other_scalars {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

struct TextSizeVisitor;

impl<'de> Visitor<'de> for TextSizeVisitor {
    type Value = TextSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TextSize, E> {
        Ok(TextSize::text(v.len()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextSize, E> {
        Ok(TextSize::TOKEN)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextSize, E> {
        Ok(TextSize::TOKEN)
    }

    skip_other_scalars!(TextSize::default());

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextSize, A::Error> {
        let mut size = TextSize::default();
        while let Some(item) = seq.next_element::<TextSize>()? {
            size.add(item);
        }
        Ok(size)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TextSize, A::Error> {
        text_in_object(map)
    }
}

/// The text under an object's [`TEXT_KEYS`]; the other values are skipped
/// unread.
fn text_in_object<'de, A: MapAccess<'de>>(mut map: A) -> Result<TextSize, A::Error> {
    let mut size = TextSize::default();
    while let Some(TextKey(counted)) = map.next_key()? {
        if counted {
            size.add(map.next_value()?);
        } else {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(size)
}

/// An object key: whether it is one of [`TEXT_KEYS`].
struct TextKey(bool);

impl<'de> Deserialize<'de> for TextKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = TextKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextKey, E> {
                Ok(TextKey(TEXT_KEYS.contains(&v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `messages`: an array of objects, counted and measured.
#[derive(Default)]
struct Messages {
    count: usize,
    text: TextSize,
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessagesVisitor;
        impl<'de> Visitor<'de> for MessagesVisitor {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut messages = Messages::default();
                while let Some(Message(text)) = seq.next_element()? {
                    messages.count += 1;
                    messages.text.add(text);
                }
                Ok(messages)
            }
        }
        deserializer.deserialize_seq(MessagesVisitor)
    }
}

/// One message: an object (anything else is an error).
struct Message(TextSize);

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Message, A::Error> {
                text_in_object(map).map(Message)
            }
        }
        deserializer.deserialize_map(MessageVisitor)
    }
}

/// `prompt` or `input`: a string, an array of strings, of token ids, of
/// token arrays, or of Responses items; counted and measured.
#[derive(Default)]
struct InputSize {
    items: usize,
    text: TextSize,
}

impl<'de> Deserialize<'de> for InputSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InputVisitor;
        impl<'de> Visitor<'de> for InputVisitor {
            type Value = InputSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a prompt")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InputSize, E> {
                Ok(InputSize {
                    items: 1,
                    text: TextSize::text(v.len()),
                })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<InputSize, E> {
                Ok(InputSize {
                    items: 1,
                    text: TextSize::TOKEN,
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InputSize, E> {
                self.visit_u64(v.unsigned_abs())
            }
            skip_other_scalars!(InputSize::default());
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputSize, A::Error> {
                let mut input = InputSize::default();
                let mut all_token_ids = true;
                while let Some(item) = seq.next_element::<TextSize>()? {
                    input.items += 1;
                    all_token_ids &= item.token;
                    input.text.add(item);
                }
                // `[1, 2, 3]` is one prompt given as token ids.
                if all_token_ids && input.items > 0 {
                    input.items = 1;
                }
                Ok(input)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InputSize, A::Error> {
                Ok(InputSize {
                    items: 1,
                    text: text_in_object(map)?,
                })
            }
        }
        deserializer.deserialize_any(InputVisitor)
    }
}

/// What [`last_user_message`] reads: owned text, off the hot path.
#[derive(Deserialize)]
struct RawConversation {
    messages: Option<Vec<RawMessage>>,
    input: Option<RawInput>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawInput {
    Text(String),
    Items(Vec<RawMessage>),
    /// Strings or token ids (embeddings, completions): no conversation.
    #[allow(dead_code)]
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: RawContent,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum RawContent {
    Text(String),
    Parts(Vec<RawPart>),
    #[default]
    None,
}

#[derive(Deserialize)]
struct RawPart {
    text: Option<String>,
}

// ---- Answers --------------------------------------------------------------

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

/// A JSON value read without failing on its shape: a string read as `S`, an
/// object read as `T`, or anything else, skipped. The APIs give one name
/// different shapes (`delta` is a string in a Responses event and an object
/// in an Anthropic one), and a field of an unexpected shape must not hide
/// the rest of the answer.
#[derive(Default)]
enum Lenient<S, T> {
    Text(S),
    Object(T),
    #[default]
    Other,
}

/// A string field (an event type, a status, a finish reason), read
/// leniently.
type Str<'a> = Lenient<Text<'a>, IgnoredAny>;

/// An object field, read leniently.
type Obj<T> = Lenient<IgnoredAny, T>;

impl<S, T> Lenient<S, T> {
    const fn object(&self) -> Option<&T> {
        match self {
            Self::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl<S: Piece, T> Lenient<S, T> {
    fn text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => text.get(),
            _ => None,
        }
    }

    fn is(&self, text: &str) -> bool {
        self.text() == Some(text)
    }
}

impl<'de, S: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de> for Lenient<S, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<S, T>(PhantomData<fn() -> Lenient<S, T>>);
        impl<'de, S: Deserialize<'de>, T: Deserialize<'de>> Visitor<'de> for LenientVisitor<S, T> {
            type Value = Lenient<S, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                S::deserialize(BorrowedStrDeserializer::new(v)).map(Lenient::Text)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                S::deserialize(StrDeserializer::new(v)).map(Lenient::Text)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient::Other)
            }
            skip_other_scalars!(Lenient::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Lenient::Object)
            }
        }
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

/// A string as [`Lenient`] holds it.
trait Piece {
    fn get(&self) -> Option<&str>;
}

/// A string borrowed from the body, or copied out of it when it holds
/// escapes.
#[derive(Default)]
struct Text<'a>(Cow<'a, str>);

/// A string borrowed from the body; one that holds escapes is skipped
/// (`None`) rather than copied. What the answer's text is read as when no
/// one will read it, so a stream event costs no allocation for it.
#[derive(Default)]
struct Skim<'a>(Option<&'a str>);

impl Piece for Text<'_> {
    fn get(&self) -> Option<&str> {
        Some(&self.0)
    }
}

impl Piece for Skim<'_> {
    fn get(&self) -> Option<&str> {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Skim<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkimVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for SkimVisitor<'a> {
            type Value = Skim<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Skim<'a>, E> {
                Ok(Skim(Some(v)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skim<'a>, E> {
                Ok(Skim(None))
            }
        }
        deserializer.deserialize_str(SkimVisitor(PhantomData))
    }
}

/// An array's elements, or nothing when the value is not an array.
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// An array's first element (the rest skipped unread), or nothing when the
/// value is not an array: OpenAI's `choices`, without a `Vec` per chunk.
struct First<T>(Option<T>);

impl<T> Default for First<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// Deserializes an array wrapper through `$visit_seq`, skipping any other
/// value.
macro_rules! array_wrapper {
    ($name:ident, $expecting:literal, |$seq:ident| $visit_seq:block) => {
        impl<'de, T: Deserialize<'de>> Deserialize<'de> for $name<T> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ArrayVisitor<T>(PhantomData<fn() -> T>);
                impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrayVisitor<T> {
                    type Value = $name<T>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                        Ok($name::default())
                    }
                    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                        Ok($name::default())
                    }
                    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                        Ok($name::default())
                    }
                    skip_other_scalars!($name::default());
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Self::Value, A::Error> {
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok($name::default())
                    }
                    fn visit_seq<A: SeqAccess<'de>>(
                        self,
                        mut $seq: A,
                    ) -> Result<Self::Value, A::Error> {
                        $visit_seq
                    }
                }
                deserializer.deserialize_any(ArrayVisitor(PhantomData))
            }
        }
    };
}

array_wrapper!(List, "an array", |seq| {
    let mut items = Vec::new();
    while let Some(item) = seq.next_element()? {
        items.push(item);
    }
    Ok(List(items))
});

array_wrapper!(First, "an array", |seq| {
    let first = seq.next_element()?;
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(First(first))
});

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
fn read_chunk<F: FnMut(&str)>(data: &str, text: Option<F>) -> StreamChunk {
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
fn read_answer(body: &[u8], content_limit: Option<usize>) -> Result<Completion, LlmError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_headers() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        headers
    }

    fn json_headers() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers
    }

    /// Runs `body` through a tap gathering content, in pieces of `step`
    /// bytes (so events are split at every place).
    fn tap(headers: &http::HeaderMap, body: &str, step: usize) -> AnswerSummary {
        let mut tap = AnswerTap::for_response(headers, 1 << 20).gather_content(1 << 16);
        for piece in body.as_bytes().chunks(step) {
            tap.observe(piece);
        }
        tap.finish().clone()
    }

    /// Like [`tap`], for every split size from 1 to 64 bytes and the whole
    /// body; asserts they all agree and returns the summary.
    fn tap_all_splits(headers: &http::HeaderMap, body: &str) -> AnswerSummary {
        let whole = tap(headers, body, body.len().max(1));
        for step in 1..64 {
            assert_eq!(tap(headers, body, step), whole, "split every {step} bytes");
        }
        whole
    }

    #[test]
    fn reads_request_fields() {
        let req = ChatRequest::from_json(
            br#"{"model":"m","max_tokens":10,"max_completion_tokens":20,"n":2,
                "stream":true,"stream_options":{"include_usage":true},
                "messages":[{"role":"system","content":"abcd"},
                            {"role":"user","content":[{"type":"text","text":"efgh"},{"type":"image_url"}]},
                            {"role":"assistant","content":null}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(req.model.as_deref(), Some("m"));
        assert_eq!(req.max_output_tokens, Some(20));
        assert!(req.stream && req.include_usage);
        assert_eq!(req.n, 2);
        assert_eq!(req.messages, 3);
        assert_eq!(req.inputs, 0);
        assert_eq!(req.prompt_bytes, 8);
        assert_eq!(req.estimated_prompt_tokens(), 2 + 3 * 4);
        assert_eq!(req.estimated_total_tokens(100), 14 + 40);
    }

    #[test]
    fn rejects_what_is_not_json() {
        assert!(ChatRequest::from_json(b"not json").is_err());
        assert!(ChatRequest::from_json(br#"{"messages": 5}"#).is_err());
        assert!(ChatRequest::from_json(br#"{"messages": ["hi"]}"#).is_err());
        assert!(ChatRequest::from_json(br#"{"messages": null}"#).is_ok());
        assert!(ChatRequest::from_json(br#"{}"#).is_ok());
    }

    #[test]
    fn chat_request_counts_tool_calls_and_escaped_text() {
        let req = ChatRequest::from_json(
            br#"{"model":"gpt-4o","messages":[
                {"role":"user","content":"a\"b\\c\u00e9"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                    "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"18C"}],
                "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(req.messages, 3);
        // `a"b\cé` is 7 bytes; the arguments 16; the result 3. Tool
        // definitions and names are not prompt text here.
        assert_eq!(req.prompt_bytes, 7 + 16 + 3);
        assert_eq!(req.max_output_tokens, None);
    }

    #[test]
    fn completions_request() {
        let req = ChatRequest::from_json(
            br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"temperature":0}"#,
        )
        .unwrap_or_default();
        assert_eq!((req.messages, req.inputs, req.prompt_bytes), (0, 1, 18));
        assert_eq!(req.max_output_tokens, Some(7));
        assert_eq!(req.estimated_prompt_tokens(), 5);

        let req = ChatRequest::from_json(br#"{"model":"m","prompt":["abcd","efgh","ij"],"n":3}"#)
            .unwrap_or_default();
        assert_eq!((req.inputs, req.prompt_bytes, req.n), (3, 10, 3));

        let req = ChatRequest::from_json(br#"{"model":"m","prompt":[1212,318,257,1332]}"#)
            .unwrap_or_default();
        assert_eq!(
            (req.inputs, req.prompt_bytes, req.prompt_token_ids),
            (1, 0, 4)
        );
        assert_eq!(req.estimated_prompt_tokens(), 4);
    }

    #[test]
    fn embeddings_request() {
        let req = ChatRequest::from_json(
            br#"{"input":"The food was delicious and the waiter...","model":"text-embedding-ada-002","encoding_format":"float"}"#,
        )
        .unwrap_or_default();
        assert_eq!(req.model.as_deref(), Some("text-embedding-ada-002"));
        assert_eq!((req.messages, req.inputs, req.prompt_bytes), (0, 1, 40));
        assert_eq!(req.max_output_tokens, None);
        assert!(!req.stream);

        let req = ChatRequest::from_json(
            br#"{"model":"text-embedding-3-small","input":["first text","second"],"dimensions":256}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            (req.inputs, req.prompt_bytes, req.prompt_token_ids),
            (2, 16, 0)
        );

        let req = ChatRequest::from_json(
            br#"{"model":"text-embedding-3-small","input":[[1,2,3],[4,5],[6]]}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            (req.inputs, req.prompt_bytes, req.prompt_token_ids),
            (3, 0, 6)
        );
        assert_eq!(req.estimated_prompt_tokens(), 6);

        let req = ChatRequest::from_json(br#"{"model":"m","input":[]}"#).unwrap_or_default();
        assert_eq!((req.inputs, req.prompt_token_ids), (0, 0));
    }

    #[test]
    fn responses_request() {
        let req = ChatRequest::from_json(
            br#"{"model":"gpt-4.1","input":"Tell me a three sentence bedtime story about a unicorn."}"#,
        )
        .unwrap_or_default();
        assert_eq!((req.messages, req.inputs, req.prompt_bytes), (0, 1, 55));

        let req = ChatRequest::from_json(
            br#"{"model":"gpt-4.1","instructions":"You are a helpful assistant.",
                "input":[
                  {"role":"user","content":[{"type":"input_text","text":"what is in this image?"},
                    {"type":"input_image","image_url":"https://example.com/a-very-long-image-url.jpg"}]},
                  {"type":"message","role":"assistant","content":[{"type":"output_text","text":"A cat."}]},
                  {"type":"function_call","call_id":"call_1","name":"lookup","arguments":"{\"q\":1}"},
                  {"type":"function_call_output","call_id":"call_1","output":"found"},
                  {"role":"user","content":"And now?"}],
                "max_output_tokens":100,"stream":true}"#,
        )
        .unwrap_or_default();
        assert_eq!(req.messages, 0);
        assert_eq!(req.inputs, 5);
        assert_eq!(req.prompt_bytes, 28 + 22 + 6 + 7 + 5 + 8);
        assert_eq!(req.max_output_tokens, Some(100));
        assert!(req.stream);
        assert_eq!(req.n, 1);
    }

    #[test]
    fn anthropic_request() {
        let req = ChatRequest::from_json(
            br#"{"model":"claude-sonnet-4-5","max_tokens":1024,
                "system":[{"type":"text","text":"You are an AI assistant.","cache_control":{"type":"ephemeral"}}],
                "messages":[
                  {"role":"user","content":"Hello, world"},
                  {"role":"assistant","content":[{"type":"text","text":"Hi!"},
                    {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"location":"Paris"}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"18C"},
                    {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}],
                "stream":true}"#,
        )
        .unwrap_or_default();
        assert_eq!(req.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(req.max_output_tokens, Some(1024));
        assert_eq!((req.messages, req.inputs), (3, 0));
        assert_eq!(req.prompt_bytes, 24 + 12 + 3 + 3);
        assert!(req.stream && !req.include_usage);

        let req = ChatRequest::from_json(
            br#"{"model":"claude-sonnet-4-5","max_tokens":8,"system":"Be brief",
                "messages":[{"role":"user","content":"Hi"}]}"#,
        )
        .unwrap_or_default();
        assert_eq!(req.prompt_bytes, 8 + 2);
        assert_eq!(req.estimated_prompt_tokens(), 3 + 4);
    }

    #[test]
    fn last_user_message_reads_every_conversation_shape() {
        assert_eq!(
            last_user_message(br#"{"model":"m","input":"Tell me a story"}"#).as_deref(),
            Some("Tell me a story")
        );
        assert_eq!(
            last_user_message(
                br#"{"input":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},
                    {"type":"function_call_output","call_id":"c","output":"y"},
                    {"role":"user","content":[{"type":"input_text","text":"second"}]}]}"#
            )
            .as_deref(),
            Some("second")
        );
        assert_eq!(last_user_message(br#"{"input":[[1,2],[3]]}"#), None);
        assert_eq!(last_user_message(br#"{"input":["a","b"]}"#), None);
        assert_eq!(
            last_user_message(
                br#"{"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#
            )
            .as_deref(),
            Some("Hi")
        );
    }

    #[test]
    fn reads_completions_and_chunks() {
        let c = Completion::from_json(
            br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"length"}],
                "usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
        )
        .unwrap_or_default();
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
        assert_eq!(c.usage.map(|u| u.total()), Some(8));
        assert!(!c.error);
        assert_eq!(c.content.as_deref(), Some("hi"));

        let chunk = StreamChunk::parse(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#);
        assert_eq!(chunk.finish_reason, Some(FinishReason::Stop));
        assert!(chunk.finish_reason.is_some_and(|r| r.is_complete()));
        let err = StreamChunk::parse(r#"{"error":{"message":"overloaded","type":"server_error"}}"#);
        assert!(err.error);
        assert!(StreamChunk::parse("{oops").malformed);
        assert!(StreamChunk::parse(" [DONE] ").done);
    }

    #[test]
    fn chat_fields_of_an_unexpected_shape_hide_nothing() {
        // Some providers send content as parts, or an `error: null`.
        let chunk = StreamChunk::parse(
            r#"{"error":null,"choices":[{"index":0,"delta":{"content":[{"type":"thinking","thinking":"..."}]},
                "finish_reason":"stop"},{"index":1}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        );
        assert!(!chunk.error && !chunk.malformed);
        assert_eq!(chunk.finish_reason, Some(FinishReason::Stop));
        assert_eq!(chunk.usage, Some(Usage::new(1, 2)));
        let chunk = StreamChunk::parse(
            r#"{"choices":[{"delta":{"role":"assistant","content":"error"},"finish_reason":null}]}"#,
        );
        assert_eq!(chunk, StreamChunk::default());
    }

    #[test]
    fn chat_stream_content_and_usage() {
        let body = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
            data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Line\\none \\\"q\\\" \\u00e9\"},\"finish_reason\":null}],\"usage\":null}\n\n\
            data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
            data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n\
            data: [DONE]\n\n";
        let summary = tap_all_splits(&sse_headers(), body);
        assert_eq!(summary.content.as_deref(), Some("Line\none \"q\" é"));
        assert_eq!(summary.usage, Some(Usage::new(9, 4)));
        assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
        assert!(summary.done && !summary.error);
        assert_eq!(summary.events, 5);
    }

    #[test]
    fn text_completions_json_and_stream() {
        let body = br#"{"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7","object":"text_completion","created":1589478378,
            "model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb",
            "choices":[{"text":"\n\nThis is indeed a test","index":0,"logprobs":null,"finish_reason":"length"}],
            "usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
        let c = Completion::from_json(body).unwrap_or_default();
        assert_eq!(c.usage, Some(Usage::new(5, 7)));
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
        assert_eq!(c.content.as_deref(), Some("\n\nThis is indeed a test"));
        assert!(!c.error);

        let stream = "data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[{\"text\":\"This\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"system_fingerprint\":\"fp_44709d6fcb\"}\n\n\
            data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[{\"text\":\" is a test\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"system_fingerprint\":\"fp_44709d6fcb\"}\n\n\
            data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}],\"model\":\"gpt-3.5-turbo-instruct\",\"system_fingerprint\":\"fp_44709d6fcb\"}\n\n\
            data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":4,\"total_tokens\":8}}\n\n\
            data: [DONE]\n\n";
        let summary = tap_all_splits(&sse_headers(), stream);
        assert_eq!(summary.content.as_deref(), Some("This is a test"));
        assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
        assert_eq!(summary.usage.map(|u| u.total()), Some(8));
        assert!(summary.done && !summary.error);
    }

    #[test]
    fn embeddings_answer() {
        let body = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.0023064255,-0.009327292,-0.0028842222],"index":0},
            {"object":"embedding","embedding":[0.1,2e-3,-1],"index":1}],
            "model":"text-embedding-ada-002","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        let c = Completion::from_json(body.as_bytes()).unwrap_or_default();
        assert_eq!(
            c.usage
                .map(|u| (u.prompt_tokens, u.completion_tokens, u.total())),
            Some((8, 0, 8))
        );
        assert_eq!(c.finish_reason, None);
        assert!(!c.error);
        assert_eq!(c.content, None);

        let summary = tap(&json_headers(), body, 7);
        assert_eq!(summary.usage.map(|u| u.total()), Some(8));
        assert!(!summary.error && summary.finish_reason.is_none() && summary.content.is_none());
    }

    const RESPONSE_JSON: &str = r#"{
      "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
      "object": "response",
      "created_at": 1741476542,
      "status": "completed",
      "error": null,
      "incomplete_details": null,
      "instructions": null,
      "max_output_tokens": null,
      "model": "gpt-4.1-2025-04-14",
      "output": [
        {
          "type": "reasoning",
          "id": "rs_1",
          "summary": [{"type": "summary_text", "text": "Thinking about unicorns."}]
        },
        {
          "type": "message",
          "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
          "status": "completed",
          "role": "assistant",
          "content": [
            {
              "type": "output_text",
              "text": "In a peaceful grove beneath a silver moon, a unicorn named Lumina discovered a hidden pool.",
              "annotations": []
            }
          ]
        }
      ],
      "parallel_tool_calls": true,
      "previous_response_id": null,
      "reasoning": {"effort": null, "summary": null},
      "store": true,
      "temperature": 1.0,
      "text": {"format": {"type": "text"}},
      "tool_choice": "auto",
      "tools": [],
      "top_p": 1.0,
      "truncation": "disabled",
      "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123
      },
      "user": null,
      "metadata": {}
    }"#;

    #[test]
    fn responses_json() {
        let c = Completion::from_json(RESPONSE_JSON.as_bytes()).unwrap_or_default();
        assert_eq!(c.usage, Some(Usage::new(36, 87)));
        assert_eq!(c.finish_reason, Some(FinishReason::Stop));
        assert!(!c.error, "`\"error\": null` is no error");
        assert_eq!(
            c.content.as_deref(),
            Some(
                "In a peaceful grove beneath a silver moon, a unicorn named Lumina discovered a hidden pool."
            )
        );
        let summary = tap(&json_headers(), RESPONSE_JSON, 13);
        assert_eq!(summary.usage.map(|u| u.total()), Some(123));
        assert_eq!(summary.content, c.content);

        let incomplete = RESPONSE_JSON
            .replace(r#""status": "completed","#, r#""status": "incomplete","#)
            .replace(
                r#""incomplete_details": null"#,
                r#""incomplete_details": {"reason": "max_output_tokens"}"#,
            );
        let c = Completion::from_json(incomplete.as_bytes()).unwrap_or_default();
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
        assert!(!c.error);
        let filtered = incomplete.replace(
            r#""reason": "max_output_tokens""#,
            r#""reason": "content_filter""#,
        );
        let c = Completion::from_json(filtered.as_bytes()).unwrap_or_default();
        assert_eq!(c.finish_reason, Some(FinishReason::ContentFilter));

        let failed = RESPONSE_JSON
            .replace(r#""status": "completed","#, r#""status": "failed","#)
            .replace(
                r#""error": null"#,
                r#""error": {"code": "server_error", "message": "The model failed to generate a response."}"#,
            );
        let c = Completion::from_json(failed.as_bytes()).unwrap_or_default();
        assert!(c.error);
        assert_eq!(c.finish_reason, None);

        let queued = RESPONSE_JSON.replace(r#""status": "completed","#, r#""status": "queued","#);
        let c = Completion::from_json(queued.as_bytes()).unwrap_or_default();
        assert_eq!(
            c.finish_reason,
            Some(FinishReason::Other("queued".to_owned()))
        );
        assert!(!c.finish_reason.is_some_and(|r| r.is_complete()));
    }

    /// A Responses stream as the API documents it (a reasoning model's,
    /// trimmed of repeated fields).
    fn responses_stream(end: &str) -> String {
        let response = |status: &str, output: &str, usage: &str| {
            format!(
                r#"{{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"{status}","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":{output},"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}"#
            )
        };
        let mut body = String::new();
        let mut event = |name: &str, data: &str| {
            body.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        };
        event(
            "response.created",
            &format!(
                r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
                response("in_progress", "[]", "null")
            ),
        );
        event(
            "response.in_progress",
            &format!(
                r#"{{"type":"response.in_progress","sequence_number":1,"response":{}}}"#,
                response("in_progress", "[]", "null")
            ),
        );
        event(
            "response.output_item.added",
            r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
        );
        event(
            "response.content_part.added",
            r#"{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#,
        );
        for (i, delta) in [
            "Hi",
            " there",
            "! How can I \\\"help\\\"",
            " with \\u00e9rror\\n?",
        ]
        .iter()
        .enumerate()
        {
            event(
                "response.output_text.delta",
                &format!(
                    r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"{delta}","logprobs":[]}}"#,
                    4 + i
                ),
            );
        }
        event(
            "response.output_text.done",
            r#"{"type":"response.output_text.done","sequence_number":8,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"text":"Hi there! How can I \"help\" with \u00e9rror\n?"}"#,
        );
        event(
            "response.content_part.done",
            r#"{"type":"response.content_part.done","sequence_number":9,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hi there! How can I \"help\" with \u00e9rror\n?","annotations":[]}}"#,
        );
        event(
            "response.output_item.done",
            r#"{"type":"response.output_item.done","sequence_number":10,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I \"help\" with \u00e9rror\n?","annotations":[]}]}}"#,
        );
        let usage = r#"{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}"#;
        let output = r#"[{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I \"help\" with \u00e9rror\n?","annotations":[]}]}]"#;
        match end {
            "completed" => event(
                "response.completed",
                &format!(
                    r#"{{"type":"response.completed","sequence_number":11,"response":{}}}"#,
                    response("completed", output, usage)
                ),
            ),
            "incomplete" => event(
                "response.incomplete",
                &format!(
                    r#"{{"type":"response.incomplete","sequence_number":11,"response":{}}}"#,
                    response("incomplete", output, usage)
                        .replace(r#""incomplete_details":null"#, r#""incomplete_details":{"reason":"max_output_tokens"}"#)
                ),
            ),
            "failed" => event(
                "response.failed",
                &format!(
                    r#"{{"type":"response.failed","sequence_number":11,"response":{}}}"#,
                    response("failed", "[]", "null").replace(
                        r#""error":null"#,
                        r#""error":{"code":"server_error","message":"The model failed to generate a response."}"#
                    )
                ),
            ),
            "error" => event(
                "error",
                r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":11}"#,
            ),
            _ => {}
        }
        body
    }

    #[test]
    fn responses_stream_completed() {
        let summary = tap_all_splits(&sse_headers(), &responses_stream("completed"));
        assert_eq!(summary.usage, Some(Usage::new(37, 11)));
        assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
        assert!(
            summary.done && !summary.error,
            "`\"error\":null` in every response is no error"
        );
        assert_eq!(summary.events, 12);
        assert_eq!(
            summary.content.as_deref(),
            Some("Hi there! How can I \"help\" with érror\n?"),
            "the deltas, once: not the `done` events' full text"
        );
    }

    #[test]
    fn responses_stream_incomplete_failed_error_cut() {
        let summary = tap_all_splits(&sse_headers(), &responses_stream("incomplete"));
        assert_eq!(summary.finish_reason, Some(FinishReason::Length));
        assert_eq!(summary.usage.map(|u| u.total()), Some(48));
        assert!(summary.done && !summary.error);

        let summary = tap_all_splits(&sse_headers(), &responses_stream("failed"));
        assert!(summary.error && summary.done);
        assert_eq!(summary.finish_reason, None);
        assert_eq!(summary.usage, None);

        let summary = tap_all_splits(&sse_headers(), &responses_stream("error"));
        assert!(summary.error && !summary.done);

        // Cut before its last event: no end, no finish, no usage.
        let summary = tap_all_splits(&sse_headers(), &responses_stream(""));
        assert!(!summary.done && !summary.error);
        assert_eq!((summary.finish_reason, summary.usage), (None, None));

        let chunk = StreamChunk::parse(
            r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null}"#,
        );
        assert!(chunk.error && !chunk.malformed && !chunk.done);
    }

    const ANTHROPIC_JSON: &str = r#"{
      "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
      "type": "message",
      "role": "assistant",
      "model": "claude-sonnet-4-5-20250929",
      "content": [
        {"type": "thinking", "thinking": "The user greets me.", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "Hi! My name is Claude."},
        {"type": "text", "text": " How can I help?"}
      ],
      "stop_reason": "end_turn",
      "stop_sequence": null,
      "usage": {
        "input_tokens": 2095,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 503,
        "service_tier": "standard"
      }
    }"#;

    #[test]
    fn anthropic_json() {
        let c = Completion::from_json(ANTHROPIC_JSON.as_bytes()).unwrap_or_default();
        let usage = c.usage.unwrap_or_default();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3195, 503));
        assert_eq!(usage.total(), 3698);
        assert_eq!(c.finish_reason, Some(FinishReason::Stop));
        assert!(!c.error);
        assert_eq!(
            c.content.as_deref(),
            Some("Hi! My name is Claude. How can I help?")
        );
        assert_eq!(tap(&json_headers(), ANTHROPIC_JSON, 5).content, c.content);

        for (stop, reason) in [
            ("max_tokens", FinishReason::Length),
            ("stop_sequence", FinishReason::Stop),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other("pause_turn".to_owned())),
        ] {
            let body = ANTHROPIC_JSON.replace(r#""end_turn""#, &format!("\"{stop}\""));
            let c = Completion::from_json(body.as_bytes()).unwrap_or_default();
            assert_eq!(c.finish_reason, Some(reason), "{stop}");
        }

        let c = Completion::from_json(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        )
        .unwrap_or_default();
        assert!(c.error);
        assert_eq!((c.usage, c.finish_reason, c.content), (None, None, None));
    }

    #[test]
    fn a_shared_answer_is_read_once_for_the_same_bytes_only() {
        let answer = |prompt: u64| {
            format!(
                r#"{{"choices":[{{"message":{{"content":"Hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":1,"total_tokens":{}}}}}"#,
                prompt + 1
            )
        };
        let (below, above) = (answer(3), answer(30));
        let mut extensions = http::Extensions::new();
        let mut filler = AnswerTap::for_response(&json_headers(), 1 << 20).share(&mut extensions);
        let mut same = AnswerTap::for_response(&json_headers(), 1 << 20).share(&mut extensions);
        let mut other = AnswerTap::for_response(&json_headers(), 1 << 20).share(&mut extensions);
        let mut texts = AnswerTap::for_response(&json_headers(), 1 << 20)
            .gather_content(1 << 10)
            .share(&mut extensions);
        let shared = extensions
            .get::<SharedAnswer>()
            .cloned()
            .unwrap_or_default();
        for tap in [&mut filler, &mut same, &mut texts] {
            tap.observe(below.as_bytes());
        }
        other.observe(above.as_bytes());
        assert!(
            shared.summary_of(below.as_bytes()).is_none(),
            "filled at the end"
        );

        assert_eq!(filler.finish().usage, Some(Usage::new(3, 1)));
        let filled = shared.summary_of(below.as_bytes()).cloned();
        assert_eq!(
            filled.as_ref().and_then(|s| s.usage),
            Some(Usage::new(3, 1))
        );
        assert_eq!(filled.and_then(|s| s.content), None);
        assert!(shared.summary_of(above.as_bytes()).is_none());
        assert_eq!(same.finish().usage, Some(Usage::new(3, 1)));
        // Other bytes (a layer between changed them) are read anew.
        assert_eq!(other.finish().usage, Some(Usage::new(30, 1)));
        assert_eq!(texts.finish().content.as_deref(), Some("Hi"));
        // A stream isn't shared.
        let mut sse = AnswerTap::for_response(&sse_headers(), 1 << 20).share(&mut extensions);
        sse.observe(b"data: [DONE]\n\n");
        assert!(sse.finish().done);
    }

    #[test]
    fn without_content_reads_all_but_the_text() {
        let error =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let incomplete =
            RESPONSE_JSON.replace(r#""status": "completed""#, r#""status": "incomplete""#);
        for body in [RESPONSE_JSON, ANTHROPIC_JSON, error, &incomplete] {
            let full = Completion::from_json(body.as_bytes()).unwrap_or_default();
            let skimmed = Completion::without_content(body.as_bytes()).unwrap_or_default();
            assert_eq!(
                skimmed,
                Completion {
                    content: None,
                    ..full
                },
                "{body}"
            );
        }
        assert!(Completion::without_content(b"not json").is_err());
    }

    /// An Anthropic stream as the API documents it: text, then a tool call.
    const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2000,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\",\\nlet's check \\\"the weather\\\"\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_stream() {
        let summary = tap_all_splits(&sse_headers(), ANTHROPIC_STREAM);
        let usage = summary.usage.unwrap_or_default();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2472, 89));
        assert_eq!(usage.total(), 2561);
        assert_eq!(summary.finish_reason, Some(FinishReason::ToolCalls));
        assert!(summary.done && !summary.error);
        assert_eq!(summary.events, 12);
        assert_eq!(
            summary.content.as_deref(),
            Some("Okay,\nlet's check \"the weather\"")
        );

        // A later report of a field that was reported before keeps the
        // larger count (newer API versions repeat the input in
        // `message_delta`).
        let repeated = ANTHROPIC_STREAM.replace(
            r#""usage":{"output_tokens":89}"#,
            r#""usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2000,"output_tokens":89}"#,
        );
        assert_eq!(tap(&sse_headers(), &repeated, 100).usage, summary.usage);

        let ended = ANTHROPIC_STREAM.replace(
            r#""stop_reason":"tool_use""#,
            r#""stop_reason":"max_tokens""#,
        );
        assert_eq!(
            tap(&sse_headers(), &ended, 100).finish_reason,
            Some(FinishReason::Length)
        );
    }

    #[test]
    fn anthropic_stream_error_and_cut() {
        let cut = ANTHROPIC_STREAM
            .split("event: content_block_stop")
            .next()
            .unwrap_or_default();
        let errored = format!(
            "{cut}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n"
        );
        let summary = tap_all_splits(&sse_headers(), &errored);
        assert!(summary.error && !summary.done);
        assert_eq!(summary.finish_reason, None);
        assert_eq!(summary.usage.map(|u| u.prompt_tokens), Some(2472));

        let summary = tap_all_splits(&sse_headers(), cut);
        assert!(!summary.error && !summary.done && summary.finish_reason.is_none());

        // An event named `error` is one, whatever its data.
        let summary = tap(&sse_headers(), "event: error\ndata: overloaded\n\n", 100);
        assert!(summary.error);
    }

    #[test]
    fn usage_reads_every_shape_and_merges() {
        let read = |json: &str| serde_json::from_str::<Usage>(json).unwrap_or_default();
        assert_eq!(
            read(
                r#"{"prompt_tokens":3,"completion_tokens":5,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":0}}"#
            ),
            Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                total_tokens: 9
            }
        );
        assert_eq!(
            read(r#"{"input_tokens":3,"output_tokens":5,"total_tokens":8}"#),
            Usage::new(3, 5)
        );
        let anthropic = read(
            r#"{"input_tokens":3,"cache_creation_input_tokens":null,"cache_read_input_tokens":4,"output_tokens":5}"#,
        );
        assert_eq!(
            (
                anthropic.prompt_tokens,
                anthropic.completion_tokens,
                anthropic.total()
            ),
            (7, 5, 12)
        );
        assert_eq!(read("{}"), Usage::default());

        let mut usage = Usage {
            prompt_tokens: 5,
            completion_tokens: 1,
            total_tokens: 6,
        };
        usage.merge(Usage {
            prompt_tokens: 0,
            completion_tokens: 9,
            total_tokens: 0,
        });
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens, usage.total()),
            (5, 9, 14)
        );
        let mut usage = Usage::default();
        usage.merge(Usage {
            prompt_tokens: 2,
            completion_tokens: 3,
            total_tokens: 0,
        });
        assert_eq!((usage.total_tokens, usage.total()), (0, 5));
    }

    #[test]
    fn content_limits_hold() {
        let mut tap = AnswerTap::for_response(&json_headers(), 1 << 20).gather_content(24);
        tap.observe(ANTHROPIC_JSON.as_bytes());
        assert_eq!(
            tap.finish().content.as_deref(),
            Some("Hi! My name is Claude. H")
        );

        let mut tap = AnswerTap::for_response(&sse_headers(), 1 << 20).gather_content(4);
        tap.observe(ANTHROPIC_STREAM.as_bytes());
        assert_eq!(tap.finish().content.as_deref(), Some("Okay"));

        let mut tap = AnswerTap::for_response(&sse_headers(), 1 << 20);
        tap.observe(ANTHROPIC_STREAM.as_bytes());
        assert_eq!(tap.finish().content, None, "not gathered unless asked");
    }
}
