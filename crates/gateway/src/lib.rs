//! An AI gateway: the tower-ai layers stacked in front of an OpenAI-compatible
//! upstream.
//!
//! `examples/gateway.rs` is the program a user runs; this crate holds its
//! parts so that the workspace's end-to-end tests can start gateways in
//! process, on real sockets.
//!
//! Routes:
//! - `POST /v1/chat/completions`: proxied to the upstream, streamed or not.
//! - `GET /v1/content/{id}`: a cheap read route served by the gateway.
//! - `/admin/...`: the admin route group.
//! - `GET /healthz`: the state of the Redis connection and of each circuit.
//! - `GET /metrics`: Prometheus text exposition.

mod config;
mod layers;
mod metrics;
mod routes;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::ClientLike;
use mock_llm::MockHandle;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_ai_core::redis::{self, ConnectOptions, Degrade, DegradeConfig};

pub use crate::config::{Config, ConfigError, USAGE};
pub use crate::upstream::Upstream;

/// Request bodies on the chat route: at most 1 MiB.
pub const MAX_CHAT_BODY: usize = 1 << 20;

/// A running gateway; shuts down when dropped.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    upstream_url: String,
    mock: Option<MockHandle>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// What the request handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) upstream: layers::RelayedUpstream,
    pub(crate) streams: tower_sse_relay::streams::StreamsService<tower_sse_relay::AnyStore>,
    pub(crate) circuits: tower_circuit::CircuitHandle,
    pub(crate) cache: tower_ai_cache::CacheLayer,
    pub(crate) redis: Option<RedisState>,
    pub(crate) secure_cookies: bool,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub(crate) started: Arc<tokio::time::Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct RedisState {
    pub(crate) client: fred::clients::Client,
    pub(crate) degrade: Degrade,
    pub(crate) urls: usize,
}

impl Gateway {
    /// Starts a gateway: connects to Redis when configured (a Redis that is
    /// down at start is not fatal: the layers run on their local fallback
    /// until it answers), starts the in-process mock upstream when no
    /// upstream is given, binds `config.listen` and serves in a background
    /// task.
    pub async fn start(config: Config) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Self::serve(listener, config).await
    }

    /// Like [`Gateway::start`], on a listener the caller bound.
    pub async fn serve(listener: TcpListener, config: Config) -> io::Result<Self> {
        let metrics = metrics::handle();
        let addr = listener.local_addr()?;
        let (upstream_url, mock) = match &config.upstream {
            Some(url) => (url.trim_end_matches('/').to_owned(), None),
            None => {
                let mock = mock_llm::MockLlm::spawn(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    mock_llm::Config {
                        token_delay: config.mock_token_delay,
                        ..mock_llm::Config::default()
                    },
                )
                .await?;
                (mock.base_url(), Some(mock))
            }
        };
        let redis = match config.redis.as_slice() {
            [] => None,
            urls => Some(connect_redis(urls).await?),
        };
        let upstream = Upstream::new(&upstream_url, config.upstream_timeout)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let cache = layers::cache(redis.as_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (upstream, circuits) = layers::circuit_breakers(
            upstream,
            config.circuit_open_wait,
            &cache.handle(),
            redis.as_ref(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (upstream, streams) = layers::relay(upstream, config.sse_heartbeat, redis.as_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let state = AppState {
            upstream,
            streams,
            circuits,
            cache,
            redis,
            secure_cookies: config.secure_cookies,
            metrics,
            started: Arc::new(tokio::time::Instant::now()),
        };
        let app = routes::router(state)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
        });
        tracing::info!(%addr, upstream = %upstream_url, "gateway listening");
        Ok(Self {
            addr,
            upstream_url,
            mock,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream's base URL.
    pub fn upstream_url(&self) -> &str {
        &self.upstream_url
    }

    /// The in-process mock upstream, when the gateway started one.
    pub fn mock(&self) -> Option<&MockHandle> {
        self.mock.as_ref()
    }

    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        }
    }

    /// Serves until the server stops (it stops on [`Gateway::shutdown`] or
    /// an I/O error).
    pub async fn wait(mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn connect_redis(urls: &[String]) -> io::Result<RedisState> {
    let options = ConnectOptions::default();
    let client = redis::client(urls, &options)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    client.connect();
    let wait = tokio::time::timeout(options.connection_timeout, client.wait_for_connect()).await;
    // One health state for this Redis, shared by every layer's store and
    // by `/healthz`: they fall back and recover together, and the health
    // check reports what the layers see.
    let degrade = Degrade::new("redis", DegradeConfig::default());
    match wait {
        Ok(Ok(())) => tracing::info!(nodes = urls.len(), "connected to Redis"),
        Ok(Err(e)) => degrade.mark_down(&e),
        Err(_) => degrade.mark_down(&"timed out connecting"),
    }
    Ok(RedisState {
        client,
        degrade,
        urls: urls.len(),
    })
}

/// How long the gateway waits for the upstream's response head.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
