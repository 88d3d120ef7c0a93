//! Refusals as responses, never as errors.
//!
//! A layer that turns a request away (429, 503, 413, …) answers with a
//! [`Refusal`] turned into a response, so the inner service's error type passes
//! through unchanged and the layer composes with axum, whose services must be
//! infallible. For HTTP callers the body is an RFC 9457
//! `application/problem+json` document; for gRPC callers
//! (`content-type: application/grpc*`) the refusal is a *trailers-only*
//! response: HTTP 200 with `grpc-status` and `grpc-message` in the headers and
//! no body, which every gRPC client reads as a status.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use http::{Request, StatusCode};
//! use tower_ai_core::reject::Refusal;
//!
//! let req = Request::new(());
//! let res = Refusal::too_many_requests()
//!     .detail("60 requests per minute")
//!     .retry_after(Duration::from_millis(1_200))
//!     .for_request::<http_body_util::Empty<bytes::Bytes>, _>(&req);
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "2");
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! let grpc = Request::builder().header("content-type", "application/grpc").body(()).unwrap();
//! let res = Refusal::too_many_requests().for_request::<http_body_util::Empty<bytes::Bytes>, _>(&grpc);
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use serde_json::{Map, Value};

use crate::body::{ReadError, ResponseBody};

/// The media type of an RFC 9457 problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Whether the request is a gRPC call (`content-type: application/grpc*`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC status code, as sent in `grpc-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// `CANCELLED` (1).
    Cancelled = 1,
    /// `UNKNOWN` (2).
    Unknown = 2,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument = 3,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded = 4,
    /// `NOT_FOUND` (5).
    NotFound = 5,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied = 7,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted = 8,
    /// `UNIMPLEMENTED` (12).
    Unimplemented = 12,
    /// `INTERNAL` (13).
    Internal = 13,
    /// `UNAVAILABLE` (14).
    Unavailable = 14,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The status a gRPC client should see for a refusal with this HTTP status.
    pub fn from_http(status: StatusCode) -> Self {
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => {
                Self::ResourceExhausted
            }
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Self::InvalidArgument,
            StatusCode::UNAUTHORIZED => Self::Unauthenticated,
            StatusCode::FORBIDDEN => Self::PermissionDenied,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::NOT_IMPLEMENTED => Self::Unimplemented,
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Self::DeadlineExceeded,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            s if s.is_server_error() => Self::Internal,
            _ => Self::Unknown,
        }
    }

    /// The numeric code.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A refusal: status, an RFC 9457 problem document and the headers that go
/// with it.
///
/// Built with the constructors for the common statuses and the `with`-style
/// setters, then turned into a response by [`Refusal::for_request`] (which
/// picks HTTP or gRPC from the request) or [`Refusal::into_http`] /
/// [`Refusal::into_grpc`]. Building one allocates a small JSON document; it is
/// meant for the refusal path, not for every request.
#[derive(Debug, Clone)]
#[must_use]
pub struct Refusal {
    status: StatusCode,
    problem_type: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<Cow<'static, str>>,
    retry_after: Option<Duration>,
    grpc_code: Option<GrpcCode>,
    headers: HeaderMap,
    members: Map<String, Value>,
}

impl Refusal {
    /// A refusal with the given status, titled with its canonical reason.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            problem_type: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Refused")),
            detail: None,
            retry_after: None,
            grpc_code: None,
            headers: HeaderMap::new(),
            members: Map::new(),
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request() -> Self {
        Self::new(StatusCode::BAD_REQUEST)
    }

    /// `401 Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED)
    }

    /// `413 Content Too Large`.
    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// `429 Too Many Requests`.
    pub fn too_many_requests() -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS)
    }

    /// `502 Bad Gateway`.
    pub fn bad_gateway() -> Self {
        Self::new(StatusCode::BAD_GATEWAY)
    }

    /// `503 Service Unavailable`.
    pub fn service_unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// `504 Gateway Timeout`.
    pub fn gateway_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem's `title`: a short summary that doesn't change between
    /// occurrences.
    pub fn title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = title.into();
        self
    }

    /// The problem's `detail`: what happened this time, for a human.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The problem's `type` URI (default `about:blank`).
    pub fn problem_type(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.problem_type = uri.into();
        self
    }

    /// Sends `Retry-After` in whole seconds, rounded up and never 0: a client
    /// told to come back in 0 seconds comes back at once and is refused again.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The gRPC status to send to gRPC callers, instead of the one derived
    /// from the HTTP status ([`GrpcCode::from_http`]).
    pub fn grpc_code(mut self, code: GrpcCode) -> Self {
        self.grpc_code = Some(code);
        self
    }

    /// Adds a header to the refusal (e.g. `X-RateLimit-Remaining`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Adds every header of `headers` to the refusal.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }

    /// Adds an extension member to the problem document (RFC 9457 §3.2).
    /// The standard members (`type`, `title`, `status`, `detail`) can't be
    /// overwritten this way.
    pub fn member(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        if !matches!(name.as_str(), "type" | "title" | "status" | "detail") {
            self.members.insert(name, value.into());
        }
        self
    }

    /// The `Retry-After` value in whole seconds (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(retry_after_secs)
    }

    /// The response for `req`: gRPC for gRPC calls, problem+json otherwise.
    pub fn for_request<B, R>(self, req: &Request<R>) -> Response<ResponseBody<B>> {
        if is_grpc(req.headers()) {
            self.into_grpc()
        } else {
            self.into_http()
        }
    }

    /// The problem document as JSON bytes.
    pub fn problem_json(&self) -> Bytes {
        let mut doc = Map::with_capacity(4 + self.members.len());
        doc.insert("type".into(), Value::from(self.problem_type.as_ref()));
        doc.insert("title".into(), Value::from(self.title.as_ref()));
        doc.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(detail) = &self.detail {
            doc.insert("detail".into(), Value::from(detail.as_ref()));
        }
        for (k, v) in &self.members {
            doc.insert(k.clone(), v.clone());
        }
        // Serialising a `Value` can't fail: every key is a string.
        Bytes::from(serde_json::to_vec(&Value::Object(doc)).unwrap_or_default())
    }

    /// An HTTP response with an `application/problem+json` body.
    pub fn into_http<B>(self) -> Response<ResponseBody<B>> {
        let body = self.problem_json();
        let mut res = Response::new(ResponseBody::full(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        self.finish_headers(headers);
        res
    }

    /// A trailers-only gRPC response: HTTP 200, `grpc-status` and
    /// `grpc-message` in the headers, no body.
    pub fn into_grpc<B>(self) -> Response<ResponseBody<B>> {
        let code = self
            .grpc_code
            .unwrap_or_else(|| GrpcCode::from_http(self.status));
        let message = self.detail.as_deref().unwrap_or(&self.title);
        let mut res = Response::new(ResponseBody::empty());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(u16::from(code.as_u8())));
        if let Ok(v) = HeaderValue::from_str(&percent_encode_grpc(message)) {
            headers.insert("grpc-message", v);
        }
        self.finish_headers(headers);
        res
    }

    fn finish_headers(self, headers: &mut HeaderMap) {
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.extend(self.headers);
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// The refusal for a request body [`read_limited`](crate::body::read_limited)
/// could not read: `413` with "the request body is larger than {limit} bytes"
/// when it is too large, `400` with "the request body could not be read: …"
/// when it failed.
impl From<ReadError> for Refusal {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooLarge { limit } => Self::payload_too_large()
                .detail(format!("the request body is larger than {limit} bytes")),
            ReadError::Failed(e) => {
                Self::bad_request().detail(format!("the request body could not be read: {e}"))
            }
        }
    }
}

/// Whole seconds for `Retry-After`: rounded up, and at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol asks: bytes
/// outside printable ASCII, and `%` itself.
fn percent_encode_grpc(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Empty = http_body_util::Empty<Bytes>;

    #[tokio::test]
    async fn http_refusal_is_problem_json() {
        let res: Response<ResponseBody<Empty>> = Refusal::too_many_requests()
            .detail("slow down")
            .member("limit", 5)
            .member("status", 200)
            .header(
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(0),
            )
            .retry_after(Duration::from_secs(3))
            .into_http();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(res.headers()[RETRY_AFTER], "3");
        assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        let doc: Value = serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["title"], "Too Many Requests");
        assert_eq!(doc["status"], 429);
        assert_eq!(doc["detail"], "slow down");
        assert_eq!(doc["limit"], 5);
    }

    #[test]
    fn grpc_refusal_is_trailers_only() {
        let req = Request::builder()
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .unwrap_or_default();
        let res: Response<ResponseBody<Empty>> = Refusal::service_unavailable()
            .detail("circuit open: 100% käput")
            .for_request(&req);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "14");
        assert_eq!(
            res.headers()["grpc-message"],
            "circuit open: 100%25 k%C3%A4put"
        );
        assert!(http_body::Body::is_end_stream(res.body()));
    }

    #[test]
    fn read_errors_refuse_with_413_or_400() {
        let too_large = Refusal::from(ReadError::TooLarge { limit: 8 });
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            too_large.to_string(),
            "413 Payload Too Large: the request body is larger than 8 bytes"
        );
        let failed = Refusal::from(ReadError::Failed("reset".into()));
        assert_eq!(failed.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            failed.to_string(),
            "400 Bad Request: the request body could not be read: reset"
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn grpc_codes_follow_http_statuses() {
        assert_eq!(
            GrpcCode::from_http(StatusCode::TOO_MANY_REQUESTS),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(
            GrpcCode::from_http(StatusCode::SERVICE_UNAVAILABLE),
            GrpcCode::Unavailable
        );
        assert_eq!(
            GrpcCode::from_http(StatusCode::INTERNAL_SERVER_ERROR),
            GrpcCode::Internal
        );
    }
}
