//! OpenAI-style chat completion fields: what a request asks for, and the
//! token `usage` an answer reports, from a JSON body or from stream chunks.
//!
//! The rate limiter estimates a request's token cost from [`ChatRequest`] and
//! reconciles it with [`Usage`]; the cache reads [`FinishReason`] to store only
//! complete answers; the circuit breaker reads [`StreamChunk`] to tell a
//! finished stream from one that carried an in-band error.
//!
//! # Example
//! ```
//! use tower_ai_core::llm::{ChatRequest, StreamChunk, Usage};
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
//! ```

use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

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

/// The text of a chat request's last `user` message (text parts joined with
/// newlines): the turn a conversation history keeps of the request. `None`
/// when the body is not a chat request or holds no user text.
///
/// ```
/// use tower_ai_core::llm::last_user_message;
///
/// let body = br#"{"messages":[{"role":"system","content":"Be brief"},
///     {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"there"}]}]}"#;
/// assert_eq!(last_user_message(body).as_deref(), Some("Hi\nthere"));
/// assert_eq!(last_user_message(b"not json"), None);
/// ```
pub fn last_user_message(body: &[u8]) -> Option<String> {
    let raw: RawRequest = serde_json::from_slice(body).ok()?;
    let message = raw
        .messages?
        .into_iter()
        .rev()
        .find(|m| m.role.as_deref() == Some("user"))?;
    let text = match message.content {
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

/// The fields of an OpenAI chat completion request that the layers read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChatRequest {
    /// `model`.
    pub model: Option<String>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_output_tokens: Option<u64>,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`: whether a streamed answer ends with a
    /// usage chunk.
    pub include_usage: bool,
    /// `n`: how many choices are asked for (1 when absent).
    pub n: u32,
    /// How many messages the request holds.
    pub messages: usize,
    /// Bytes of text across every message's content.
    pub prompt_bytes: usize,
}

impl ChatRequest {
    /// Reads the fields from a JSON request body.
    pub fn from_json(body: &[u8]) -> Result<Self, LlmError> {
        let raw: RawRequest = serde_json::from_slice(body).map_err(LlmError::Json)?;
        let (messages, prompt_bytes) = match raw.messages {
            Some(messages) => (
                messages.len(),
                messages.iter().map(|m| m.content.text_len()).sum(),
            ),
            None => (0, 0),
        };
        Ok(Self {
            model: raw.model,
            max_output_tokens: raw.max_completion_tokens.or(raw.max_tokens),
            stream: raw.stream.unwrap_or(false),
            include_usage: raw
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            n: raw.n.unwrap_or(1).max(1),
            messages,
            prompt_bytes,
        })
    }

    /// An estimate of the prompt's tokens, from its size.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        estimated_tokens(self.prompt_bytes) + self.messages as u64 * TOKENS_PER_MESSAGE
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

/// Token usage as an answer reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// `prompt_tokens`.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// `completion_tokens`.
    #[serde(default)]
    pub completion_tokens: u64,
    /// `total_tokens`.
    #[serde(default)]
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
}

/// Why the model stopped (`finish_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// `stop`: a natural end, or a stop sequence.
    Stop,
    /// `length`: cut off by the token limit.
    Length,
    /// `tool_calls`.
    ToolCalls,
    /// `content_filter`.
    ContentFilter,
    /// Anything else.
    Other(String),
}

impl FinishReason {
    fn from_str(s: &str) -> Self {
        match s {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether the answer ended on its own (`stop` or `tool_calls`), so it is
    /// complete.
    pub fn is_complete(&self) -> bool {
        matches!(self, Self::Stop | Self::ToolCalls)
    }
}

/// What a non-streamed chat completion body says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completion {
    /// `usage`, when present.
    pub usage: Option<Usage>,
    /// The first choice's `finish_reason`.
    pub finish_reason: Option<FinishReason>,
    /// Whether the body is an error object (`{"error": …}`).
    pub error: bool,
}

impl Completion {
    /// Reads a completion body. A body that isn't JSON is an error.
    pub fn from_json(body: &[u8]) -> Result<Self, LlmError> {
        let raw: RawAnswer = serde_json::from_slice(body).map_err(LlmError::Json)?;
        Ok(raw.into_parts())
    }
}

/// One `data:` payload of a streamed chat completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamChunk {
    /// The chunk's `usage` (OpenAI sends it once, in a final chunk with no
    /// choices, when `stream_options.include_usage` is set).
    pub usage: Option<Usage>,
    /// The first choice's `finish_reason`, when this chunk sets it.
    pub finish_reason: Option<FinishReason>,
    /// Whether the chunk is an in-band error event.
    pub error: bool,
    /// Whether this is the `[DONE]` sentinel that ends the stream.
    pub done: bool,
    /// Whether the payload failed to parse as JSON (and is not `[DONE]`).
    pub malformed: bool,
}

impl StreamChunk {
    /// Reads an event's data. Never fails: what can't be read is reported in
    /// [`StreamChunk::malformed`].
    pub fn parse(data: &str) -> Self {
        let data = data.trim();
        if data == "[DONE]" {
            return Self {
                done: true,
                ..Self::default()
            };
        }
        match serde_json::from_str::<RawAnswer>(data) {
            Ok(raw) => {
                let c = raw.into_parts();
                Self {
                    usage: c.usage,
                    finish_reason: c.finish_reason,
                    error: c.error,
                    done: false,
                    malformed: false,
                }
            }
            Err(_) => Self {
                malformed: true,
                ..Self::default()
            },
        }
    }
}

/// What an answer said about itself, gathered as its body passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnswerSummary {
    /// The reported usage.
    pub usage: Option<Usage>,
    /// The (last seen) finish reason.
    pub finish_reason: Option<FinishReason>,
    /// Whether an in-band error was seen (an `{"error": …}` body or event).
    pub error: bool,
    /// For streams: whether `data: [DONE]` arrived.
    pub done: bool,
    /// For streams: how many events arrived.
    pub events: u64,
    /// The first choice's text, when the tap was asked to gather it
    /// ([`AnswerTap::gather_content`]).
    pub content: Option<String>,
}

/// Reads an OpenAI-style answer as its body passes, without holding it up:
/// the events of a `text/event-stream` body through the SSE decoder, or a
/// JSON body buffered up to a limit and read at its end.
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
/// ```
#[derive(Debug)]
pub struct AnswerTap {
    kind: TapKind,
    summary: AnswerSummary,
    content_limit: Option<usize>,
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
        }
    }

    /// Also gathers the first choice's text (a JSON answer's
    /// `message.content`, or a stream's `delta.content` pieces), up to
    /// `limit` bytes.
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
                        Self::absorb_event(&mut self.summary, self.content_limit, event.data());
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

    fn absorb_event(summary: &mut AnswerSummary, content_limit: Option<usize>, data: &str) {
        summary.events += 1;
        if let Some(limit) = content_limit
            && let Some(piece) = first_choice_text(data.as_bytes())
        {
            let content = summary.content.get_or_insert_with(String::new);
            if content.len() + piece.len() <= limit {
                content.push_str(&piece);
            }
        }
        let chunk = StreamChunk::parse(data);
        if chunk.usage.is_some() {
            summary.usage = chunk.usage;
        }
        if chunk.finish_reason.is_some() {
            summary.finish_reason = chunk.finish_reason;
        }
        summary.error |= chunk.error;
        summary.done |= chunk.done;
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
                        Self::absorb_event(&mut self.summary, self.content_limit, event.data());
                    }
                }
            }
            TapKind::Json { buf, overflow, .. } => {
                if !*overflow && let Ok(c) = Completion::from_json(buf) {
                    self.summary.usage = c.usage;
                    self.summary.finish_reason = c.finish_reason;
                    self.summary.error = c.error;
                    if let Some(limit) = self.content_limit {
                        self.summary.content = first_choice_text(buf).map(|mut t| {
                            t.truncate(floor_char_boundary(&t, limit));
                            t
                        });
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

/// The first choice's text in a completion (`message.content`) or a stream
/// chunk (`delta.content`).
fn first_choice_text(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Option<Text>,
        delta: Option<Text>,
    }
    #[derive(Deserialize)]
    struct Text {
        content: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(json).ok()?;
    let choice = answer.choices.into_iter().next()?;
    choice.message.or(choice.delta)?.content
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// A body that could not be read as OpenAI JSON.
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

#[derive(Deserialize)]
struct RawRequest {
    model: Option<String>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<RawStreamOptions>,
    n: Option<u32>,
    messages: Option<Vec<RawMessage>>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    include_usage: Option<bool>,
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

impl RawContent {
    fn text_len(&self) -> usize {
        match self {
            Self::Text(s) => s.len(),
            Self::Parts(parts) => parts
                .iter()
                .map(|p| p.text.as_ref().map_or(0, String::len))
                .sum(),
            Self::None => 0,
        }
    }
}

#[derive(Deserialize)]
struct RawPart {
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawAnswer {
    usage: Option<Usage>,
    #[serde(default)]
    choices: Vec<RawChoice>,
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RawChoice {
    finish_reason: Option<String>,
}

impl RawAnswer {
    fn into_parts(self) -> Completion {
        Completion {
            usage: self.usage,
            finish_reason: self
                .choices
                .first()
                .and_then(|c| c.finish_reason.as_deref())
                .map(FinishReason::from_str),
            error: self.error.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(req.prompt_bytes, 8);
        assert_eq!(req.estimated_prompt_tokens(), 2 + 3 * 4);
        assert_eq!(req.estimated_total_tokens(100), 14 + 40);
    }

    #[test]
    fn rejects_what_is_not_json() {
        assert!(ChatRequest::from_json(b"not json").is_err());
        assert!(ChatRequest::from_json(br#"{"messages": 5}"#).is_err());
        assert!(ChatRequest::from_json(br#"{}"#).is_ok());
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

        let chunk = StreamChunk::parse(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#);
        assert_eq!(chunk.finish_reason, Some(FinishReason::Stop));
        assert!(chunk.finish_reason.is_some_and(|r| r.is_complete()));
        let err = StreamChunk::parse(r#"{"error":{"message":"overloaded","type":"server_error"}}"#);
        assert!(err.error);
        assert!(StreamChunk::parse("{oops").malformed);
        assert!(StreamChunk::parse(" [DONE] ").done);
    }
}
