//! [`SseRelayLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderName;
use tokio::sync::Semaphore;
use tower_ai_core::sse::encode_comment;
use tower_layer::Layer;

use crate::config::{Config, InvalidResume, Shared};
use crate::error::ConfigError;
use crate::relay::{Counters, RelayStats};
use crate::service::SseRelay;
#[cfg(feature = "redis")]
use crate::store::RedisStore;
use crate::store::{MemoryStore, StreamStore};
use crate::streams::StreamsService;
use crate::tap::MakeTap;

/// The [`Layer`] that relays event streams; see the [crate docs](crate).
///
/// Cheap to clone; every clone, every service it makes and its
/// [`streams`](Self::streams) endpoint share one store, one limit on
/// detached generations and one set of counters.
pub struct SseRelayLayer<St = MemoryStore> {
    pub(crate) shared: Arc<Shared<St>>,
}

impl<St> Clone for SseRelayLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for SseRelayLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRelayLayer")
            .field("config", &self.shared.config)
            .field("store", &self.shared.store)
            .field("tap", &self.shared.make_tap.is_some())
            .finish()
    }
}

impl SseRelayLayer {
    /// A direct (non-resumable) relay with the defaults: a heartbeat after
    /// 15 s of silence, events up to 1 MiB.
    pub fn new() -> Self {
        Self::builder().build_unchecked()
    }

    /// A builder, starting from the defaults of [`new`](Self::new).
    pub fn builder() -> SseRelayBuilder<MemoryStore> {
        SseRelayBuilder {
            config: Config::default(),
            heartbeat_comment: String::new(),
            store: MemoryStore::new(),
            max_generations: 1_024,
            make_tap: None,
        }
    }
}

impl Default for SseRelayLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<St> SseRelayLayer<St> {
    /// The store of resumable streams.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// Whether the layer runs in resumable mode.
    pub fn is_resumable(&self) -> bool {
        self.shared.config.resumable
    }

    /// The endpoint that re-attaches clients to stored streams
    /// (`GET /v1/streams/{id}`); see [`StreamsService`].
    pub fn streams(&self) -> StreamsService<St> {
        StreamsService::new(self.shared.clone())
    }

    /// A snapshot of the layer's counters.
    pub fn stats(&self) -> RelayStats {
        self.shared.counters.snapshot()
    }
}

impl<S, St> Layer<S> for SseRelayLayer<St> {
    type Service = SseRelay<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        SseRelay::new(inner, self.shared.clone())
    }
}

/// Builds an [`SseRelayLayer`].
#[must_use]
pub struct SseRelayBuilder<St> {
    config: Config,
    heartbeat_comment: String,
    store: St,
    max_generations: usize,
    make_tap: Option<Arc<dyn MakeTap>>,
}

impl<St: fmt::Debug> fmt::Debug for SseRelayBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseRelayBuilder")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("max_generations", &self.max_generations)
            .finish_non_exhaustive()
    }
}

impl<St> SseRelayBuilder<St> {
    /// Resumable mode, keeping streams in `store` (a [`MemoryStore`], an
    /// [`AnyStore`](crate::AnyStore), or any [`StreamStore`]; for a
    /// `RedisStore`, `.redis(store)` says the same).
    ///
    /// Each streamed answer gets a stream id (the `X-Stream-Id` response
    /// header), its events are appended to the store, and the generation
    /// runs in a task of its own, to completion or to
    /// [`max_duration`](Self::max_duration), whether or not a client is
    /// reading. Clients re-attach with `Last-Event-ID` through the layer or
    /// through [`SseRelayLayer::streams`].
    pub fn resumable<St2: StreamStore>(self, store: St2) -> SseRelayBuilder<St2> {
        SseRelayBuilder {
            config: Config {
                resumable: true,
                ..self.config
            },
            heartbeat_comment: self.heartbeat_comment,
            store,
            max_generations: self.max_generations,
            make_tap: self.make_tap,
        }
    }

    /// Resumable mode on Redis: streams kept in `store`, shared by every
    /// replica on the same Redis. The same as
    /// [`resumable(store)`](Self::resumable).
    ///
    /// ```no_run
    /// use tower_ai_core::redis::{ConnectOptions, connect};
    /// use tower_sse_relay::SseRelayLayer;
    /// use tower_sse_relay::store::RedisStore;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
    /// let relay = SseRelayLayer::builder()
    ///     .redis(RedisStore::new(client))
    ///     .build()?;
    /// # let _ = relay;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(self, store: RedisStore) -> SseRelayBuilder<RedisStore> {
        self.resumable(store)
    }

    /// Sends a comment heartbeat after `idle` without an event (default
    /// 15 s), so proxies and clients don't time the connection out.
    pub fn heartbeat(mut self, idle: Duration) -> Self {
        self.config.heartbeat = Some(idle);
        self
    }

    /// Sends no heartbeats.
    pub fn no_heartbeat(mut self) -> Self {
        self.config.heartbeat = None;
        self
    }

    /// The heartbeat's comment text (default empty: `:` and a blank line).
    pub fn heartbeat_comment(mut self, text: impl Into<String>) -> Self {
        self.heartbeat_comment = text.into();
        self
    }

    /// The largest upstream event relayed (default 1 MiB); a larger one is
    /// skipped, and counted.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.config.max_event_size = bytes;
        self
    }

    /// Resumable mode: the longest a generation runs (default 10 minutes);
    /// past it the upstream is dropped and the stream ends with an in-band
    /// error event.
    pub fn max_duration(mut self, limit: Duration) -> Self {
        self.config.max_duration = limit;
        self
    }

    /// Resumable mode: the most generations running at once (default
    /// 1,024). Past it a new stream is relayed directly (not resumable)
    /// rather than refused.
    pub fn max_generations(mut self, generations: usize) -> Self {
        self.max_generations = generations;
        self
    }

    /// Direct mode: when the client goes away before the end and a
    /// [tap](Self::tap) is set, go on reading the upstream for at most
    /// `limit`, until its usage chunk (or `[DONE]`) has passed, so the tap
    /// still learns the usage; then drop it. Default: off (the upstream is
    /// dropped at once).
    pub fn drain_usage(mut self, limit: Duration) -> Self {
        self.config.drain_usage = Some(limit);
        self
    }

    /// What a malformed, unknown or expired `Last-Event-ID` gets (default
    /// [`InvalidResume::Refuse`]).
    pub fn on_invalid_resume(mut self, answer: InvalidResume) -> Self {
        self.config.invalid_resume = answer;
        self
    }

    /// The response header naming the stream (default `x-stream-id`); a
    /// request may also name the stream in it, with `Last-Event-ID:
    /// earliest`.
    pub fn stream_id_header(mut self, name: HeaderName) -> Self {
        self.config.stream_id_header = name;
        self
    }

    /// Where [`SseRelayLayer::streams`] is mounted (default `/v1/streams`),
    /// for the `Location` of a `202 Accepted`.
    pub fn streams_path(mut self, path: impl Into<String>) -> Self {
        self.config.streams_path = path.into();
        self
    }

    /// Resumable mode: whether a request with `Prefer: respond-async` gets
    /// `202 Accepted` and the stream id at once, the events being read from
    /// the streams endpoint (default on).
    pub fn respond_async(mut self, on: bool) -> Self {
        self.config.respond_async = on;
        self
    }

    /// Whether relayed streams carry `Content-Encoding: identity` (default
    /// on), which makes compression layers (tower-http's among them) leave
    /// them alone whatever their predicate says. Off, the header is removed.
    pub fn identity_encoding(mut self, on: bool) -> Self {
        self.config.identity_encoding = on;
        self
    }

    /// Makes a [`Tap`](crate::Tap) for each stream; see [`crate::tap`].
    pub fn tap<T: MakeTap>(mut self, make_tap: T) -> Self {
        self.make_tap = Some(Arc::new(make_tap));
        self
    }

    /// Builds the layer, or says why the configuration can't work.
    ///
    /// # Errors
    ///
    /// A zero heartbeat, event size, duration or generation limit; a
    /// heartbeat comment with a line break; a streams path that does not
    /// start with `/`.
    pub fn build(self) -> Result<SseRelayLayer<St>, ConfigError> {
        let config = &self.config;
        if config.heartbeat.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if config.max_event_size == 0 {
            return Err(ConfigError::ZeroMaxEventSize);
        }
        if config.max_duration.is_zero() {
            return Err(ConfigError::ZeroMaxDuration);
        }
        if config.drain_usage.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDrainUsage);
        }
        if self.max_generations == 0 {
            return Err(ConfigError::ZeroMaxGenerations);
        }
        if !config.streams_path.starts_with('/') {
            return Err(ConfigError::StreamsPath {
                path: config.streams_path.clone(),
            });
        }
        let mut frame = BytesMut::new();
        encode_comment(&self.heartbeat_comment, &mut frame)
            .map_err(|error| ConfigError::HeartbeatComment { error })?;
        let mut this = self;
        this.config.heartbeat_frame = frame.freeze();
        Ok(this.build_unchecked())
    }

    fn build_unchecked(self) -> SseRelayLayer<St> {
        let max_generations = self.max_generations.min(Semaphore::MAX_PERMITS);
        SseRelayLayer {
            shared: Arc::new(Shared {
                config: Arc::new(self.config),
                store: self.store,
                generations: Arc::new(Semaphore::new(max_generations)),
                make_tap: self.make_tap,
                counters: Arc::new(Counters::default()),
            }),
        }
    }
}
