//! The layers the gateway stacks, with the defaults of the design.

use std::sync::Arc;
use std::time::Duration;

use tower_ai_core::key::{ApiKey, KeyExtractorExt, PeerIp};
use tower_ai_ratelimit::{
    ConfigError, HeaderStyle, MissingKey, Policies, Policy, Rate, RateLimitLayer, RedisStore,
    TokenCost,
};
use tower_circuit::key::ByExtension;
use tower_circuit::{CircuitBreaker, CircuitBreakerLayer, Window};
use tower_layer::Layer;

use crate::config::{CacheTtls, LimitConfig};
use crate::models::{Deployment, Picked};
use crate::upstream::Upstream;
use crate::{MAX_CHAT_BODY, RedisState};

/// What answers when a model's circuit is open: the cache's stored answer,
/// fresh or stale, else the breaker's own 503 with `Retry-After` (the time
/// left open).
pub(crate) type CacheFallback = tower::util::BoxCloneSyncService<
    http::Request<axum::body::Body>,
    http::Response<axum::body::Body>,
    crate::upstream::UpstreamError,
>;

fn cache_fallback(cache: &tower_ai_cache::CacheHandle) -> CacheFallback {
    use tower::ServiceExt;
    let stale = cache.stale_fallback::<crate::upstream::UpstreamError>();
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: http::Request<axum::body::Body>| {
            let stale = stale.clone();
            let context = req
                .extensions()
                .get::<tower_circuit::fallback::FallbackContext>()
                .cloned();
            async move {
                let res = stale.oneshot(req).await?;
                if res
                    .extensions()
                    .get::<tower_ai_cache::FromCache>()
                    .is_some()
                {
                    return Ok(res.map(axum::body::Body::new));
                }
                // Nothing cached: the breaker's refusal, which says when to
                // come back.
                Ok(match context {
                    Some(context) => context
                        .refusal()
                        .into_http::<axum::body::Body>()
                        .map(axum::body::Body::new),
                    None => res.map(axum::body::Body::new),
                })
            }
        },
    ))
}

/// The upstream client behind its circuit breakers, one per deployment.
pub(crate) type GuardedUpstream = CircuitBreaker<
    Upstream,
    ByExtension<Picked>,
    tower_circuit::classify::DefaultClassifier,
    tower_circuit::fallback::OnRefusal<CacheFallback>,
>;

/// The response cache, as the design sets it: model answers for an hour
/// (per route, from the config; 0 turns a route's cache off) and content
/// for five minutes, scoped per client key (never shared across tenants),
/// in Redis as well as in memory when the gateway has Redis.
pub(crate) fn cache(
    redis: Option<&RedisState>,
    ttls: &CacheTtls,
    semantic: Option<tower_ai_cache::SemanticCache>,
) -> Result<tower_ai_cache::CacheLayer, tower_ai_cache::ConfigError> {
    let mut builder = tower_ai_cache::CacheLayer::builder().scope(ApiKey::new().or(PeerIp::new()));
    if let Some(semantic) = semantic {
        builder = builder.semantic(semantic);
        if !ttls.chat.is_zero() {
            builder = builder.route(
                tower_ai_cache::Route::post("/v1/chat/completions")
                    .name("chat")
                    .ttl(ttls.chat)
                    .semantic(),
            );
        }
    }
    for (path, name, ttl) in [
        ("/v1/chat/completions", "chat", ttls.chat),
        ("/v1/completions", "completions", ttls.completions),
        ("/v1/embeddings", "embeddings", ttls.embeddings),
        ("/v1/responses", "responses", ttls.responses),
        ("/v1/messages", "messages", ttls.messages),
    ] {
        if !ttl.is_zero() {
            builder = builder.route(tower_ai_cache::Route::post(path).name(name).ttl(ttl));
        }
    }
    builder = builder.route(
        tower_ai_cache::Route::get("/v1/content/*")
            .name("content")
            .ttl(Duration::from_secs(300)),
    );
    if let Some(redis) = redis {
        builder = builder.redis(
            tower_ai_cache::RedisStore::builder(redis.client.clone())
                .degrade(redis.degrade.clone())
                .build(),
        );
    }
    builder.build()
}

/// The semantic cache of the chat route: questions embedded by the context
/// layer's embedder, answers indexed in an embedded index of their own
/// (100,000 at most, so answers never push documents out).
pub(crate) fn semantic(
    similarity: f32,
    context: &crate::context::ContextState,
    config: &crate::config::ContextConfig,
    redis: Option<&RedisState>,
) -> tower_ai_cache::SemanticCache {
    let model = &config.embeddings_model;
    let index: Arc<dyn tower_ai_context::VectorIndex> = match (config.backend, redis) {
        // Shared by every replica, apart from the passages (another prefix).
        (crate::config::ContextBackend::Redis, Some(redis)) => Arc::new(
            tower_ai_context::redis::RedisIndex::builder(
                redis.client.clone(),
                model,
                config.dimensions,
            )
            .prefix("tower-ai:semantic")
            .degrade(redis.degrade.clone())
            .build(),
        ),
        _ => Arc::new(
            tower_ai_context::MemoryIndex::builder(model.clone(), config.dimensions)
                .max_records(100_000)
                .build(),
        ),
    };
    tower_ai_cache::SemanticCache::new(Arc::clone(&context.embedder), index).similarity(similarity)
}

/// One breaker per deployment, as the design sets them: open at a 50%
/// failure rate over the last 20 calls (at least 10), a call of 10 s or more
/// is slow, 30 s open (configurable), then 3 trial calls. While a model's
/// circuit is open, the cache answers what it holds for the request (even
/// stale), else 503. Shared through Redis when the
/// gateway has one.
pub(crate) fn circuit_breakers(
    upstream: Upstream,
    open_wait: Duration,
    cache: &tower_ai_cache::CacheHandle,
    redis: Option<&RedisState>,
) -> Result<(GuardedUpstream, tower_circuit::CircuitHandle), tower_circuit::ConfigError> {
    let mut builder = CircuitBreakerLayer::builder()
        .name("upstream")
        .keyed_by(ByExtension::<Picked>::new())
        .window(Window::count(20))
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .slow_call_duration(Duration::from_secs(10))
        .open_wait(open_wait)
        .half_open_trials(3)
        .fallback(cache_fallback(cache));
    if let Some(redis) = redis {
        builder = builder.redis(
            tower_circuit::RedisStore::builder(redis.client.clone())
                .degrade(redis.degrade.clone())
                .build(),
        );
    }
    let layer = builder.build()?;
    let handle = layer.handle();
    Ok((layer.layer(upstream), handle))
}

/// Who a client is: `Authorization: Bearer`, else `X-API-Key`, else the
/// peer address.
pub(crate) type ClientKey = tower_ai_core::key::Or<ApiKey, PeerIp>;

/// The rate limits, per client key: the config's `[[limits]]` first (a
/// tier's before the untiered, in the file's order), then the design's:
/// every generating route (chat, completions, responses, messages) shares
/// 5 requests (refilled at 0.1/s) and 20,000 LLM tokens a minute;
/// embeddings 100 (10/s) and 200,000 tokens a minute; models and content
/// 100 (10/s); admin 50 (5/s). In Redis when the gateway has one, so they
/// hold across replicas.
pub(crate) fn rate_limit(
    redis: Option<&RedisState>,
    limits: &[LimitConfig],
) -> Result<RateLimitLayer<ClientKey>, ConfigError> {
    let mut policies = Policies::new();
    let tiered = limits.iter().filter(|l| l.tier.is_some());
    let untiered = limits.iter().filter(|l| l.tier.is_none());
    for limit in tiered.chain(untiered) {
        let name = format!("{}|{}", limit.route, limit.tier.as_deref().unwrap_or("*"));
        let mut set = Vec::new();
        if let Some(b) = limit.requests {
            set.push(
                Policy::token_bucket(b.capacity, Rate::per_second(b.per_second))
                    .named(&format!("{name}|requests")),
            );
        }
        if let Some(b) = limit.tokens {
            set.push(
                Policy::token_bucket(b.capacity, Rate::per_second(b.per_second))
                    .named(&format!("{name}|tokens"))
                    .tokens(),
            );
        }
        policies = match &limit.tier {
            Some(tier) => policies.route_for_tier(&limit.route, tier, set),
            None => policies.route(&limit.route, set),
        };
    }
    let generating = || {
        [
            Policy::token_bucket(5, Rate::per_second(0.1)).named("chat"),
            Policy::token_bucket(20_000, Rate::per_minute(20_000.0))
                .named("chat-tokens")
                .tokens(),
        ]
    };
    let policies = policies
        .route("/v1/chat/completions", generating())
        .route("/v1/completions", generating())
        .route("/v1/responses", generating())
        .route("/v1/messages", generating())
        .route(
            "/v1/embeddings",
            [
                Policy::token_bucket(100, Rate::per_second(10.0)).named("embeddings"),
                Policy::token_bucket(200_000, Rate::per_minute(200_000.0))
                    .named("embeddings-tokens")
                    .tokens(),
            ],
        )
        .route(
            "/v1/models",
            [Policy::token_bucket(100, Rate::per_second(10.0)).named("models")],
        )
        .route(
            "/v1/content/",
            [Policy::token_bucket(100, Rate::per_second(10.0)).named("content")],
        )
        .route(
            "/admin/",
            [Policy::token_bucket(50, Rate::per_second(5.0)).named("admin")],
        );
    let builder = RateLimitLayer::builder()
        .key(ApiKey::new().or(PeerIp::new()))
        .policies(policies)
        .missing_key(MissingKey::Shared)
        .headers(HeaderStyle::default().openai(true));
    let builder = match redis {
        Some(redis) => builder.redis(
            RedisStore::builder(redis.client.clone())
                .degrade(redis.degrade.clone())
                .build(),
        ),
        None => builder,
    };
    builder.build()
}

/// The deployments' breakers behind the balancer, which picks a deployment
/// of the request's model (the pool the handler put in its extensions).
pub(crate) type BalancedUpstream = tower_ai_balance::Balance<GuardedUpstream, Arc<Deployment>>;

pub(crate) fn balance(upstream: GuardedUpstream) -> BalancedUpstream {
    tower_ai_balance::BalanceLayer::per_request().layer(upstream)
}

/// Streamed answers go through the relay in resumable mode: each event gets
/// an id, the generation goes on if the client drops, and
/// `GET /v1/streams/{id}` re-attaches with `Last-Event-ID`, on any replica
/// sharing the gateway's Redis.
pub(crate) fn relay<S>(
    upstream: S,
    heartbeat: Duration,
    redis: Option<&RedisState>,
) -> Result<
    (
        tower_sse_relay::SseRelay<S, tower_sse_relay::AnyStore>,
        tower_sse_relay::streams::StreamsService<tower_sse_relay::AnyStore>,
    ),
    tower_sse_relay::ConfigError,
> {
    let store = match redis {
        Some(redis) => tower_sse_relay::AnyStore::Redis(
            tower_sse_relay::RedisStore::builder(redis.client.clone())
                .degrade(redis.degrade.clone())
                .build(),
        ),
        None => tower_sse_relay::AnyStore::Memory(tower_sse_relay::MemoryStore::new()),
    };
    let layer = tower_sse_relay::SseRelayLayer::builder()
        .resumable(store)
        .heartbeat(heartbeat)
        .build()?;
    let streams = layer.streams();
    Ok((layer.layer(upstream), streams))
}

/// Sessions on every route: cookie `sid`, 30 minutes of sliding expiry, in
/// Redis when the gateway has one. A Redis outage doesn't stop the gateway:
/// requests go on without their session.
pub(crate) fn sessions(
    redis: Option<&RedisState>,
    secure_cookies: bool,
) -> Result<tower_session::SessionLayer, tower_session::ConfigError> {
    let builder = match redis {
        Some(redis) => tower_session::SessionLayer::builder().redis(
            tower_session::RedisStore::builder(redis.client.clone())
                .degrade(redis.degrade.clone())
                .build(),
        ),
        None => tower_session::SessionLayer::builder(),
    };
    builder
        .cookie_name("sid")
        .ttl(Duration::from_secs(30 * 60))
        .secure(secure_cookies)
        .on_outage(tower_session::OutagePolicy::Continue)
        .history_limit(100)
        .build()
}

/// Token estimates read at most the chat route's body limit.
pub(crate) fn token_cost() -> TokenCost {
    let mut cost = TokenCost::default();
    cost.max_body = MAX_CHAT_BODY;
    cost
}
