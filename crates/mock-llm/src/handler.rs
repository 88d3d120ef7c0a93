//! The routes that generate nothing: the model list, the admin routes and the fallbacks.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde::Serialize;

use crate::MockLlm;
use crate::admit::last_request;
use crate::error::{self, Dialect};
use crate::fault::Fault;
use crate::stats::Endpoint;

/// The ids `GET /v1/models` lists. Every route answers any model name; these are for clients
/// that check the list first.
const MODELS: [&str; 6] = [
    "mock",
    "mock-1",
    "gpt-4o-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "claude-3-5-haiku",
];

/// The `created` of every listed model: 2024-01-01T00:00:00Z.
const MODELS_CREATED: u64 = 1_704_067_200;

#[derive(Debug, Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

#[derive(Debug, Serialize)]
struct Model {
    id: &'static str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// `GET /v1/models`: counted in [`EndpointStats::models`](crate::EndpointStats::models) and
/// recorded as the last request, but not in the model route counters.
pub(crate) async fn models(State(mock): State<MockLlm>, uri: Uri, headers: HeaderMap) -> Response {
    mock.inner
        .stats
        .record(Endpoint::Models, last_request(uri.path(), &headers));
    let data = MODELS
        .iter()
        .map(|id| Model {
            id,
            object: "model",
            created: MODELS_CREATED,
            owned_by: "mock",
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

/// `GET /admin/stats`.
pub(crate) async fn stats(State(mock): State<MockLlm>) -> Response {
    Json(mock.report()).into_response()
}

/// `GET /admin/fault`.
pub(crate) async fn fault(State(mock): State<MockLlm>) -> Response {
    Json(mock.fault()).into_response()
}

/// `POST /admin/fault`: the body is a [`Fault`]; `{}` (or an empty body) clears.
pub(crate) async fn set_fault(State(mock): State<MockLlm>, body: Bytes) -> Response {
    let fault = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Fault::default())
    } else {
        serde_json::from_slice::<Fault>(&body).map_err(|e| format!("Invalid fault: {e}"))
    };
    match fault.and_then(|fault| fault.validate().map(|()| fault)) {
        Ok(fault) => {
            tracing::info!(?fault, "mock-llm: fault set");
            mock.set_fault(fault);
            Json(mock.fault()).into_response()
        }
        Err(message) => Dialect::OpenAi.invalid_request(&message),
    }
}

/// `POST /admin/reset`.
pub(crate) async fn reset(State(mock): State<MockLlm>) -> Response {
    mock.reset_stats();
    Json(mock.report()).into_response()
}

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// `GET /metrics`, in simulate mode only: the simulator's metrics as vLLM's Prometheus text.
pub(crate) async fn metrics(State(mock): State<MockLlm>, method: Method, uri: Uri) -> Response {
    match mock.simulator() {
        Some(server) => (
            [(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))],
            server.metrics_text(),
        )
            .into_response(),
        None => not_found(method, uri).await,
    }
}

/// Unknown routes.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    error::openai(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        &format!("Unknown request URL: {method} {}.", uri.path()),
    )
}

/// Known routes, wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error::openai(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        &format!("Method {method} is not allowed on {}.", uri.path()),
    )
}
