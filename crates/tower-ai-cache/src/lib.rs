//! A layered (memory + Redis) response cache for AI endpoints that never
//! serves one tenant's answer to another.
//!
//! - **Key** ([`CacheKey`]): a BLAKE3 digest of the method, the path and
//!   query, the configured `vary` headers, the **scope** and the canonical
//!   form of the whole body (RFC 8785-style JSON: sorted keys, no
//!   whitespace, normalised numbers), less an explicit [`IgnoreList`]. Every
//!   parameter that changes an answer (`model`, `messages`, `tools`,
//!   `temperature`, `seed`, `n`, `response_format`, …) is in it. Malformed
//!   JSON is keyed as its raw bytes.
//! - **Scope**: by default the caller's API key (the same
//!   [`KeyExtractor`](tower_ai_core::key::KeyExtractor)s as the rate
//!   limiter; [`CacheBuilder::scope`] picks another). A request whose caller
//!   can't be found is not cached at all; sharing answers across tenants
//!   takes an explicit [`CacheBuilder::public`] or [`Route::public`].
//! - **What is stored**: complete, successful answers only: a cacheable
//!   status (2xx by default), a body up to [`CacheBuilder::max_body`], for
//!   LLM answers a `finish_reason` of `stop` or `tool_calls`, or `length`
//!   when the request set `max_tokens` (or `max_completion_tokens`,
//!   `max_output_tokens`) and the key holds it, since that cut-off answer is
//!   exactly what the same request gets again ([`Route::store_length`] turns
//!   it off); never an in-band error; for streams the `[DONE]` end, for gRPC
//!   `grpc-status: 0`. Never with `Cache-Control: no-store` on the request
//!   or the response, `private` under a public scope, `Set-Cookie`, or a
//!   `Vary` the key doesn't cover. A request's `no-cache` skips the lookup
//!   and refreshes the entry; `max-age` and `only-if-cached` are honoured.
//!   (A response's `no-cache`, which OpenAI sends on every stream, is not a
//!   reason to skip storing: the TTL governs.)
//! - **Layers**: L1 in this process ([`quick_cache`], bounded by bytes; in front
//!   of L2 each entry at most [`CacheBuilder::l1_ttl`], 60 s by default,
//!   alone the whole TTL) in front of L2 in
//!   Redis (feature `redis`, a `RedisStore` given to [`CacheBuilder::redis`];
//!   standalone or Cluster).
//!   A hit in L2 costs one `GET`. With Redis down, the cache runs on L1
//!   alone, adding at most the Redis timeout (50 ms) before it notices; it
//!   logs the switch once, counts it, and goes back to L2 when Redis answers,
//!   flushing L1 (invalidations may have been missed).
//! - **Stampedes**: identical misses in one process make one upstream call;
//!   the others wait for it (or follow its stream live) and are reported
//!   `collapsed`. Across replicas, the first takes a short Redis lock; the
//!   others follow its recording in a Redis Stream (`XREAD BLOCK`), so a
//!   streamed answer reaches them while it is being generated.
//! - **Streams** (`text/event-stream`) are recorded as they pass, never
//!   delaying the client, stored only if they completed, and replayed as the
//!   same bytes. A stream cut off (a body error, the client leaving) is never
//!   stored.
//! - **Stale on error** (RFC 5861 `stale-if-error`): an expired entry is kept
//!   for [`CacheBuilder::stale_if_error`] and served when the upstream fails
//!   (an error or a 5xx); a circuit breaker's fallback can serve it too
//!   ([`CacheHandle::stale_fallback`]).
//! - **Headers**: `Cache-Status` (RFC 9211: `hit`, `fwd=miss`, `fwd=bypass`,
//!   `fwd=request`, `fwd=stale`, with `collapsed`, `ttl`, `detail`, and with
//!   [`CacheBuilder::expose_key`] the `key`) and `Age`. Headers go out before
//!   the body, and whether an answer is stored is decided at its end
//!   (complete or not, within bounds or not), so the head never claims
//!   `stored`; a miss being recorded carries its `ttl`. A request no route
//!   matches gets no `Cache-Status`.
//! - **Invalidation** ([`CacheHandle`]): by key or by [`CacheTag`] (a model, a
//!   tenant, a route), across replicas through Redis pub/sub.
//! - **Semantic** (feature `semantic`, [`SemanticCache`]): on a route marked
//!   [`Route::semantic`], a chat request whose exact key misses is looked up
//!   by the embedding of its last user turn, among the answers to requests
//!   identical in everything else (same tenant, model, parameters and
//!   earlier turns); it answers at a cosine similarity of 0.95 or more, when
//!   the [`HitGuard`] accepts the two questions (by default, not when only
//!   one is negated), with `detail=semantic; similarity=…`.
//! - **Metrics** (`tower_ai_cache_*`, labelled by route): `hits_total`
//!   (`layer`), `misses_total`, `collapsed_total`, `stores_total`,
//!   `bypasses_total` (`reason`), `not_stored_total` (`reason`),
//!   `stale_served_total`, `evictions_total`, `l1_bytes` (set by
//!   invalidations, and by inserts at most every 100 ms;
//!   [`CacheHandle::l1_bytes`] reads it exactly), `stored_bytes_total`, `l2_errors_total` (`op`), `tokens_saved_total`
//!   (from the stored `usage`), `invalidations_total`.
//!
//! The response body is [`CacheBody`], whose error is a [`BoxError`] (a
//! collapsed request following a stream that breaks off fails like the
//! leader's); the service's error stays the inner service's. The request
//! body type must be buildable from bytes (`From<Bytes>`): the body is read
//! (up to [`CacheBuilder::max_request_body`]) to make the key and passed on
//! as the same bytes.
//!
//! - **axum**: `Router::layer` / `route_layer` (axum's `Body` is
//!   `From<Bytes>`).
//! - **hyper**: map the request body first, e.g.
//!   `req.map(axum::body::Body::new)` or to `http_body_util::Full<Bytes>`.
//! - **tonic** (unary calls): serve the routes as an axum router
//!   (`Routes::into_axum_router`) and add a [`Route`] for each cacheable
//!   method's path (`Route::post("/pkg.Service/Method")`); a gRPC answer is
//!   stored with its trailers, only when `grpc-status` is `0`. Requests are
//!   keyed by their protobuf bytes.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Service, ServiceExt};
//! use tower_ai_cache::{CacheLayer, Route};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! let upstream = tower::service_fn(move |_req: Request<Full<Bytes>>| {
//!     counter.fetch_add(1, Ordering::SeqCst);
//!     async {
//!         let body = r#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],
//!                       "usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
//!         Ok::<_, Infallible>(Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from(body)))
//!             .unwrap())
//!     }
//! });
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(CacheLayer::builder().route(Route::post("/v1/chat/completions")).build()?)
//!     .service(upstream);
//!
//! let ask = |key: &str| {
//!     Request::post("/v1/chat/completions")
//!         .header("authorization", format!("Bearer {key}"))
//!         .body(Full::new(Bytes::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)))
//!         .unwrap()
//! };
//! let first = svc.ready().await?.call(ask("sk-a")).await?;
//! assert_eq!(first.headers()["cache-status"], "tower-ai; fwd=miss; ttl=3600");
//! first.into_body().collect().await?; // stored when the body ends
//!
//! let second = svc.ready().await?.call(ask("sk-a")).await?;
//! assert!(second.headers()["cache-status"].to_str()?.starts_with("tower-ai; hit"));
//! assert_eq!(second.headers()["age"], "0");
//!
//! let other_tenant = svc.ready().await?.call(ask("sk-b")).await?;
//! assert!(other_tenant.headers()["cache-status"].to_str()?.contains("fwd=miss"));
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```

// Imports run one way, as in tower's `limit/rate`: layer -> service -> miss
// -> future -> body -> config (the runtime settings, which every file reads).
// `service`, `miss` and `handle` make responses through `respond`; `miss`,
// `body` and `remote` judge answers through `judge`. Below them all: key,
// entry, flight, store, directives, route, tag; under key, canon.
mod body;
mod canon;
mod config;
mod directives;
mod entry;
mod error;
mod flight;
pub mod future;
mod handle;
mod judge;
mod key;
mod layer;
mod miss;
#[cfg(feature = "semantic")]
mod probe;
#[cfg(feature = "redis")]
mod remote;
mod respond;
mod route;
#[cfg(feature = "semantic")]
mod semantic;
mod service;
mod store;
mod tag;

pub use crate::body::{BoxError, CacheBody};
pub use crate::error::ConfigError;
pub use crate::handle::{CacheHandle, CachedAnswer, Invalidated, StaleFallback};
pub use crate::key::{CacheKey, IgnoreList, KeyScope, canonical_json};
pub use crate::layer::{CacheBuilder, CacheLayer};
pub use crate::respond::FromCache;
pub use crate::route::Route;
#[cfg(feature = "semantic")]
pub use crate::semantic::{HitGuard, NegationGuard, SemanticCache};
pub use crate::service::Cache;
#[cfg(feature = "redis")]
pub use crate::store::redis::{RedisStore, RedisStoreBuilder};
pub use crate::tag::CacheTag;
