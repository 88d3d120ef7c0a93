//! The relay's runtime settings and the state every service of one layer
//! shares: read by the layer, its services, the response future, the
//! generation task and the streams endpoint; it imports none of them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use tokio::sync::Semaphore;

use crate::relay::Counters;
use crate::tap::MakeTap;

/// What a malformed, unknown or expired `Last-Event-ID` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InvalidResume {
    /// A clear `4xx` with an `application/problem+json` body (the default):
    /// `400` for a malformed id (or one of another stream), `404` for an
    /// unknown stream or event, `410` when the events after the id are no
    /// longer kept.
    #[default]
    Refuse,
    /// Start over: a stream that is kept is sent from its earliest kept
    /// event, with `Last-Event-ID: earliest` in the response so the client
    /// can tell; a request through the layer for a stream that is not kept
    /// starts a new generation. An unknown stream on the streams endpoint
    /// still gets `404`: there is nothing to start over from.
    Restart,
}

/// The layer's settings, shared by every service it makes.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) resumable: bool,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) heartbeat_frame: Bytes,
    pub(crate) max_event_size: usize,
    pub(crate) max_duration: Duration,
    pub(crate) drain_usage: Option<Duration>,
    pub(crate) invalid_resume: InvalidResume,
    pub(crate) stream_id_header: HeaderName,
    pub(crate) streams_path: String,
    pub(crate) respond_async: bool,
    pub(crate) identity_encoding: bool,
}

impl Default for Config {
    /// Direct mode, a heartbeat after 15 s of silence, events up to 1 MiB,
    /// generations up to 10 minutes.
    fn default() -> Self {
        Self {
            resumable: false,
            heartbeat: Some(Duration::from_secs(15)),
            heartbeat_frame: Bytes::from_static(b":\n\n"),
            max_event_size: 1 << 20,
            max_duration: Duration::from_secs(600),
            drain_usage: None,
            invalid_resume: InvalidResume::Refuse,
            stream_id_header: HeaderName::from_static("x-stream-id"),
            streams_path: "/v1/streams".to_owned(),
            respond_async: true,
            identity_encoding: true,
        }
    }
}

/// What one layer's services, its streams endpoint and its generation tasks
/// share (behind an `Arc`).
pub(crate) struct Shared<St> {
    pub(crate) config: Arc<Config>,
    pub(crate) store: St,
    /// Permits for detached generations.
    pub(crate) generations: Arc<Semaphore>,
    pub(crate) make_tap: Option<Arc<dyn MakeTap>>,
    pub(crate) counters: Arc<Counters>,
}
