//! Predicting the mock's answers: what a route will say to a request, without sending it.

use serde_json::Value;

use crate::anthropic::MessagesRequest;
use crate::chat::ChatRequest;
use crate::completions::CompletionRequest;
use crate::embeddings;
use crate::responses::ResponsesRequest;

/// The mock's answer to a request, as [`answer`] and [`answer_for`] compute it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answer's text: the concatenated tokens, each a word with its leading space.
    pub content: String,
    /// How the answer ended, in the words of the route's API: `"stop"` or `"length"` (chat and
    /// completions `finish_reason`), `"completed"` or `"incomplete"` (the responses `status`),
    /// `"end_turn"` or `"max_tokens"` (the messages `stop_reason`). The second of each pair
    /// means the request's token limit cut the answer.
    pub finish_reason: &'static str,
    /// The prompt tokens the route reports (`prompt_tokens` or `input_tokens`); see the
    /// [crate docs](crate#token-counts) for how each route counts them.
    pub prompt_tokens: u64,
    /// Tokens in `content`, which the route reports as `completion_tokens` or `output_tokens`.
    pub completion_tokens: u64,
}

/// The generating routes, for [`answer_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Api {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages`.
    Messages,
}

/// Computes the answer the mock gives to a chat completion request body, or `None` if the mock
/// would refuse it with `400`. The same as [`answer_for`]`(Api::ChatCompletions, request)`.
///
/// Same request, same answer. Every field goes into the answer except `stream`,
/// `stream_options`, `max_tokens` and `max_completion_tokens`; JSON object key order does not
/// matter.
pub fn answer(request: &Value) -> Option<Answer> {
    answer_for(Api::ChatCompletions, request)
}

/// Computes the answer the mock gives to a request body sent to `api`'s route, or `None` if the
/// mock would refuse it with `400`. Streamed or not, the text and the token counts are the
/// same.
///
/// Same request, same answer. Every field goes into the answer except those that only say how
/// it is delivered or where it is cut: `stream`, `stream_options`, and the route's token limit
/// (`max_tokens`, `max_completion_tokens`, `max_output_tokens`). So a cut answer is a prefix of
/// the whole one. JSON object key order does not matter.
pub fn answer_for(api: Api, request: &Value) -> Option<Answer> {
    Some(match api {
        Api::ChatCompletions => {
            let parsed = ChatRequest::parse(request).ok()?;
            Answer {
                content: parsed.answer.text(),
                finish_reason: parsed.finish_reason(),
                prompt_tokens: parsed.prompt_tokens,
                completion_tokens: parsed.answer.output_tokens(),
            }
        }
        Api::Completions => {
            let parsed = CompletionRequest::parse(request).ok()?;
            Answer {
                content: parsed.answer.text(),
                finish_reason: parsed.finish_reason(),
                prompt_tokens: parsed.prompt_tokens,
                completion_tokens: parsed.answer.output_tokens(),
            }
        }
        Api::Responses => {
            let parsed = ResponsesRequest::parse(request).ok()?;
            Answer {
                content: parsed.answer.text(),
                finish_reason: parsed.status(),
                prompt_tokens: parsed.input_tokens,
                completion_tokens: parsed.answer.output_tokens(),
            }
        }
        Api::Messages => {
            let parsed = MessagesRequest::parse(request).ok()?;
            Answer {
                content: parsed.answer.text(),
                finish_reason: parsed.stop_reason(),
                prompt_tokens: parsed.input_tokens,
                completion_tokens: parsed.answer.output_tokens(),
            }
        }
    })
}

/// The prompt the simulated server gets for a chat completion request body in
/// [simulate mode](crate#simulate-mode), or `None` if the mock would refuse the request with
/// `400`: each message's content text, in order, joined with `\n` (a line feed). A content's
/// text is the string itself, or the `text` of its parts of type `"text"` concatenated with
/// nothing between them; any other content (`null`, tool calls) is empty. Roles and every other
/// field are left out, so a conversation's prompt extends the prompt of its earlier turns.
///
/// The simulator counts 4 bytes of UTF-8 per token (a last partial one counts), caches it in
/// blocks of 16 tokens, and never serves the last token from the cache: a prompt of `T` tokens
/// sent again while its blocks are cached reports `16 × ⌊(T − 1) / 16⌋` cached tokens.
///
/// ```
/// use serde_json::json;
///
/// let request = json!({"model": "m", "messages": [
///     {"role": "system", "content": "Be brief."},
///     {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
/// ]});
/// assert_eq!(mock_llm::simulated_prompt(&request).as_deref(), Some("Be brief.\nHi!"));
/// ```
pub fn simulated_prompt(request: &Value) -> Option<String> {
    ChatRequest::parse(request)
        .ok()
        .map(|parsed| parsed.simulated_prompt)
}

/// The vector `POST /v1/embeddings` returns for `input` with `dimensions` (the route's default
/// is 16): a unit vector that depends on the text alone, not on the model. A token-id input
/// `[1, 2, 3]` is embedded as the text `"1 2 3"`. Computed in `f64`, sent as `f32`.
///
/// * **Bag of words** (the default). The text's words are its whitespace-separated pieces,
///   lowercased, with every character that is not alphanumeric removed (`"Tower-AI,"` is
///   `towerai`; a piece left empty is no word). Each word has a fixed unit vector (values from a
///   PRNG seeded with the word's hash); the text's vector is their sum, normalized. So word
///   order, case and punctuation don't matter (`"The fox jumps."` and `"jumps the FOX"` get the
///   same vector), and texts that share most of their words are close. A text without words
///   (`"?!"`) gets a vector seeded with its own hash.
/// * **`{{embed:KEY}}`**, anywhere in the text: the unit vector of `KEY`, whatever the rest of
///   the text says. Texts with the same key get the same vector; two keys get unrelated ones.
/// * **`{{embed:KEY~SIM~SALT}}`**: a unit vector whose cosine with `KEY`'s vector is exactly
///   `SIM` (a number from -1 to 1, to within 1e-6 after the `f32` rounding):
///   `SIM·u + sqrt(1 − SIM²)·w`, `u` being `KEY`'s vector and `w` `SALT`'s vector (the vector
///   of `{{embed:SALT}}`) made orthogonal to `u` and normalized. Different salts at the same
///   similarity give different vectors; the same salt, the same vector. With one dimension
///   there is no room for a salt: the vector is `KEY`'s, or its opposite for a negative `SIM`.
///
/// `KEY` is any non-empty text without `~` and `}}`; `SALT` any non-empty text without `~`
/// and `}}`. Only the first `{{embed:` of a text counts; if it does not start a directive of
/// one of these two shapes, the route refuses the request with `400` (this function then
/// falls back to the bag of words).
///
/// ```
/// let cosine = |a: &[f32], b: &[f32]| -> f64 {
///     a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
/// };
/// let question = mock_llm::embedding("{{embed:refunds}} How do I get my money back?", 64);
/// let passage = mock_llm::embedding("{{embed:refunds~0.96~policy}} Refunds take 5 days.", 64);
/// let other = mock_llm::embedding("{{embed:refunds~0.96~faq}}", 64);
/// assert!((cosine(&question, &passage) - 0.96).abs() < 1e-6);
/// assert!((cosine(&question, &other) - 0.96).abs() < 1e-6);
/// assert_ne!(passage, other);
/// assert_eq!(
///     mock_llm::embedding("The quick fox.", 16),
///     mock_llm::embedding("fox QUICK the", 16),
/// );
/// ```
///
/// With `encoding_format: "base64"` the route sends the base64 of these `f32`s, little-endian.
pub fn embedding(input: &str, dimensions: usize) -> Vec<f32> {
    embeddings::embedding(input, dimensions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{MAX_TOKENS, MIN_TOKENS};
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
