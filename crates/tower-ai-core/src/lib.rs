//! What more than one tower-ai layer needs, and nothing else.
//!
//! - [`body`]: a response body that is either the inner service's body or
//!   bytes a layer produced itself (a refusal, a cached answer).
//! - [`future`]: a layer's response future, its inner service's own or its
//!   own boxed work.
//! - [`key`]: who is calling — the [`key::KeyExtractor`] trait and its
//!   built-ins, shared by the rate limiter and the cache.
//! - [`llm`]: OpenAI-style chat request fields and token `usage`, from a JSON
//!   body and from stream chunks.
//! - [`sse`]: the spec-exact Server-Sent Events parser and encoder.
//! - [`reject`]: refusals as responses: `application/problem+json` for HTTP,
//!   a trailers-only status for gRPC.
//! - `redis` (feature `redis`): `fred` client setup, Lua scripts called by
//!   EVALSHA, key naming with Cluster hash tags, and the [`Degrade`] health
//!   state that sends callers to their local fallback while Redis is down.
//!
#![cfg_attr(feature = "redis", doc = "[`Degrade`]: crate::redis::Degrade")]
#![cfg_attr(not(feature = "redis"), doc = "[`Degrade`]: #")]

pub mod body;
pub mod future;
pub mod key;
pub mod llm;
pub mod reject;
pub mod sse;

#[cfg(feature = "redis")]
pub mod redis;
