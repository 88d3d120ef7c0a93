//! Error responses, in the shape of the API a route imitates.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// Whose error shape a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error":{"message","type","param":null,"code":null}}`.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
}

impl Dialect {
    /// `400`: the request is malformed.
    pub(crate) fn invalid_request(self, message: &str) -> Response {
        self.error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// `500`: the [`Fault::fail_rate`](crate::Fault::fail_rate) draw failed this request.
    pub(crate) fn injected_failure(self) -> Response {
        let kind = match self {
            Self::OpenAi => "server_error",
            Self::Anthropic => "api_error",
        };
        self.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            kind,
            "The server had an error while processing your request (mock-llm fault: fail_rate).",
        )
    }

    /// `503`: the mock was shut down while the request waited.
    pub(crate) fn shutting_down(self) -> Response {
        let kind = match self {
            Self::OpenAi => "server_error",
            Self::Anthropic => "api_error",
        };
        self.error(
            StatusCode::SERVICE_UNAVAILABLE,
            kind,
            "mock-llm is shutting down.",
        )
    }

    /// An error of this dialect with `kind` as its `type`.
    pub(crate) fn error(self, status: StatusCode, kind: &str, message: &str) -> Response {
        match self {
            Self::OpenAi => openai(status, kind, None, message),
            Self::Anthropic => {
                let body = AnthropicError {
                    kind: "error",
                    error: AnthropicErrorDetail { kind, message },
                };
                (status, Json(body)).into_response()
            }
        }
    }
}

/// An OpenAI-style error response.
pub(crate) fn openai(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Response {
    let body = OpenAiError {
        error: OpenAiErrorDetail {
            message,
            kind,
            param: None,
            code,
        },
    };
    (status, Json(body)).into_response()
}

#[derive(Debug, Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct OpenAiErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// Anthropic's error body; also the data of its in-band `event: error`.
#[derive(Debug, Serialize)]
pub(crate) struct AnthropicError<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) error: AnthropicErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AnthropicErrorDetail<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'a str,
    pub(crate) message: &'a str,
}
