//! Distributed, token-aware rate limiting for AI/LLM APIs as one tower
//! [`Layer`](tower_layer::Layer).
//!
//! - **Who**: a [`KeyExtractor`](tower_ai_core::key::KeyExtractor) finds the
//!   caller (API key, peer IP, trusted-proxy IP, header, session user, …).
//! - **What**: [`Policy`]s — token bucket (GCRA, the default), leaky bucket,
//!   fixed window, sliding-window log and sliding-window counter — counted
//!   in requests or in LLM [tokens](Policy::tokens), picked per route and per
//!   tier by a [`Policies`] table. A request is checked against all of its
//!   policies at once: admitted by all, or charged by none.
//! - **Where**: in memory ([`MemoryStore`]) or, with the `redis` feature,
//!   shared by every replica through Redis (`RedisStore`: one Lua script per
//!   check, Cluster-safe hash tags, a local fallback while Redis is down).
//! - **Answers**: every response carries `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining` and `X-RateLimit-Reset`, optionally the IETF
//!   `RateLimit-Policy`/`RateLimit` fields and OpenAI's
//!   `x-ratelimit-*-{requests,tokens}`; a refusal is `429` with `Retry-After`
//!   and an `application/problem+json` body, or `RESOURCE_EXHAUSTED` for a
//!   gRPC call. See [`headers`].
//! - **LLM tokens**: [`TokenCostLayer`] estimates a chat request's tokens
//!   from its body before the call; the rate limiter reconciles the charge
//!   with the `usage` the answer reports (from a JSON body, or the last chunk
//!   of a stream) when the body ends.
//!
//! # Example
//! ```
//! use std::net::SocketAddr;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceExt};
//! use tower_ai_ratelimit::{Policy, Rate, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = RateLimitLayer::builder()
//!     .policy(Policy::token_bucket(2, Rate::per_minute(1.0)).named("demo"))
//!     .build()
//!     .unwrap();
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(String::from("ok"))) });
//!
//! let req = || {
//!     let mut r = Request::new(());
//!     r.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 1], 1000)));
//!     r
//! };
//! let res = svc.ready().await.unwrap().call(req()).await.unwrap();
//! assert_eq!(res.headers()["x-ratelimit-remaining"], "1");
//! let _ = svc.ready().await.unwrap().call(req()).await.unwrap();
//! let res = svc.ready().await.unwrap().call(req()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "60");
//! # }
//! ```

mod algorithm;
mod body;
mod clock;
mod config;
mod cost;
mod error;
pub mod future;
pub mod headers;
mod layer;
mod limiter;
mod policy;
mod resolver;
mod respond;
mod service;
pub mod store;

pub use crate::algorithm::Decision;
pub use crate::body::RateLimitBody;
pub use crate::clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use crate::config::{DefaultKey, HeaderStyle, MissingKey, Refused};
pub use crate::cost::{TokenCost, TokenCostLayer, TokenCostService, TokenEstimate};
pub use crate::error::ConfigError;
pub use crate::layer::{RateLimitBuilder, RateLimitLayer};
pub use crate::limiter::Limiter;
pub use crate::policy::{Algorithm, Policy, Rate, Unit};
pub use crate::resolver::{Policies, TierSource};
pub use crate::service::RateLimit;
pub use crate::store::MemoryStore;
#[cfg(feature = "redis")]
pub use crate::store::{FailMode, RedisStore, RedisStoreBuilder};
