//! Chat-completion request bodies in the OpenAI shape, as the tests send
//! them to the mock LLM (or to a layer in front of it).
//!
//! [`body`] and [`streamed`] are the common shapes, as `String`s; [`request`]
//! starts a [`Chat`] for anything else, as a JSON [`Value`] or a `String`:
//!
//! ```
//! use test_support::chat;
//!
//! let body = chat::request("Name a prime.")
//!     .system("You are terse.")
//!     .model("gpt-test")
//!     .stream(true)
//!     .include_usage()
//!     .set("max_tokens", 5)
//!     .json();
//! assert_eq!(body["messages"][1]["content"], "Name a prime.");
//! let text: serde_json::Value = chat::body("hi", false).parse()?;
//! assert_eq!(
//!     text,
//!     serde_json::json!({
//!         "model": "mock-1",
//!         "stream": false,
//!         "messages": [{"role": "user", "content": "hi"}],
//!     })
//! );
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt;

use serde_json::{Value, json};

/// The model a request names unless [`Chat::model`] says otherwise.
pub const MODEL: &str = "mock-1";

/// `{"model": "mock-1", "stream": stream, "messages": [{"role": "user", "content": prompt}]}`.
pub fn body(prompt: &str, stream: bool) -> String {
    request(prompt).stream(stream).to_string()
}

/// A streamed request that asks for the usage chunk:
/// [`body`]`(prompt, true)` with `"stream_options": {"include_usage": true}`.
pub fn streamed(prompt: &str) -> String {
    request(prompt).stream(true).include_usage().to_string()
}

/// A request with one user message, `prompt`, to [`MODEL`]; neither
/// `stream` nor anything else is set until a method sets it.
pub fn request(prompt: &str) -> Chat {
    Chat(json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
    }))
}

/// A chat request body being built; see [`request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Chat(Value);

impl Chat {
    /// Names another model.
    #[must_use]
    pub fn model(self, model: &str) -> Self {
        self.set("model", model)
    }

    /// Puts a system message before the others.
    #[must_use]
    pub fn system(mut self, text: &str) -> Self {
        if let Some(messages) = self.0["messages"].as_array_mut() {
            messages.insert(0, json!({"role": "system", "content": text}));
        }
        self
    }

    /// Sends the user's prompt as a list of content parts,
    /// `[{"type": "text", "text": prompt}]`, instead of a string.
    #[must_use]
    pub fn text_parts(mut self) -> Self {
        if let Some(messages) = self.0["messages"].as_array_mut() {
            for message in messages.iter_mut().filter(|m| m["role"] == "user") {
                let text = message["content"].take();
                message["content"] = json!([{"type": "text", "text": text}]);
            }
        }
        self
    }

    /// Sets `"stream"`.
    #[must_use]
    pub fn stream(self, stream: bool) -> Self {
        self.set("stream", stream)
    }

    /// Sets `"stream_options": {"include_usage": true}`.
    #[must_use]
    pub fn include_usage(self) -> Self {
        self.set("stream_options", json!({"include_usage": true}))
    }

    /// Sets any top-level field (`temperature`, `max_tokens`, ...).
    #[must_use]
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Self {
        self.0[field] = value.into();
        self
    }

    /// The body as JSON.
    pub fn json(self) -> Value {
        self.0
    }
}

/// The body as compact JSON text.
impl fmt::Display for Chat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Chat> for Value {
    fn from(chat: Chat) -> Self {
        chat.0
    }
}

impl From<Chat> for String {
    fn from(chat: Chat) -> Self {
        chat.to_string()
    }
}

/// The text of a chat completion (`choices[0].message.content`), or `""`.
pub fn content(completion: &Value) -> &str {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
}

/// The text of one chunk of a streamed completion
/// (`choices[0].delta.content`), if it has any.
pub fn delta(chunk: &Value) -> Option<&str> {
    chunk["choices"][0]["delta"]["content"].as_str()
}

/// The text of a streamed completion: the content deltas of its `data`
/// payloads, concatenated (payloads that are not JSON, like `[DONE]`, and
/// chunks without content are passed over).
pub fn streamed_text<'a>(data: impl IntoIterator<Item = &'a str>) -> String {
    data.into_iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|chunk| delta(&chunk).map(str::to_owned))
        .collect()
}
