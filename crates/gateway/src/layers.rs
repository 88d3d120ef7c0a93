//! The layers the gateway stacks, with the defaults of the design.

use tower_ai_core::key::{ApiKey, KeyExtractorExt, PeerIp};
use tower_ai_ratelimit::{
    ConfigError, HeaderStyle, MissingKey, Policies, Policy, Rate, RateLimitLayer, RedisStore,
    TokenCost,
};

use crate::{MAX_CHAT_BODY, RedisState};

/// Who a client is: `Authorization: Bearer`, else `X-API-Key`, else the
/// peer address.
pub(crate) type ClientKey = tower_ai_core::key::Or<ApiKey, PeerIp>;

/// The rate limits of the design, per client key: chat 5 requests
/// (refilled at 0.1/s) and 20,000 LLM tokens a minute; content 100 (10/s);
/// admin 50 (5/s). In Redis when the gateway has one, so they hold across
/// replicas.
pub(crate) fn rate_limit(
    redis: Option<&RedisState>,
) -> Result<RateLimitLayer<ClientKey>, ConfigError> {
    let policies = Policies::new()
        .route(
            "/v1/chat/completions",
            [
                Policy::token_bucket(5, Rate::per_second(0.1)).named("chat"),
                Policy::token_bucket(20_000, Rate::per_minute(20_000.0))
                    .named("chat-tokens")
                    .tokens(),
            ],
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
        Some(redis) => builder.redis(RedisStore::builder(redis.client.clone()).build()),
        None => builder,
    };
    builder.build()
}

/// Token estimates read at most the chat route's body limit.
pub(crate) fn token_cost() -> TokenCost {
    let mut cost = TokenCost::default();
    cost.max_body = MAX_CHAT_BODY;
    cost
}
