//! The responses the relay builds, shared by the service, its response
//! future, the generation's handover and the streams endpoint: a stream
//! relayed directly, a stored stream read by a client, a response passed
//! through, a refusal.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::reject::Refusal;

use crate::body::{AttachedBody, DirectBody, DrainFn, SseRelayBody, spawn_drain};
use crate::config::Config;
use crate::error::BoxError;
use crate::id::StreamId;
use crate::relay::{Counters, Heartbeat, LAST_EVENT_ID, Mode, Relayer, stream_headers};
use crate::store::Subscription;
use crate::tap::TapState;

/// Wraps `res` for a direct stream: the relay's stream headers, and a body
/// that relays the upstream's events as they come.
pub(crate) fn direct_response<B>(
    config: Arc<Config>,
    counters: Arc<Counters>,
    stream: StreamId,
    tap: Option<TapState>,
    started: Instant,
    res: Response<B>,
) -> Response<SseRelayBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    stream_headers(
        &mut parts.headers,
        stream,
        &config.stream_id_header,
        config.identity_encoding,
    );
    let drain = config
        .drain_usage
        .filter(|_| tap.is_some())
        .map(|limit| (spawn_drain::<B> as DrainFn<B>, limit));
    let body = DirectBody::new(
        body,
        Heartbeat::new(config.heartbeat, config.heartbeat_frame.clone()),
        Relayer::new(stream, config.max_event_size, tap),
        Mode::Direct.clock(started),
        counters,
        drain,
    );
    Response::from_parts(parts, SseRelayBody::direct(body))
}

/// A `200` event stream reading `subscription`, or `204` when it has
/// nothing to send.
pub(crate) fn attached_response<B>(
    config: &Config,
    counters: &Arc<Counters>,
    stream: StreamId,
    subscription: Subscription,
    resumed_after: Option<&str>,
    started: Instant,
) -> Response<SseRelayBody<B>> {
    let mut res = if subscription.is_finished() {
        let mut res = Response::new(SseRelayBody::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        if let Ok(value) = HeaderValue::from_str(stream.as_str()) {
            res.headers_mut()
                .insert(config.stream_id_header.clone(), value);
        }
        res
    } else {
        let body = AttachedBody::new(
            subscription,
            Heartbeat::new(config.heartbeat, config.heartbeat_frame.clone()),
            Mode::Reader.clock(started),
            counters.clone(),
        );
        let mut res = Response::new(SseRelayBody::attached(body));
        stream_headers(
            res.headers_mut(),
            stream,
            &config.stream_id_header,
            config.identity_encoding,
        );
        res
    };
    if let Some(value) = resumed_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        res.headers_mut().insert(LAST_EVENT_ID.clone(), value);
    }
    res
}

/// Passes a non-event-stream response through unchanged.
pub(crate) fn passthrough<B>(res: Response<B>) -> Response<SseRelayBody<B>> {
    res.map(|body| SseRelayBody::inner(ResponseBody::inner(body)))
}

/// A refusal, as the relay's response.
pub(crate) fn refuse<B>(refusal: Refusal) -> Response<SseRelayBody<B>> {
    refusal.into_http().map(SseRelayBody::inner)
}
