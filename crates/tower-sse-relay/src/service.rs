//! [`SseRelay`], the service made by [`SseRelayLayer`](crate::SseRelayLayer).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_ai_core::key::RequestHead;
use tower_ai_core::reject::Refusal;
use tower_service::Service;
use tracing::Instrument;

use crate::body::SseRelayBody;
use crate::config::{InvalidResume, Shared};
use crate::error::BoxError;
use crate::future::{DirectSetup, HandoffSetup, ResponseFuture};
use crate::generate::{Generation, Handoff};
use crate::id::{ResumeFrom, StreamId};
use crate::relay::{LAST_EVENT_ID, PREFERENCE_APPLIED};
use crate::respond::refuse;
use crate::store::{MemoryStore, StreamStore};
use crate::streams::{Asked, Restart, asked, attach};
use crate::tap::TapState;

/// Relays the event streams of the inner service; see the
/// [crate docs](crate). Built by [`SseRelayLayer`](crate::SseRelayLayer).
pub struct SseRelay<S, St = MemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St> SseRelay<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St> Clone for SseRelay<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for SseRelay<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRelay")
            .field("inner", &self.inner)
            .field("resumable", &self.shared.config.resumable)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for SseRelay<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: StreamStore,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<SseRelayBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        // The relay reads the events, so it asks for them uncompressed.
        req.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if !self.shared.config.resumable {
            return self.call_direct(req, started);
        }
        let config = &self.shared.config;
        match asked(req.headers(), req.uri(), &config.stream_id_header) {
            Asked::Nothing => {}
            Asked::Point(from, Some(stream)) => {
                return self.reattach(req, stream, Asked::Point(from, Some(stream)), started);
            }
            Asked::Point(ResumeFrom::After(_), None) => {}
            Asked::Point(ResumeFrom::Earliest, None) | Asked::Malformed => {
                if config.invalid_resume == InvalidResume::Refuse {
                    metrics::counter!("tower_ai_sse_resumes_total", "outcome" => "malformed")
                        .increment(1);
                    return ResponseFuture::ready(refuse(
                        Refusal::bad_request()
                            .title("Malformed Last-Event-ID")
                            .detail("the Last-Event-ID is neither an event id sent by this relay nor `earliest` with the stream named in the stream id header"),
                    ));
                }
                req.headers_mut().remove(&LAST_EVENT_ID);
            }
        }
        if wants_async(req.headers()) && config.respond_async {
            return self.call_async(req, started);
        }
        match spawn_generation(&self.shared, &mut self.inner, req, started) {
            Ok((rx, setup)) => ResponseFuture::handoff(rx, setup),
            Err(req) => self.call_direct(req, started),
        }
    }
}

impl<S, St: StreamStore> SseRelay<S, St> {
    /// Direct mode: the inner call, its event stream relayed in the body.
    fn call_direct<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        started: Instant,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let setup = direct_setup(&self.shared, &req, started);
        ResponseFuture::direct(self.inner.call(req), setup)
    }

    /// A client naming a stored stream in `Last-Event-ID`: re-attached, or
    /// (when configured and the stream is not kept) started anew.
    fn reattach<ReqBody, ResBody>(
        &mut self,
        mut req: Request<ReqBody>,
        stream: StreamId,
        asked: Asked,
        started: Instant,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        let mut inner = take_ready(&mut self.inner);
        let shared = self.shared.clone();
        ResponseFuture::boxed(Box::pin(async move {
            match attach(&shared, stream, asked, started, true).await {
                Ok(res) => Ok(res),
                Err(Restart) => {
                    req.headers_mut().remove(&LAST_EVENT_ID);
                    match spawn_generation(&shared, &mut inner, req, started) {
                        Ok((rx, setup)) => match rx.await {
                            Ok(handoff) => setup.respond(handoff),
                            Err(_) => Ok(refuse(Refusal::bad_gateway())),
                        },
                        Err(req) => {
                            let setup = direct_setup(&shared, &req, started);
                            let res = inner.call(req).await?;
                            Ok(setup.wrap(res))
                        }
                    }
                }
            }
        }))
    }

    /// `Prefer: respond-async`: `202 Accepted` with the stream id once the
    /// stream exists; the generation runs on.
    fn call_async<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        started: Instant,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Upstream<ReqBody, ResBody>,
        ReqBody: Send + 'static,
        ResBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
    {
        let Some((generation, runtime)) = prepare(&self.shared, &req, started) else {
            return ResponseFuture::ready(refuse(
                Refusal::service_unavailable()
                    .detail("the relay can't start another stream now")
                    .retry_after(std::time::Duration::from_secs(1)),
            ));
        };
        let stream = generation.stream;
        let inner = take_ready(&mut self.inner);
        let (tx, rx) = oneshot::channel();
        let span = tracing::debug_span!("sse_generation", stream_id = %stream, mode = "async");
        runtime.spawn(generation.run_async(inner, req, tx).instrument(span));
        let config = self.shared.config.clone();
        ResponseFuture::boxed(Box::pin(async move {
            Ok(match rx.await {
                Ok(Ok(())) => accepted(&config.streams_path, &config.stream_id_header, stream),
                _ => refuse(
                    Refusal::service_unavailable()
                        .detail("the stream store could not take the stream")
                        .retry_after(std::time::Duration::from_secs(1)),
                ),
            })
        }))
    }
}

/// What the resumable paths need of the inner service: the instance polled
/// ready is moved, with its call, into a generation task, and a clone
/// stays behind.
trait Upstream<ReqBody, ResBody>:
    Service<
        Request<ReqBody>,
        Response = Response<ResBody>,
        Future: Send + 'static,
        Error: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, ReqBody, ResBody> Upstream<ReqBody, ResBody> for S
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
}

/// The instance that was polled ready, leaving a clone in its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// What a direct stream needs once its response arrives: with a tap, the
/// tap of the new stream and the stream id it was made for.
fn direct_setup<St, B>(shared: &Shared<St>, req: &Request<B>, started: Instant) -> DirectSetup {
    let (stream, tap) = make_tap(shared, req);
    DirectSetup {
        config: shared.config.clone(),
        counters: shared.counters.clone(),
        stream,
        tap,
        started,
    }
}

/// The tap of a new stream, with the stream id it was made for.
fn make_tap<St, B>(shared: &Shared<St>, req: &Request<B>) -> (Option<StreamId>, Option<TapState>) {
    let Some(make_tap) = shared.make_tap.as_ref() else {
        return (None, None);
    };
    let Ok(stream) = StreamId::random() else {
        return (None, None);
    };
    let tap = make_tap.make_tap(RequestHead::of(req), stream);
    (Some(stream), tap.map(TapState::new))
}

/// What a detached generation needs, or `None` when it can't start (no
/// runtime, no randomness, or too many running): the stream is then relayed
/// directly.
fn prepare<St, B>(
    shared: &Arc<Shared<St>>,
    req: &Request<B>,
    started: Instant,
) -> Option<(Generation<St>, tokio::runtime::Handle)> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let Ok(permit) = shared.generations.clone().try_acquire_owned() else {
        metrics::counter!("tower_ai_sse_generations_refused_total").increment(1);
        tracing::warn!("too many detached generations; relaying this stream directly");
        return None;
    };
    let stream = StreamId::random().ok()?;
    let tap = shared
        .make_tap
        .as_ref()
        .and_then(|m| m.make_tap(RequestHead::of(req), stream))
        .map(TapState::new);
    Some((
        Generation {
            shared: shared.clone(),
            stream,
            tap,
            started,
            permit,
        },
        runtime,
    ))
}

/// Starts a detached generation, or gives the request back (rather than
/// boxing it: this is the hot path, and the fallback is rare).
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn spawn_generation<S, St, ReqBody, ResBody>(
    shared: &Arc<Shared<St>>,
    inner: &mut S,
    req: Request<ReqBody>,
    started: Instant,
) -> Result<(oneshot::Receiver<Handoff<ResBody, S::Error>>, HandoffSetup), Request<ReqBody>>
where
    S: Upstream<ReqBody, ResBody>,
    St: StreamStore,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    let Some((generation, runtime)) = prepare(shared, &req, started) else {
        return Err(req);
    };
    let setup = HandoffSetup {
        config: shared.config.clone(),
        counters: shared.counters.clone(),
        stream: generation.stream,
        started,
    };
    // The instance that was polled ready goes to the task.
    let ready = take_ready(inner);
    let (tx, rx) = oneshot::channel();
    let span = tracing::debug_span!("sse_generation", stream_id = %generation.stream);
    runtime.spawn(generation.run(ready, req, tx).instrument(span));
    Ok((rx, setup))
}

/// Whether the request asks for an asynchronous answer (RFC 7240
/// `Prefer: respond-async`).
fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// `202 Accepted`: the stream exists and will be filled; read it at
/// `Location`.
fn accepted<B>(
    streams_path: &str,
    stream_header: &header::HeaderName,
    stream: StreamId,
) -> Response<SseRelayBody<B>> {
    let location = format!("{}/{stream}", streams_path.trim_end_matches('/'));
    let body = serde_json::json!({
        "id": stream.as_str(),
        "object": "stream",
        "url": location,
    });
    let mut res = Response::new(SseRelayBody::full(body.to_string()));
    *res.status_mut() = StatusCode::ACCEPTED;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        PREFERENCE_APPLIED.clone(),
        HeaderValue::from_static("respond-async"),
    );
    if let Ok(value) = HeaderValue::from_str(stream.as_str()) {
        headers.insert(stream_header.clone(), value);
    }
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prefer_respond_async() {
        let headers = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("prefer", HeaderValue::from_static(v));
            h
        };
        assert!(wants_async(&headers("respond-async")));
        assert!(wants_async(&headers("wait=10, Respond-Async")));
        assert!(wants_async(&headers("respond-async; x=1")));
        assert!(!wants_async(&headers("return=minimal")));
        assert!(!wants_async(&HeaderMap::new()));
    }
}
