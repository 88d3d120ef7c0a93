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

mod answer;
mod json;
mod request;
mod tap;
#[cfg(test)]
mod tests;

pub use answer::{Completion, FinishReason, StreamChunk, Usage};
pub use json::LlmError;
pub use request::{ChatRequest, SharedRequest, estimated_tokens, last_user_message};
pub use tap::{AnswerSummary, AnswerTap, SharedAnswer};
