//! The gateway's refusals: problem+json documents that also carry an
//! OpenAI-style `error` member, so OpenAI SDKs show their message.

use axum::body::Body;
use axum::response::Response;
use serde_json::json;
use tower_ai_core::reject::Refusal;

use crate::upstream::UpstreamError;

/// A refusal with an OpenAI-style `error` of this type (and code).
pub(crate) fn openai_error(
    refusal: Refusal,
    error_type: &str,
    code: Option<&str>,
    message: &str,
) -> Response {
    refusal
        .detail(message.to_owned())
        .member(
            "error",
            json!({ "message": message, "type": error_type, "param": null, "code": code }),
        )
        .into_http::<Body>()
        .map(Body::new)
}

/// A refusal with an OpenAI-style `error` of this type.
pub(crate) fn problem(refusal: Refusal, error_type: &str, message: &str) -> Response {
    openai_error(refusal, error_type, None, message)
}

/// `400` with an `invalid_request_error`.
pub(crate) fn bad_request(message: &str) -> Response {
    problem(Refusal::bad_request(), "invalid_request_error", message)
}

/// The upstream gave no answer: `504` when it was too slow, else `502`,
/// naming the cause.
pub(crate) fn upstream_failed(e: &UpstreamError) -> Response {
    tracing::warn!(error = %e, "upstream request failed");
    let refusal = match e {
        UpstreamError::Timeout => Refusal::gateway_timeout(),
        _ => Refusal::bad_gateway(),
    };
    problem(refusal, "upstream_error", &e.to_string())
}
