//! The deterministic text every generating route answers with, and the request readers the
//! routes share.
//!
//! An answer is a function of the request alone: FNV-1a over a canonical encoding of the body
//! (object keys sorted, the route's delivery and limit fields left out) seeds a splitmix64 PRNG,
//! which picks a length and then the words.

use serde_json::{Map, Value};

/// The words answers are made of. Changing this list changes every answer.
const WORDS: [&str; 64] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "a",
    "model",
    "token",
    "stream",
    "answer",
    "cache",
    "limit",
    "rate",
    "tower",
    "layer",
    "service",
    "request",
    "response",
    "upstream",
    "gateway",
    "circuit",
    "breaker",
    "session",
    "relay",
    "event",
    "data",
    "chunk",
    "usage",
    "prompt",
    "completion",
    "mock",
    "deterministic",
    "hash",
    "seed",
    "random",
    "word",
    "list",
    "future",
    "poll",
    "ready",
    "body",
    "frame",
    "header",
    "status",
    "error",
    "retry",
    "budget",
    "window",
    "bucket",
    "refill",
    "burst",
    "latency",
    "queue",
    "worker",
    "socket",
    "server",
    "client",
    "redis",
    "script",
    "cluster",
    "replica",
];

/// The shortest and longest answers, in tokens, before the request's limit.
pub(crate) const MIN_TOKENS: u64 = 8;
pub(crate) const MAX_TOKENS: u64 = 40;

/// Estimated prompt tokens added per message (role and framing).
pub(crate) const TOKENS_PER_MESSAGE: u64 = 4;

/// The tokens of one answer, already cut at the request's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Generated {
    /// The request hash: seeds the words and names the answer (`chatcmpl-<hash>`, ...).
    pub(crate) hash: u64,
    /// The tokens, each sent as one chunk: a word with its leading space, or a piece of an
    /// [echoed](Self::echo) text.
    tokens: Vec<String>,
    /// The limit cut the answer short.
    pub(crate) truncated: bool,
}

impl Generated {
    /// The answer to a request `object`, hashed without the `not_hashed` fields (so that how an
    /// answer is delivered and where it is cut do not change its text), cut at `max_tokens`.
    pub(crate) fn new(
        object: &Map<String, Value>,
        not_hashed: &[&str],
        max_tokens: Option<u64>,
    ) -> Self {
        let hash = request_hash(object, not_hashed);
        let mut rng = SplitMix64(hash);
        let len = MIN_TOKENS + rng.next() % (MAX_TOKENS - MIN_TOKENS + 1);
        let tokens = (0..len)
            .map(|_| format!(" {}", WORDS[(rng.next() % WORDS.len() as u64) as usize]))
            .collect();
        Self::cut(hash, tokens, max_tokens)
    }

    /// An answer whose text is `text` itself (the echo of the system messages), named by the
    /// hash of the request `object` as [`new`](Self::new) names it, cut at `max_tokens`. Its
    /// tokens are the [`echo_tokens`] of the text.
    pub(crate) fn echo(
        object: &Map<String, Value>,
        not_hashed: &[&str],
        text: &str,
        max_tokens: Option<u64>,
    ) -> Self {
        let hash = request_hash(object, not_hashed);
        Self::cut(hash, echo_tokens(text), max_tokens)
    }

    fn cut(hash: u64, mut tokens: Vec<String>, max_tokens: Option<u64>) -> Self {
        let mut truncated = false;
        if let Some(max) = max_tokens
            && max < tokens.len() as u64
        {
            tokens.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            truncated = true;
        }
        Self {
            hash,
            tokens,
            truncated,
        }
    }

    /// The tokens: each word with its leading space (or each piece of an echoed text).
    pub(crate) fn tokens(&self) -> impl Iterator<Item = String> + '_ {
        self.tokens.iter().cloned()
    }

    /// The whole text: the tokens concatenated.
    pub(crate) fn text(&self) -> String {
        self.tokens.concat()
    }

    /// Tokens in the answer.
    pub(crate) fn output_tokens(&self) -> u64 {
        self.tokens.len() as u64
    }
}

/// Splits `text` into the tokens of an echoed answer: a new token starts wherever whitespace
/// follows a non-whitespace character, so each token is a run of whitespace and the word
/// after it (the first may have no whitespace, the last may be whitespace only), and the
/// tokens concatenated are `text` exactly. An empty text has no tokens.
pub(crate) fn echo_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut previous_is_space = true;
    for (index, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if is_space && !previous_is_space && index > start {
            tokens.push(text[start..index].to_owned());
            start = index;
        }
        previous_is_space = is_space;
    }
    if start < text.len() {
        tokens.push(text[start..].to_owned());
    }
    tokens
}

/// The separator between two echoed system messages.
pub(crate) const ECHO_SEPARATOR: &str = "\n---\n";

/// The request body as an object.
pub(crate) fn object(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| "The request body must be a JSON object.".to_owned())
}

/// The required string `model`.
pub(crate) fn model(object: &Map<String, Value>) -> Result<String, String> {
    match object.get("model") {
        Some(Value::String(model)) => Ok(model.clone()),
        Some(_) => Err("Invalid type for 'model': expected a string.".to_owned()),
        None => Err("You must provide a model parameter.".to_owned()),
    }
}

/// An optional boolean such as `stream`: absent or `null` is `false`.
pub(crate) fn flag(object: &Map<String, Value>, name: &str) -> Result<bool, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(format!("Invalid type for '{name}': expected a boolean.")),
    }
}

/// `stream_options.include_usage`, read leniently (anything but `true` is `false`).
pub(crate) fn include_usage(object: &Map<String, Value>) -> bool {
    object
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Reads a token limit: absent or `null` is no limit, else a positive integer.
pub(crate) fn limit(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(max) if max >= 1 => Ok(Some(max)),
            _ => Err(format!(
                "Invalid '{name}': expected an integer of at least 1, got {value}."
            )),
        },
    }
}

/// Prompt tokens of a text: its whitespace-separated words.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Whitespace-separated words of a message content: a string, or the `text` of its parts whose
/// `type` is one of `text_types`. Any other shape (`null`, images, tool calls) has no words.
pub(crate) fn content_words(content: Option<&Value>, text_types: &[&str]) -> u64 {
    match content {
        Some(Value::String(text)) => words(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| {
                part.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|kind| text_types.contains(&kind))
            })
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(words)
            .sum(),
        _ => 0,
    }
}

/// The text of a message content: a string, or the `text` of its parts whose `type` is one of
/// `text_types`, concatenated in order. Any other shape has no text.
pub(crate) fn content_text(content: Option<&Value>, text_types: &[&str]) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| {
                part.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|kind| text_types.contains(&kind))
            })
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The texts of an OpenAI `input`/`prompt` field: a string, an array of strings, an array of
/// token ids, or an array of token id arrays. A token array becomes one text of its ids
/// separated by spaces, so it counts one word per token.
pub(crate) fn texts(value: &Value, name: &str) -> Result<Vec<String>, String> {
    let invalid = || {
        format!(
            "Invalid type for '{name}': expected a string, an array of strings, an array of \
             integers, or an array of arrays of integers."
        )
    };
    let token_text = |tokens: &[Value]| -> Option<String> {
        let ids: Option<Vec<String>> = tokens
            .iter()
            .map(|token| token.as_u64().map(|id| id.to_string()))
            .collect();
        ids.map(|ids| ids.join(" "))
    };
    match value {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            token_text(items).map(|text| vec![text]).ok_or_else(invalid)
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(tokens) => token_text(tokens).ok_or_else(invalid),
                _ => Err(invalid()),
            })
            .collect(),
        _ => Err(invalid()),
    }
}

/// Prompt tokens of a `messages` array: per message, [`TOKENS_PER_MESSAGE`] plus the words of
/// its content (see [`content_words`]). Every message must be an object with a string `role`.
pub(crate) fn messages_tokens(messages: &[Value], text_types: &[&str]) -> Result<u64, String> {
    let mut tokens = 0;
    for (index, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(format!(
                "Invalid type for 'messages[{index}]': expected an object."
            ));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(format!(
                "Missing required parameter: 'messages[{index}].role'."
            ));
        }
        tokens += TOKENS_PER_MESSAGE + content_words(message.get("content"), text_types);
    }
    Ok(tokens)
}

/// FNV-1a of a list of strings (each length-prefixed): the seed of an embedding vector.
pub(crate) fn texts_hash(parts: &[&str]) -> u64 {
    let mut hasher = Fnv1a::new();
    for part in parts {
        hasher.string(part);
    }
    hasher.0
}

/// FNV-1a over a canonical encoding of the request (object keys sorted, so the key order and
/// serde_json's `preserve_order` feature don't matter), skipping `not_hashed`.
fn request_hash(object: &Map<String, Value>, not_hashed: &[&str]) -> u64 {
    let mut hasher = Fnv1a::new();
    let mut entries: Vec<(&String, &Value)> = object
        .iter()
        .filter(|(key, _)| !not_hashed.contains(&key.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    hasher.object(entries);
    hasher.0
}

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn len(&mut self, len: usize) {
        self.write(&(len as u64).to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.write(b"s");
        self.len(s.len());
        self.write(s.as_bytes());
    }

    fn object(&mut self, entries: Vec<(&String, &Value)>) {
        self.write(b"{");
        self.len(entries.len());
        for (key, value) in entries {
            self.string(key);
            self.value(value);
        }
    }

    /// serde_json bounds nesting at 128 levels when parsing, which bounds this recursion.
    fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.write(b"n"),
            Value::Bool(true) => self.write(b"t"),
            Value::Bool(false) => self.write(b"f"),
            Value::Number(n) => {
                let text = n.to_string();
                self.write(b"#");
                self.len(text.len());
                self.write(text.as_bytes());
            }
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.write(b"[");
                self.len(items.len());
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                self.object(entries);
            }
        }
    }
}

/// splitmix64: a tiny, well-mixed, portable PRNG.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
