#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`sse`]: the spec-exact SSE codec (re-exported from `tower-ai-core`).
//! - [`store`]: where resumable streams are kept: [`MemoryStore`], with the
//!   `redis` feature `RedisStore` (Redis Streams), or either ([`AnyStore`]).
//! - [`streams`]: the re-attach endpoint and the `Last-Event-ID` rules.
//! - [`tap`]: hooks that see each event and the stream's end.
//! - [`future`]: the response future.
//!
//! # Metrics
//!
//! Through the `metrics` facade, recorded at a stream's first event and at
//! its end (never per event), labelled by `mode` (`direct`, `resumable`: the
//! generation, `reader`: a client of a stored stream):
//! `tower_ai_sse_time_to_first_event_seconds` (histogram, from the request),
//! `tower_ai_sse_events_per_second` (histogram), `tower_ai_sse_events_total`,
//! `tower_ai_sse_streams_total` (with `outcome`),
//! `tower_ai_sse_heartbeats_total`, `tower_ai_sse_resumes_total` (with
//! `outcome`), `tower_ai_sse_generations_active` (gauge),
//! `tower_ai_sse_generations_refused_total`, `tower_ai_sse_usage_drains_total`,
//! `tower_ai_sse_store_errors_total` and `tower_ai_sse_store_forgotten_total`.
//! Labels are bounded (mode, outcome, operation); never a stream id.
//!
//! Tracing: a `sse_generation` span (field `stream_id`) around each detached
//! generation; events with `stream_id` fields when a stream ends, breaks,
//! re-attaches or falls back.

mod body;
mod config;
mod error;
pub mod future;
mod generate;
mod id;
mod layer;
mod relay;
mod respond;
mod service;
pub mod store;
pub mod streams;
pub mod tap;

/// The SSE codec: [`Decoder`](sse::Decoder), [`Event`](sse::Event),
/// [`encode`](sse::encode), [`EventStream`](sse::EventStream).
pub use tower_ai_core::sse;

pub use crate::body::SseRelayBody;
pub use crate::config::InvalidResume;
pub use crate::error::{BoxError, ConfigError};
pub use crate::id::{EventId, IdError, ResumeFrom, StreamId};
pub use crate::layer::{SseRelayBuilder, SseRelayLayer};
pub use crate::relay::RelayStats;
pub use crate::service::SseRelay;
#[cfg(feature = "redis")]
pub use crate::store::RedisStore;
pub use crate::store::{AnyStore, MemoryStore, StreamStore};
pub use crate::streams::StreamsService;
pub use crate::tap::{EndReason, MakeTap, StreamSummary, Tap};
