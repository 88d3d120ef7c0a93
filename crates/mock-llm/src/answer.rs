//! Parsing a chat request and answering it deterministically.

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

/// The shortest and longest answers, in tokens, before `max_tokens`.
const MIN_TOKENS: u64 = 8;
const MAX_TOKENS: u64 = 40;

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

/// Estimated prompt tokens added per message (role and framing).
const TOKENS_PER_MESSAGE: u64 = 4;

/// The mock's answer to a chat request, as [`answer`] computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The assistant message: the concatenated tokens, each a word with its leading space.
    pub content: String,
    /// `"stop"`, or `"length"` when `max_tokens`/`max_completion_tokens` cut the answer.
    pub finish_reason: &'static str,
    /// Whitespace-separated words of all message contents, plus 4 per message.
    pub prompt_tokens: u64,
    /// Tokens in `content`.
    pub completion_tokens: u64,
}

/// Computes the answer the mock gives to a chat completion request body, or `None` if the mock
/// would refuse it with `400`.
///
/// Same request, same answer. Every field goes into the answer except `stream`,
/// `stream_options`, `max_tokens` and `max_completion_tokens`; JSON object key order does not
/// matter.
pub fn answer(request: &Value) -> Option<Answer> {
    let parsed = ChatRequest::parse(request).ok()?;
    Some(Answer {
        content: parsed.content(),
        finish_reason: parsed.finish_reason,
        prompt_tokens: parsed.prompt_tokens,
        completion_tokens: parsed.completion_tokens(),
    })
}

/// A valid chat request, reduced to what the mock needs.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    pub(crate) hash: u64,
    /// The answer's words, already cut at `max_tokens`.
    pub(crate) words: Vec<&'static str>,
    pub(crate) finish_reason: &'static str,
    pub(crate) prompt_tokens: u64,
}

impl ChatRequest {
    /// Parses a request body; `Err` carries the message of the 400.
    pub(crate) fn from_slice(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            format!(
                "We could not parse the JSON body of your request. ({e}) \
                 (HINT: This likely means you aren't using your HTTP library correctly.)"
            )
        })?;
        Self::parse(&value)
    }

    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        let object = value
            .as_object()
            .ok_or_else(|| "The request body must be a JSON object.".to_owned())?;
        let model = match object.get("model") {
            Some(Value::String(model)) => model.clone(),
            Some(_) => return Err("Invalid type for 'model': expected a string.".to_owned()),
            None => return Err("You must provide a model parameter.".to_owned()),
        };
        let messages = match object.get("messages") {
            Some(Value::Array(messages)) => messages,
            Some(_) => return Err("Invalid type for 'messages': expected an array.".to_owned()),
            None => return Err("Missing required parameter: 'messages'.".to_owned()),
        };
        let mut prompt_tokens = 0u64;
        for (i, message) in messages.iter().enumerate() {
            prompt_tokens += TOKENS_PER_MESSAGE + message_words(message, i)?;
        }
        let stream = match object.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(_) => return Err("Invalid type for 'stream': expected a boolean.".to_owned()),
        };
        let include_usage = object
            .get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // `max_completion_tokens` replaced `max_tokens`; it wins when both are present.
        let max_tokens = match limit(object, "max_completion_tokens")? {
            Some(max) => Some(max),
            None => limit(object, "max_tokens")?,
        };

        let hash = request_hash(object);
        let mut rng = SplitMix64(hash);
        let len = MIN_TOKENS + rng.next() % (MAX_TOKENS - MIN_TOKENS + 1);
        let mut words: Vec<&'static str> = (0..len)
            .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
            .collect();
        let mut finish_reason = "stop";
        if let Some(max) = max_tokens
            && max < len
        {
            words.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            finish_reason = "length";
        }
        Ok(Self {
            model,
            stream,
            include_usage,
            hash,
            words,
            finish_reason,
            prompt_tokens,
        })
    }

    /// The tokens: each word with its leading space.
    pub(crate) fn tokens(&self) -> impl Iterator<Item = String> + '_ {
        self.words.iter().map(|word| format!(" {word}"))
    }

    pub(crate) fn content(&self) -> String {
        self.tokens().collect()
    }

    pub(crate) fn completion_tokens(&self) -> u64 {
        self.words.len() as u64
    }

    /// `chatcmpl-` and the request hash in hex.
    pub(crate) fn id(&self) -> String {
        format!("chatcmpl-{:016x}", self.hash)
    }
}

/// Whitespace-separated words of one message's content (a string, or text parts).
fn message_words(message: &Value, index: usize) -> Result<u64, String> {
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
    let words = |text: &str| text.split_whitespace().count() as u64;
    Ok(match message.get("content") {
        Some(Value::String(text)) => words(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(words)
            .sum(),
        // `null` content (an assistant message with tool calls) or other shapes: no words.
        _ => 0,
    })
}

/// Reads a token limit: absent or `null` is no limit, else a positive integer.
fn limit(object: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
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

/// FNV-1a over a canonical encoding of the request (object keys sorted, so the key order and
/// serde_json's `preserve_order` feature don't matter), skipping [`NOT_HASHED`].
fn request_hash(object: &Map<String, Value>) -> u64 {
    let mut hasher = Fnv1a::new();
    let mut entries: Vec<(&String, &Value)> = object
        .iter()
        .filter(|(key, _)| !NOT_HASHED.contains(&key.as_str()))
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
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn same_request_same_answer_regardless_of_key_order() {
        let a = serde_json::from_str::<Value>(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
        )
        .ok();
        let b = serde_json::from_str::<Value>(
            r#"{"temperature":0.5,"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        )
        .ok();
        let (Some(a), Some(b)) = (a, b) else {
            panic!("test JSON");
        };
        assert_eq!(answer(&a), answer(&b));
        assert!(answer(&a).is_some());
    }

    #[test]
    fn lengths_and_truncation() {
        for i in 0..200 {
            let request =
                json!({"model": "m", "messages": [{"role": "user", "content": format!("q {i}")}]});
            let Some(full) = answer(&request) else {
                panic!("valid request refused");
            };
            assert!((MIN_TOKENS..=MAX_TOKENS).contains(&full.completion_tokens));
            assert_eq!(
                full.content.split(' ').count() as u64,
                full.completion_tokens + 1
            );
            assert_eq!(full.finish_reason, "stop");
            assert_eq!(full.prompt_tokens, 4 + 2);
            let mut cut = request.clone();
            cut["max_tokens"] = json!(3);
            let Some(cut) = answer(&cut) else {
                panic!("valid request refused");
            };
            assert_eq!(cut.completion_tokens, 3);
            assert_eq!(cut.finish_reason, "length");
            assert!(full.content.starts_with(&cut.content));
        }
    }

    #[test]
    fn content_parts_and_invalid_requests() {
        let parts = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two three"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": null, "tool_calls": []}
        ]});
        assert_eq!(answer(&parts).map(|a| a.prompt_tokens), Some(12 + 5));
        for bad in [
            json!([]),
            json!({"messages": []}),
            json!({"model": 1, "messages": []}),
            json!({"model": "m"}),
            json!({"model": "m", "messages": {}}),
            json!({"model": "m", "messages": [1]}),
            json!({"model": "m", "messages": [], "stream": "yes"}),
            json!({"model": "m", "messages": [], "max_tokens": 0}),
            json!({"model": "m", "messages": [], "max_tokens": -3}),
        ] {
            assert_eq!(answer(&bad), None, "{bad}");
        }
    }
}
