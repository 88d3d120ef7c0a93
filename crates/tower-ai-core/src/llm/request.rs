//! What the layers read of a request: [`ChatRequest`], from any API's body.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::json::{LlmError, skip_other_scalars};

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
/// the [module's table](crate::llm): chat and text completions, embeddings,
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
    /// [module's table](crate::llm).
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

// ---- The bodies, as read -------------------------------------------------

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
