use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fred::prelude::ClientLike;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_ai_core::body::{ReadError, read_limited};
use tower_ai_core::llm::ChatRequest;
use tower_ai_core::reject::Refusal;
use tower_ai_ratelimit::TokenCostLayer;
use tower_http::trace::TraceLayer;
use tower_session::Session;

use crate::upstream::UpstreamError;
use crate::{AppState, MAX_CHAT_BODY};

pub(crate) fn router(state: AppState) -> Result<Router, crate::config::ConfigError> {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/content/{id}", get(content))
        .route_service("/v1/streams/{id}", state.streams.clone());
    let admin = Router::new()
        .route("/admin/config", get(admin_config))
        .route("/admin/circuits", get(circuits).post(control_circuit))
        .route("/admin/cache/invalidate", post(invalidate_cache));
    let limits = crate::layers::rate_limit(state.redis.as_ref())?;
    let sessions = crate::layers::sessions(state.redis.as_ref(), state.secure_cookies)
        .map_err(|e| crate::config::ConfigError::new(e.to_string()))?;
    let session_routes = Router::new()
        .route("/session", get(session_info))
        .route("/session/login", post(login))
        .route("/session/logout", post(logout));
    Ok(Router::new()
        .merge(api)
        .merge(admin)
        .layer(
            tower::ServiceBuilder::new()
                .layer(TokenCostLayer::with(crate::layers::token_cost()))
                .layer(limits)
                // Above the cache: a cached answer joins the history too.
                .layer(tower_session::ChatHistoryLayer::new().max_body(MAX_CHAT_BODY))
                .layer(state.cache.clone()),
        )
        .merge(session_routes)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(sessions)
        .layer(axum::middleware::from_fn(crate::metrics::record))
        .layer(TraceLayer::new_for_http())
        .with_state(state))
}

/// A refusal as an axum response. The problem document also carries an
/// OpenAI-style `error` member, so OpenAI SDKs show its message.
pub(crate) fn problem(refusal: Refusal, error_type: &str, message: &str) -> Response {
    refusal
        .detail(message.to_owned())
        .member("error", json!({ "message": message, "type": error_type }))
        .into_http::<Body>()
        .map(Body::new)
}

async fn chat_completions(State(state): State<AppState>, req: Request) -> Response {
    // The token-cost layer in front has read the body within
    // `MAX_CHAT_BODY` (and refused a larger one with 413): this read can't
    // be cut short.
    let (parts, body) = req.into_parts();
    let bytes = match read_limited(body, MAX_CHAT_BODY).await {
        Ok(bytes) => bytes,
        Err(ReadError::Failed(e)) => {
            return problem(
                Refusal::bad_request(),
                "invalid_request_error",
                &format!("the request body could not be read: {e}"),
            );
        }
        Err(e) => {
            return problem(
                Refusal::bad_request(),
                "invalid_request_error",
                &e.to_string(),
            );
        }
    };
    let model = match ChatRequest::from_json(&bytes) {
        Ok(chat) if chat.messages > 0 && chat.model.is_some() => chat.model.unwrap_or_default(),
        Ok(_) => {
            return problem(
                Refusal::bad_request(),
                "invalid_request_error",
                "a chat completion request needs a `model` and at least one message in `messages`",
            );
        }
        Err(e) => {
            return problem(
                Refusal::bad_request(),
                "invalid_request_error",
                &e.to_string(),
            );
        }
    };
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut()
        .insert(crate::layers::Model(model.as_str().into()));
    match state.upstream.clone().oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(e) => upstream_failed(&e),
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

/// `POST /session/logout`: ends the session on every replica at once.
async fn logout(session: Session) -> Response {
    match session.logout().await {
        Ok(()) => axum::Json(json!({ "user": null })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /session`: the signed-in user and the last turns of the
/// conversation.
async fn session_info(session: Session) -> Response {
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
    axum::Json(json!({ "user": user, "turns": turns })).into_response()
}

pub(crate) fn upstream_failed(e: &UpstreamError) -> Response {
    tracing::warn!(error = %e, "upstream request failed");
    let refusal = match e {
        UpstreamError::Timeout => Refusal::gateway_timeout(),
        _ => Refusal::bad_gateway(),
    };
    problem(refusal, "upstream_error", &e.to_string())
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

async fn admin_config(State(state): State<AppState>) -> Response {
    axum::Json(json!({
        "upstream": format!("{:?}", state.upstream),
        "redis": state.redis.as_ref().map_or(Value::Null, |r| json!({ "nodes": r.urls })),
        "max_chat_body_bytes": MAX_CHAT_BODY,
    }))
    .into_response()
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
