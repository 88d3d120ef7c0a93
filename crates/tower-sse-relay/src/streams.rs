//! Re-attaching to stored streams: the `Last-Event-ID` rules, and
//! [`StreamsService`], the `GET /v1/streams/{id}` endpoint.
//!
//! A client names where to resume with the `Last-Event-ID` header (what
//! `EventSource` sends when it reconnects) or the `lastEventID` query
//! parameter (for a browser's first connection, which can't set headers):
//! an event id the relay sent, or `earliest` for everything still kept.
//! Without either, the endpoint sends everything kept.
//!
//! The answer, like a Mercure hub's, states in a `Last-Event-ID` response
//! header the point it resumes after (`earliest` when it starts from the
//! beginning), so a client can tell whether anything was lost. A finished
//! stream with nothing after that point gets `204 No Content`, which tells an
//! `EventSource` to stop reconnecting. A malformed, unknown or expired id
//! gets a `4xx` `application/problem+json` answer (or a restart, see
//! [`InvalidResume`]); never a hang.
//!
//! # Example
//! ```
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//! use tower_sse_relay::SseRelayLayer;
//! use tower_sse_relay::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SseRelayLayer::builder().resumable(MemoryStore::new()).build()?;
//! let streams = layer.streams();
//!
//! let res = streams
//!     .clone()
//!     .oneshot(Request::get("/v1/streams/AAAAAAAAAAAAAAAAAAAAAA").body(())?)
//!     .await?;
//! assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! let res = streams
//!     .oneshot(
//!         Request::get("/v1/streams/AAAAAAAAAAAAAAAAAAAAAA")
//!             .header("last-event-id", "not an id")
//!             .body(())?,
//!     )
//!     .await?;
//! assert_eq!(res.status(), StatusCode::BAD_REQUEST);
//! # Ok(()) }
//! ```
//!
//! [`InvalidResume`]: crate::InvalidResume

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use tokio::time::Instant;
use tower_ai_core::reject::Refusal;
use tower_service::Service;

use crate::body::SseRelayBody;
use crate::config::{InvalidResume, Shared};
use crate::id::{ResumeFrom, StreamId};
use crate::relay::LAST_EVENT_ID;
use crate::respond::{attached_response, refuse};
use crate::store::{ResumeError, StreamStore};

/// What a request says about resuming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Nothing: a new stream (through the layer), everything kept (on the
    /// endpoint).
    Nothing,
    /// A point to resume from; `earliest` comes with the stream it names,
    /// when the request named one.
    Point(ResumeFrom, Option<StreamId>),
    /// A value that is not an id the relay makes.
    Malformed,
}

/// Reads `Last-Event-ID` (or `lastEventID` in the query) and, for
/// `earliest`, the stream named in `stream_header`.
pub(crate) fn asked(headers: &HeaderMap, uri: &Uri, stream_header: &HeaderName) -> Asked {
    let value = match headers.get(&LAST_EVENT_ID) {
        Some(value) => match value.to_str() {
            Ok(value) => value,
            Err(_) => return Asked::Malformed,
        },
        None => match query_param(uri, "lastEventID") {
            Some(value) => value,
            None => return Asked::Nothing,
        },
    };
    match ResumeFrom::parse(value) {
        Ok(from @ ResumeFrom::After(id)) => Asked::Point(from, Some(id.stream())),
        Ok(ResumeFrom::Earliest) => {
            let stream = headers
                .get(stream_header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| StreamId::parse(v.trim()).ok());
            Asked::Point(ResumeFrom::Earliest, stream)
        }
        Err(_) => Asked::Malformed,
    }
}

/// The raw value of query parameter `name` (the relay's ids and `earliest`
/// need no percent-decoding).
fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// The stream named by the last segment of the path.
fn path_stream(uri: &Uri) -> Option<StreamId> {
    let segment = uri.path().trim_end_matches('/').rsplit('/').next()?;
    StreamId::parse(segment).ok()
}

/// Why a re-attach through the layer should start a new generation instead.
pub(crate) struct Restart;

/// Answers a client re-attaching to `stream` from the point it `asked`.
///
/// `Err(Restart)` (only when `may_restart`) asks the caller to start a new
/// generation: the stream is not kept and the layer is configured to start
/// over.
pub(crate) async fn attach<St: StreamStore, B>(
    shared: &Shared<St>,
    stream: StreamId,
    asked: Asked,
    started: Instant,
    may_restart: bool,
) -> Result<Response<SseRelayBody<B>>, Restart> {
    let restart = shared.config.invalid_resume == InvalidResume::Restart;
    let (from, label) = match asked {
        Asked::Nothing => (ResumeFrom::Earliest, None),
        Asked::Point(ResumeFrom::After(id), _) if id.stream() != stream => {
            if !restart {
                resume_metric("mismatch");
                return Ok(refuse(
                    Refusal::bad_request()
                        .title("Last-Event-ID of another stream")
                        .detail("the Last-Event-ID names an event of another stream than the one requested"),
                ));
            }
            (ResumeFrom::Earliest, None)
        }
        Asked::Point(from, _) => (from, Some(from)),
        Asked::Malformed => {
            if !restart {
                resume_metric("malformed");
                return Ok(refuse(
                    Refusal::bad_request()
                        .title("Malformed Last-Event-ID")
                        .detail("the Last-Event-ID is neither an event id sent by this relay nor `earliest`"),
                ));
            }
            (ResumeFrom::Earliest, None)
        }
    };
    let mut result = shared.store.subscribe(&stream, from).await;
    let mut label = label;
    if restart
        && matches!(
            result,
            Err(ResumeError::UnknownEvent | ResumeError::Expired)
        )
    {
        resume_metric("restarted");
        label = None;
        result = shared.store.subscribe(&stream, ResumeFrom::Earliest).await;
    }
    let subscription = match result {
        Ok(subscription) => subscription,
        Err(ResumeError::UnknownStream) if may_restart && restart => return Err(Restart),
        Err(error) => return Ok(refuse_resume(&error)),
    };
    resume_metric(if subscription.is_finished() {
        "finished"
    } else {
        "ok"
    });
    let shown = label.map_or_else(|| "earliest".to_owned(), |from| from.to_string());
    tracing::debug!(stream_id = %stream, after = %shown, "re-attached to a stream");
    Ok(attached_response(
        &shared.config,
        &shared.counters,
        stream,
        subscription,
        Some(&shown),
        started,
    ))
}

fn refuse_resume<B>(error: &ResumeError) -> Response<SseRelayBody<B>> {
    let (outcome, refusal) = match error {
        ResumeError::UnknownStream => (
            "unknown_stream",
            Refusal::new(StatusCode::NOT_FOUND).title("Unknown stream"),
        ),
        ResumeError::UnknownEvent => (
            "unknown_event",
            Refusal::new(StatusCode::NOT_FOUND).title("Unknown Last-Event-ID"),
        ),
        ResumeError::Expired => (
            "expired",
            Refusal::new(StatusCode::GONE).title("Last-Event-ID expired"),
        ),
        ResumeError::Unavailable(_) => (
            "unavailable",
            Refusal::service_unavailable()
                .title("Stream store unavailable")
                .retry_after(std::time::Duration::from_secs(1)),
        ),
    };
    resume_metric(outcome);
    refuse(refusal.detail(error.to_string()))
}

fn resume_metric(outcome: &'static str) {
    metrics::counter!("tower_ai_sse_resumes_total", "outcome" => outcome).increment(1);
}

/// The body type of [`StreamsService`]'s responses.
pub type StreamBody = SseRelayBody<Empty<Bytes>>;

/// The endpoint that re-attaches clients to stored streams:
/// `GET {streams path}/{stream id}`, made by
/// [`SseRelayLayer::streams`](crate::SseRelayLayer::streams).
///
/// The stream id is the last segment of the path, so the service can be
/// mounted at any route whose last segment is the id (with axum:
/// `.route_service("/v1/streams/{id}", layer.streams())`). See the
/// [module docs](self) for the resume rules. Other methods than `GET` and
/// `HEAD` get `405`; a path that ends in no valid stream id gets `404`.
pub struct StreamsService<St> {
    shared: Arc<Shared<St>>,
}

impl<St> StreamsService<St> {
    pub(crate) fn new(shared: Arc<Shared<St>>) -> Self {
        Self { shared }
    }
}

impl<St> Clone for StreamsService<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St> fmt::Debug for StreamsService<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamsService")
            .field("path", &self.shared.config.streams_path)
            .finish_non_exhaustive()
    }
}

impl<St, ReqBody> Service<Request<ReqBody>> for StreamsService<St>
where
    St: StreamStore,
{
    type Response = Response<StreamBody>;
    type Error = Infallible;
    type Future = StreamsFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return StreamsFuture::ready(refuse(
                Refusal::new(StatusCode::METHOD_NOT_ALLOWED)
                    .header(header::ALLOW, HeaderValue::from_static("GET, HEAD")),
            ));
        }
        let Some(stream) = path_stream(req.uri()) else {
            resume_metric("unknown_stream");
            return StreamsFuture::ready(refuse(
                Refusal::new(StatusCode::NOT_FOUND)
                    .title("Unknown stream")
                    .detail("the path does not end with a stream id made by this relay"),
            ));
        };
        let asked = asked(
            req.headers(),
            req.uri(),
            &self.shared.config.stream_id_header,
        );
        let shared = self.shared.clone();
        StreamsFuture {
            kind: StreamsKind::Attach(Box::pin(async move {
                match attach(&shared, stream, asked, started, false).await {
                    Ok(res) => res,
                    // Not asked for (`may_restart` is false).
                    Err(Restart) => refuse_resume(&ResumeError::UnknownStream),
                }
            })),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`StreamsService`].
    pub struct StreamsFuture {
        kind: StreamsKind,
    }
}

enum StreamsKind {
    Ready(Option<Response<StreamBody>>),
    Attach(Pin<Box<dyn Future<Output = Response<StreamBody>> + Send>>),
}

impl StreamsFuture {
    fn ready(res: Response<StreamBody>) -> Self {
        Self {
            kind: StreamsKind::Ready(Some(res)),
        }
    }
}

impl Future for StreamsFuture {
    type Output = Result<Response<StreamBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind {
            StreamsKind::Ready(res) => Poll::Ready(Ok(res
                .take()
                .unwrap_or_else(|| refuse(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR))))),
            StreamsKind::Attach(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

impl fmt::Debug for StreamsFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamsFuture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "AAAAAAAAAAAAAAAAAAAAAA";

    fn asked_of(req: &Request<()>) -> Asked {
        asked(
            req.headers(),
            req.uri(),
            &HeaderName::from_static("x-stream-id"),
        )
    }

    #[test]
    fn reads_the_resume_point() {
        let stream = StreamId::parse(STREAM).ok();
        let req = Request::get("/s").body(()).unwrap_or_default();
        assert_eq!(asked_of(&req), Asked::Nothing);

        let req = Request::get(format!("/s?x=1&lastEventID={STREAM}-3"))
            .body(())
            .unwrap_or_default();
        assert!(
            matches!(asked_of(&req), Asked::Point(ResumeFrom::After(id), s) if id.seq() == 3 && s == stream)
        );

        // The header wins over the query.
        let req = Request::get(format!("/s?lastEventID={STREAM}-3"))
            .header("last-event-id", "earliest")
            .header("x-stream-id", STREAM)
            .body(())
            .unwrap_or_default();
        assert_eq!(asked_of(&req), Asked::Point(ResumeFrom::Earliest, stream));

        let req = Request::get("/s?lastEventID=42")
            .body(())
            .unwrap_or_default();
        assert_eq!(asked_of(&req), Asked::Malformed);
        let req = Request::get("/s")
            .header(
                "last-event-id",
                HeaderValue::from_bytes(b"\xff").unwrap_or(HeaderValue::from_static("x")),
            )
            .body(())
            .unwrap_or_default();
        assert_eq!(asked_of(&req), Asked::Malformed);
    }

    #[test]
    fn the_stream_is_the_last_path_segment() {
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_default();
        assert_eq!(
            path_stream(&uri(&format!("/v1/streams/{STREAM}"))),
            StreamId::parse(STREAM).ok()
        );
        assert_eq!(
            path_stream(&uri(&format!("/v1/streams/{STREAM}/?a=b"))),
            StreamId::parse(STREAM).ok()
        );
        assert_eq!(path_stream(&uri("/v1/streams/")), None);
        assert_eq!(path_stream(&uri("/v1/streams/%7Bx%7D")), None);
    }
}
