use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fred::prelude::ClientLike;
use serde_json::{Value, json};
use tower_ai_context::ContextLayer;
use tower_ai_core::reject::Refusal;
use tower_ai_ratelimit::TokenCostLayer;
use tower_http::trace::TraceLayer;
use tower_session::Session;

use crate::front::Front;
use crate::proxy;
use crate::respond::problem;
use crate::{AppState, MAX_CHAT_BODY};

/// The gateway's service: the model routes' stack beside the router of the
/// other routes (see [`Front`]).
pub(crate) fn router(
    state: AppState,
    limits: &[crate::config::LimitConfig],
) -> Result<
    impl tower::Service<
        axum::extract::Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    crate::config::ConfigError,
> {
    let limits = crate::layers::rate_limit(state.redis.as_ref(), limits)?;
    // Every API and admin route's layers, in this order.
    let layers = tower::ServiceBuilder::new()
        .layer(crate::auth::AuthLayer(state.auth.clone()))
        .layer(TokenCostLayer::with(crate::layers::token_cost()))
        .layer(limits)
        // Above the cache: a cached answer joins the history too.
        .layer(chat_history(&state))
        // Below the history (the client's own turns join it) and
        // above the cache (what was injected is part of the key).
        .layer(
            state
                .context
                .as_ref()
                .map_or_else(|| ContextLayer::builder().build(), |c| c.layer.clone()),
        )
        .layer(state.cache.clone());
    let sessions = crate::layers::sessions(state.redis.as_ref(), state.secure_cookies)
        .map_err(|e| crate::config::ConfigError::new(e.to_string()))?;
    // Over every route, the router's own answers included.
    let outer = tower::ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(crate::metrics::RecordLayer)
        .layer(sessions);
    // The model routes' stack, the outer layers included, ends in a plain
    // service, not a boxed handler (see `ModelCall`), and is not boxed:
    // its requests don't go through the router (see `Front`).
    let models = tower::ServiceBuilder::new()
        .layer(outer.clone())
        .layer(layers.clone())
        .service(proxy::ModelCall(state.clone()));
    let api = Router::new()
        .route("/v1/models", get(proxy::list))
        .route("/v1/content/{id}", get(content))
        .route("/v1/streams/{id}", get(proxy::stream).head(proxy::stream));
    let admin = Router::new()
        .route("/admin/config", get(admin_config))
        .route("/admin/keys", get(admin_keys))
        .route("/admin/balance", get(admin_balance))
        .route("/admin/circuits", get(circuits).post(control_circuit))
        .route("/admin/cache/invalidate", post(invalidate_cache))
        .route(
            "/admin/context/documents",
            post(crate::context::put_document),
        )
        .route(
            "/admin/context/documents/{id}",
            axum::routing::delete(crate::context::delete_document),
        )
        .route("/admin/conversations", get(crate::conversations::stats))
        .route("/admin/conversations/{id}", get(crate::conversations::read));
    let session_routes = Router::new()
        .route("/session", get(session_info))
        .route("/session/login", post(login))
        .route("/session/logout", post(logout));
    let router = Router::new()
        .merge(api)
        .merge(admin)
        .layer(layers)
        .merge(session_routes)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // One layer over the router, not three: each `Router::layer` boxes
        // the service and the response body of every request again.
        .layer(outer)
        .with_state(state);
    Ok(Front { models, router })
}

/// The chat history, each turn also queued for PostgreSQL with
/// `[persistence]`.
fn chat_history(state: &AppState) -> tower_session::ChatHistoryLayer {
    let layer = tower_session::ChatHistoryLayer::new().max_body(MAX_CHAT_BODY);
    match state.conversations.clone() {
        Some(conversations) => layer.on_turn(move |turn| conversations.record(&turn)),
        None => layer,
    }
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
}

/// `POST /session/login` with `{"user": "…"}`: signs the session in and
/// gives it a new id (the old one, which the client may have been handed by
/// someone else, stops working).
async fn login(session: Session, body: axum::body::Bytes) -> Response {
    let login: Login = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => {
            return problem(
                Refusal::bad_request(),
                "invalid_request_error",
                &format!("expected {{\"user\": \"…\"}}: {e}"),
            );
        }
    };
    let user = login.user.trim();
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return problem(
            Refusal::bad_request(),
            "invalid_request_error",
            "a user name is 1 to 128 characters, without control characters",
        );
    }
    if let Err(e) = session.insert("user", user) {
        return e.into_response();
    }
    if let Err(e) = session.cycle_id().await {
        return e.into_response();
    }
    axum::Json(json!({ "user": user })).into_response()
}

/// `POST /session/logout`: ends the session on every replica at once (and
/// its conversation's buffered turns go to PostgreSQL).
async fn logout(State(state): State<AppState>, session: Session) -> Response {
    if let (Some(conversations), Some(id)) = (&state.conversations, session.id()) {
        conversations.end(id);
    }
    match session.logout().await {
        Ok(()) => axum::Json(json!({ "user": null })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /session`: the signed-in user and the last turns of the
/// conversation (and, with `[persistence]`, its durable id).
async fn session_info(State(state): State<AppState>, session: Session) -> Response {
    let user = match session.user_id().await {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    let turns = if user.is_some() {
        match session.history().last(20).await {
            Ok(turns) => turns,
            Err(e) => return e.into_response(),
        }
    } else {
        Vec::new()
    };
    let conversation = match (&state.conversations, session.id()) {
        (Some(_), Some(id)) if user.is_some() => Some(crate::conversations::conversation_id(id)),
        _ => None,
    };
    let mut body = json!({ "user": user, "turns": turns });
    if let Some(conversation) = conversation {
        body["conversation"] = json!(conversation);
    }
    axum::Json(body).into_response()
}

async fn content(Path(id): Path<String>) -> Response {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return problem(
            Refusal::bad_request(),
            "invalid_request_error",
            "a content id is 1 to 128 characters of letters, digits, '-', '_' and '.'",
        );
    }
    axum::Json(json!({
        "id": id,
        "title": format!("Content {id}"),
        "body": format!("The text of content {id}."),
    }))
    .into_response()
}

/// `GET /admin/balance`: each model's deployments as the balancer sees
/// them: load, cooldown, prefix hit rate.
async fn admin_balance(State(state): State<AppState>) -> Response {
    let models: Vec<Value> = state
        .models
        .named()
        .iter()
        .chain(state.models.wildcard())
        .map(|m| {
            let deployments: Vec<Value> = m
                .pool
                .status()
                .into_iter()
                .map(|d| {
                    json!({
                        "name": d.name,
                        "in_flight": d.in_flight,
                        "max_concurrency": d.max_concurrency,
                        "tokens_in_flight": d.tokens_in_flight,
                        "requests": d.requests,
                        "failures": d.failures,
                        "consecutive_failures": d.consecutive_failures,
                        "cooldowns": d.cooldowns,
                        "cooling_for_ms": d.cooling_for.map(|c| c.as_millis() as u64),
                        "prefix_hit_rate": d.prefix_hit_rate,
                        "reported_waiting": d.reported_waiting,
                        "kv_usage": d.kv_usage,
                    })
                })
                .collect();
            json!({
                "model": m.name.as_ref(),
                "balance": m.balance(),
                "fallbacks": m.fallbacks.iter().map(AsRef::as_ref).collect::<Vec<&str>>(),
                "deployments": deployments,
            })
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn admin_config(State(state): State<AppState>) -> Response {
    let models: Vec<Value> = state
        .models
        .named()
        .iter()
        .chain(state.models.wildcard())
        .map(|m| {
            json!({
                "name": m.name.as_ref(),
                "provider": m.provider.as_str(),
                "deployments": m.pool.endpoints().iter().map(|d| json!({
                    "name": d.name(),
                    "base_url": format!("{:?}", d.target().endpoint),
                    "credential": d.target().credential.is_some(),
                })).collect::<Vec<_>>(),
                "balance": m.balance(),
                "fallbacks": m.fallbacks.iter().map(AsRef::as_ref).collect::<Vec<&str>>(),
                "upstream_model": m.upstream_model.as_deref(),
                "price": m.price.map(|p| json!({
                    "input_per_mtok": p.input_per_mtok,
                    "output_per_mtok": p.output_per_mtok,
                })),
            })
        })
        .collect();
    axum::Json(json!({
        "models": models,
        "keys": state.auth.callers().len(),
        "redis": state.redis.as_ref().map_or(Value::Null, |r| json!({ "nodes": r.urls })),
        "max_chat_body_bytes": MAX_CHAT_BODY,
    }))
    .into_response()
}

/// `GET /admin/keys`: each configured key's name, tier, budget and spend
/// in the current period (never the key).
async fn admin_keys(State(state): State<AppState>) -> Response {
    let mut keys = Vec::with_capacity(state.auth.callers().len());
    for caller in state.auth.callers() {
        let budget = match caller.budget {
            None => Value::Null,
            Some(budget) => {
                let spend = state.budgets.spent(&caller.name, budget).await;
                json!({
                    "usd": budget.usd,
                    "per": budget.per.as_str(),
                    "spent_usd": spend.nanos as f64 / 1e9,
                    "resets_in_s": spend.resets_in.as_secs(),
                })
            }
        };
        keys.push(json!({
            "name": caller.name.as_ref(),
            "tier": caller.tier.as_ref().map(|t| t.as_str()),
            "budget": budget,
        }));
    }
    axum::Json(json!({ "keys": keys })).into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let redis = match &state.redis {
        None => json!({ "configured": false, "state": "not configured" }),
        Some(redis) => {
            // A live check, bounded by the Redis timeout; while Redis is
            // marked down this answers from the backoff state at once.
            let _ = redis.degrade.call(redis.client.ping::<String>(None)).await;
            json!({
                "configured": true,
                "nodes": redis.urls,
                "state": redis.degrade.health().as_str(),
            })
        }
    };
    let degraded = redis["state"] == "down";
    axum::Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "uptime_seconds": state.started.elapsed().as_secs(),
        "redis": redis,
        "circuits": state.circuits.snapshot(),
    }))
    .into_response()
}

async fn circuits(State(state): State<AppState>) -> Response {
    axum::Json(state.circuits.snapshot()).into_response()
}

/// `{"key": "<64 hex digits>"}` or `{"tag": "model:<name>" | "route:<name>"}`:
/// drops the entries on every replica.
#[derive(serde::Deserialize)]
struct Invalidate {
    key: Option<String>,
    tag: Option<String>,
}

async fn invalidate_cache(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let bad = |detail: &str| problem(Refusal::bad_request(), "invalid_request_error", detail);
    let Ok(command) = serde_json::from_slice::<Invalidate>(&body) else {
        return bad("expected {\"key\": \"<hex>\"} or {\"tag\": \"model:<name>\"}");
    };
    let handle = state.cache.handle();
    let done = match (command.key, command.tag) {
        (Some(key), None) => match tower_ai_cache::CacheKey::from_hex(&key) {
            Some(key) => handle.invalidate_key(&key).await,
            None => return bad("a cache key is 64 hex digits"),
        },
        (None, Some(tag)) => match tower_ai_cache::CacheTag::parse(&tag) {
            Some(tag) => handle.invalidate_tag(&tag).await,
            None => return bad("a tag is model:<name> or route:<name>"),
        },
        _ => return bad("give exactly one of key and tag"),
    };
    axum::Json(json!({ "removed": done.removed, "replicated": done.replicated })).into_response()
}

/// `{"key": "<model>", "control": "force_open" | "force_closed" | "disable" | "reset"}`
#[derive(serde::Deserialize)]
struct CircuitControl {
    key: String,
    control: tower_circuit::Control,
}

async fn control_circuit(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let command: CircuitControl = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return problem(
                Refusal::bad_request(),
                "invalid_request_error",
                &format!(
                    "expected {{\"key\": …, \"control\": \"force_open\" | \"force_closed\" | \"disable\" | \"reset\"}}: {e}"
                ),
            );
        }
    };
    match state.circuits.control(&command.key, command.control) {
        Ok(()) => axum::Json(state.circuits.get(&command.key)).into_response(),
        Err(e) => problem(
            Refusal::new(StatusCode::NOT_FOUND),
            "invalid_request_error",
            &e.to_string(),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    problem(
        Refusal::new(StatusCode::NOT_FOUND),
        "invalid_request_error",
        "no such route",
    )
}
