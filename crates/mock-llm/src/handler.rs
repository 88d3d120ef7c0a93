//! The route handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, Uri};

use crate::answer::ChatRequest;
use crate::fault::Fault;
use crate::stats::{Counters, InFlight};
use crate::wire::{self, Choice, Completion, Message, Usage};
use crate::{Inner, MockLlm, shutdown_requested, stream};

/// The largest completion request body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(mock): State<MockLlm>, body: Body) -> Response {
    let inner = Arc::clone(&mock.inner);
    Counters::bump(&inner.stats.requests);
    let in_flight = InFlight::new(Arc::clone(&inner));

    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            Counters::bump(&inner.stats.invalid);
            return wire::invalid_request(&format!("Could not read the request body: {error}"));
        }
    };
    let fault = mock.fault();
    if fault.latency_ms > 0 && !sleep(&inner, fault.latency()).await {
        return shutting_down();
    }
    let request = match ChatRequest::from_slice(&bytes) {
        Ok(request) => request,
        Err(message) => {
            Counters::bump(&inner.stats.invalid);
            tracing::debug!(%message, "mock-llm: invalid request");
            return wire::invalid_request(&message);
        }
    };
    if mock.fault_state().should_fail() {
        Counters::bump(&inner.stats.failed);
        tracing::debug!("mock-llm: injected failure");
        return wire::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "The server had an error while processing your request (mock-llm fault: fail_rate).",
        );
    }
    tracing::debug!(
        model = %request.model,
        stream = request.stream,
        tokens = request.completion_tokens(),
        "mock-llm: completion"
    );
    if request.stream {
        return stream::respond(&request, fault, inner.config.token_delay, in_flight);
    }

    if !sleep(&inner, inner.config.token_delay).await {
        return shutting_down();
    }
    let id = request.id();
    let content = request.content();
    let completion_tokens = request.completion_tokens();
    let completion = Completion {
        id: &id,
        object: "chat.completion",
        created: crate::unix_now(),
        model: &request.model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &content,
            },
            finish_reason: request.finish_reason,
        }],
        usage: Usage::new(request.prompt_tokens, completion_tokens),
    };
    let response = Json(completion).into_response();
    Counters::bump(&inner.stats.completions);
    inner
        .stats
        .tokens_sent
        .fetch_add(completion_tokens, std::sync::atomic::Ordering::Relaxed);
    drop(in_flight);
    response
}

/// Sleeps for `duration`; `false` if the mock was shut down meanwhile.
async fn sleep(inner: &Inner, duration: Duration) -> bool {
    if duration.is_zero() {
        return true;
    }
    let mut shutdown = inner.shutdown.subscribe();
    tokio::select! {
        biased;
        () = shutdown_requested(&mut shutdown) => false,
        () = tokio::time::sleep(duration) => true,
    }
}

fn shutting_down() -> Response {
    wire::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        None,
        "mock-llm is shutting down.",
    )
}

/// `GET /admin/stats`.
pub(crate) async fn stats(State(mock): State<MockLlm>) -> Response {
    Json(mock.stats()).into_response()
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
        Err(message) => wire::invalid_request(&message),
    }
}

/// `POST /admin/reset`.
pub(crate) async fn reset(State(mock): State<MockLlm>) -> Response {
    mock.reset_stats();
    Json(mock.stats()).into_response()
}

/// Unknown routes.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    wire::error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        &format!("Unknown request URL: {method} {}.", uri.path()),
    )
}

/// Known routes, wrong method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    wire::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        &format!("Method {method} is not allowed on {}.", uri.path()),
    )
}
