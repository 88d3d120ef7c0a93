//! Resumable mode's generation task: it calls the upstream, appends each
//! event to the store, and runs to the end of the stream (or the configured
//! limit) whether or not a client is reading.
//!
//! Until the client's response head is handed over, the client does not know
//! the stream id and could never re-attach, so a client that goes away before
//! then cancels the call; from the handover on, the generation is its own.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tower_ai_core::sse::Event;
use tower_service::Service;

use crate::body::{SseRelayBody, end_direct, finish};
use crate::config::{Config, Shared};
use crate::error::BoxError;
use crate::id::{ResumeFrom, StreamId};
use crate::relay::{Counters, Mode, Relayer, StreamClock, is_event_stream};
use crate::respond::{attached_response, direct_response, passthrough};
use crate::store::{Outcome, StoreError, StoredEvent, StreamStore, Subscription};
use crate::tap::{EndReason, TapState};

/// The most bytes of a non-stream upstream answer kept as the in-band error
/// event of an async stream.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What the generation task hands to the client's response future.
pub(crate) enum Handoff<B, E> {
    /// The stream is stored: the response head, and the client's
    /// subscription from the first event.
    Attached(http::response::Parts, Subscription),
    /// The store could not take the stream: relay it directly instead.
    Direct(Response<B>, Option<TapState>),
    /// Not an event stream (or an error): passed through as it is.
    Passthrough(Result<Response<B>, E>),
}

/// One generation's state, moved into its task.
pub(crate) struct Generation<St> {
    pub(crate) shared: Arc<Shared<St>>,
    pub(crate) stream: StreamId,
    pub(crate) tap: Option<TapState>,
    pub(crate) started: Instant,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Counts a generation as active while it lives.
struct Active(Arc<Counters>);

impl Active {
    fn new(counters: Arc<Counters>) -> Self {
        counters.generations_active.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("tower_ai_sse_generations_active").increment(1.0);
        Self(counters)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.generations_active.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("tower_ai_sse_generations_active").decrement(1.0);
    }
}

impl<St: StreamStore> Generation<St> {
    /// Calls the upstream and hands the response to the client (`handoff`);
    /// an event stream is then stored to its end.
    pub(crate) async fn run<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
        mut handoff: oneshot::Sender<Handoff<ResBody, S::Error>>,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<BoxError>,
    {
        let _active = Active::new(self.shared.counters.clone());
        let call = inner.call(req);
        let mut call = pin!(call);
        // A client gone before the handover can't know the stream id: cancel.
        let res = poll_fn(|cx| {
            if let Poll::Ready(res) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(res));
            }
            handoff.poll_closed(cx).map(|()| None)
        })
        .await;
        let Some(res) = res else {
            return;
        };
        let res = match res {
            Ok(res) if is_event_stream(&res) => res,
            other => {
                let _ = handoff.send(Handoff::Passthrough(other));
                return;
            }
        };
        let store = &self.shared.store;
        let stored = match store.create(&self.stream).await {
            Ok(()) => match store.subscribe(&self.stream, ResumeFrom::Earliest).await {
                Ok(subscription) => Some(subscription),
                Err(error) => {
                    store_error("subscribe", &StoreError::Unavailable(error.to_string()));
                    let _ = store.finish(&self.stream, 0, Outcome::Failed).await;
                    None
                }
            },
            Err(error) => {
                store_error("create", &error);
                None
            }
        };
        let Some(subscription) = stored else {
            let _ = handoff.send(Handoff::Direct(res, self.tap));
            return;
        };
        let (parts, body) = res.into_parts();
        // A client gone by now has the stream id no more than before, but
        // the upstream is already answering: let it finish, it is kept.
        let _ = handoff.send(Handoff::Attached(parts, subscription));
        self.store_stream(body).await;
    }

    /// Async mode: the stream is created before the client's `202`, then
    /// the upstream is called and whatever it answers is stored.
    pub(crate) async fn run_async<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
        created: oneshot::Sender<Result<(), StoreError>>,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<BoxError>,
    {
        let _active = Active::new(self.shared.counters.clone());
        if let Err(error) = self.shared.store.create(&self.stream).await {
            store_error("create", &error);
            let _ = created.send(Err(error));
            return;
        }
        let _ = created.send(Ok(()));
        match inner.call(req).await {
            Ok(res) if is_event_stream(&res) => self.store_stream(res.into_body()).await,
            Ok(res) => {
                let status = res.status();
                let body = Limited::new(res.into_body(), MAX_ERROR_BODY)
                    .collect()
                    .await
                    .ok()
                    .map(|b| b.to_bytes())
                    .filter(|b| serde_json::from_slice::<serde_json::Value>(b).is_ok());
                let data = match body {
                    Some(json) => String::from_utf8_lossy(&json).into_owned(),
                    None => serde_json::json!({ "error": {
                        "message": format!("the upstream answered {status} instead of an event stream"),
                        "type": "upstream_error",
                        "status": status.as_u16(),
                    }})
                    .to_string(),
                };
                self.store_single(&data).await;
            }
            Err(_) => {
                let data = serde_json::json!({ "error": {
                    "message": "the upstream request failed",
                    "type": "upstream_error",
                }});
                self.store_single(&data.to_string()).await;
            }
        }
    }

    /// Stores a stream of one in-band error event, for an upstream that did
    /// not answer with an event stream.
    async fn store_single(self, data: &str) {
        let mut relayer = Relayer::new(self.stream, usize::MAX, self.tap);
        let events: Vec<_> = relayer
            .event_frame(Event::new().with_data(data))
            .into_iter()
            .collect();
        let clock = Mode::Resumable.clock(self.started);
        let store = &self.shared.store;
        let events: Vec<StoredEvent> = events
            .into_iter()
            .map(|(seq, frame)| StoredEvent { seq, frame })
            .collect();
        if let Err(error) = store.append(&self.stream, &events).await {
            store_error("append", &error);
        }
        if let Err(error) = store
            .finish(&self.stream, relayer.seq(), Outcome::Failed)
            .await
        {
            store_error("finish", &error);
        }
        end_direct(relayer, &clock, EndReason::Failed);
        drop(self.permit);
    }

    /// Reads the upstream `body` to its end (or the time limit), appending
    /// each batch of events to the store as it arrives.
    async fn store_stream<B>(self, body: B)
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let Self {
            shared,
            stream,
            tap,
            started,
            permit,
        } = self;
        let config = &shared.config;
        let store = &shared.store;
        let mut clock = StreamClock::new(Mode::Resumable, started);
        let mut relayer = Relayer::new(stream, config.max_event_size, tap);
        let mut batch: Vec<StoredEvent> = Vec::new();
        let mut failed = false;
        let limit = tokio::time::sleep_until(started + config.max_duration);
        let mut limit = pin!(limit);
        // The body lives in this block: leaving it drops the body, which
        // cancels an upstream cut at the limit before the end is stored.
        let reason = {
            let mut body = pin!(body);
            loop {
                let frame = poll_fn(|cx| {
                    if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                        return Poll::Ready(Some(frame.map(|f| f.map_err(Into::into))));
                    }
                    limit.as_mut().poll(cx).map(|()| None)
                })
                .await;
                let reason = match frame {
                    None => Some(EndReason::Truncated),
                    Some(None) => Some(EndReason::Completed),
                    Some(Some(Err(error))) => {
                        tracing::warn!(stream_id = %stream, error = %error, "the upstream stream broke");
                        Some(EndReason::Failed)
                    }
                    Some(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            relayer.push(data);
                        }
                        while let Some((seq, frame)) = relayer.next_frame() {
                            batch.push(StoredEvent { seq, frame });
                        }
                        body.is_end_stream().then_some(EndReason::Completed)
                    }
                };
                if !batch.is_empty() {
                    clock.event();
                    append(store, &stream, &batch, &shared.counters, &mut failed).await;
                    batch.clear();
                }
                if let Some(reason) = reason {
                    break reason;
                }
            }
        };
        for (seq, frame) in finish(&mut relayer, reason) {
            batch.push(StoredEvent { seq, frame });
        }
        if !batch.is_empty() {
            clock.event();
            append(store, &stream, &batch, &shared.counters, &mut failed).await;
        }
        let outcome = match reason {
            EndReason::Completed | EndReason::ClientGone => Outcome::Completed,
            EndReason::Failed => Outcome::Failed,
            EndReason::Truncated => Outcome::Truncated,
        };
        if let Err(error) = store.finish(&stream, relayer.seq(), outcome).await {
            store_error("finish", &error);
        }
        end_direct(relayer, &clock, reason);
        drop(permit);
    }
}

async fn append<St: StreamStore>(
    store: &St,
    stream: &StreamId,
    batch: &[StoredEvent],
    counters: &Counters,
    failed: &mut bool,
) {
    counters
        .events
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if let Err(error) = store.append(stream, batch).await
        && !std::mem::replace(failed, true)
    {
        // Once per stream: the generation goes on for the tap's sake.
        store_error("append", &error);
    }
}

fn store_error(op: &'static str, error: &StoreError) {
    metrics::counter!("tower_ai_sse_store_errors_total", "op" => op).increment(1);
    tracing::warn!(op, error = %error, "the stream store failed");
}

/// Turns a handoff into the client's response.
pub(crate) fn respond<B, E>(
    config: &Arc<Config>,
    counters: &Arc<Counters>,
    stream: StreamId,
    started: Instant,
    handoff: Handoff<B, E>,
) -> Result<Response<SseRelayBody<B>>, E>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match handoff {
        Handoff::Attached(mut parts, subscription) => {
            let res = attached_response(config, counters, stream, subscription, None, started);
            // The upstream's head, with the relay's stream headers on top.
            let (head, body) = res.into_parts();
            parts.headers.remove(http::header::CONTENT_LENGTH);
            for (name, value) in &head.headers {
                parts.headers.insert(name.clone(), value.clone());
            }
            parts.status = head.status;
            Ok(Response::from_parts(parts, body))
        }
        Handoff::Direct(res, tap) => Ok(direct_response(
            config.clone(),
            counters.clone(),
            stream,
            tap,
            started,
            res,
        )),
        Handoff::Passthrough(res) => res.map(passthrough),
    }
}
