//! An AI gateway: the tower-ai layers stacked in front of model providers
//! (any OpenAI-compatible server, and Anthropic).
//!
//! `examples/gateway.rs` is the program a user runs; this crate holds its
//! parts so that the workspace's end-to-end tests can start gateways in
//! process, on real sockets.
//!
//! Routes:
//! - `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//!   `/v1/responses`, `/v1/messages`: proxied to the model's server,
//!   streamed or not.
//! - `GET /v1/models`: the configured models.
//! - `GET /v1/streams/{id}`: re-attaches to a streamed answer (its owner
//!   only).
//! - `GET /v1/content/{id}`: a cheap read route served by the gateway.
//! - `/admin/...`: the admin route group (behind the admin token, when one
//!   is configured).
//! - `GET /healthz`: the state of the Redis connection and of each circuit.
//! - `GET /metrics`: Prometheus text exposition.

mod args;
mod auth;
mod budget;
mod config;
mod context;
mod conversations;
mod endpoint;
mod file;
mod front;
mod layers;
mod metered;
mod metrics;
mod models;
mod owners;
mod proxy;
mod pull;
mod respond;
mod routes;
mod scrape;
pub mod telemetry;
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

pub use crate::args::USAGE;
pub use crate::config::{
    BalanceStrategy, Bucket, Budget, CacheTtls, Config, ConfigError, ContextBackend, ContextConfig,
    DeploymentConfig, KeyConfig, LimitConfig, ModelConfig, OtelConfig, Period, PersistenceConfig,
    Price, Provider, Secret,
};
pub use crate::upstream::{Upstream, UpstreamError};

/// Request bodies on the chat route: at most 1 MiB.
pub const MAX_CHAT_BODY: usize = 1 << 20;

/// A running gateway; shuts down when dropped.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    upstream_url: String,
    models: Vec<String>,
    mock: Option<MockHandle>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
    /// Durable conversations, flushed at shutdown.
    conversations: Option<conversations::Conversations>,
    /// The pull-mode models' pullers, stopped with the gateway.
    _pullers: Vec<tower_ai_balance::pull::PullerHandle>,
    /// The deployments' metrics readers, stopped with the gateway.
    _scrapers: scrape::Scrapers,
    /// The handlers' state, to see it go with the gateway.
    #[cfg(test)]
    state: WeakState,
}

/// What the request handlers share: one allocation, cloned by a reference
/// count (axum clones the state for every extractor and middleware).
#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// A reference that doesn't keep the state alive.
    pub(crate) fn downgrade(&self) -> WeakState {
        WeakState(Arc::downgrade(&self.0))
    }
}

/// An [`AppState`] that doesn't keep it alive: for what the state itself
/// holds (the context's embedder calls the gateway's own routes).
#[derive(Debug, Clone)]
pub(crate) struct WeakState(std::sync::Weak<Shared>);

impl WeakState {
    /// The state, while the gateway holds it.
    pub(crate) fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(AppState)
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) models: Arc<models::Models>,
    pub(crate) auth: auth::Auth,
    pub(crate) budgets: budget::Budgets,
    pub(crate) owners: owners::Owners,
    /// Streamed answers: through the relay, resumable.
    pub(crate) upstream: pull::RelayedUpstream,
    /// Answers that aren't streamed: past the relay, which has nothing to
    /// keep of them.
    pub(crate) direct: pull::Dispatch,
    pub(crate) streams: tower_sse_relay::streams::StreamsService<tower_sse_relay::AnyStore>,
    pub(crate) circuits: tower_circuit::CircuitHandle,
    pub(crate) cache: tower_ai_cache::CacheLayer,
    /// The context layer, with `[context]`.
    pub(crate) context: Option<context::ContextState>,
    /// Durable conversations, with `[persistence]`.
    pub(crate) conversations: Option<conversations::Conversations>,
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

/// The pullers of a configuration's pull-mode models, without the rest of
/// the gateway: a worker beside the deployments, taking requests that
/// gateway replicas (`pullers = false`) queue. Stops when dropped.
#[derive(Debug)]
pub struct Worker {
    models: Vec<String>,
    _pullers: Vec<tower_ai_balance::pull::PullerHandle>,
}

impl Worker {
    /// Connects to the configuration's Redis and starts a puller per
    /// deployment of every model whose `balance` is `"pull"`, each calling
    /// its deployment through a circuit breaker.
    pub async fn start(config: Config) -> io::Result<Self> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let redis = match config.redis.as_slice() {
            [] => {
                return Err(invalid(
                    "a worker needs redis: its queues are Redis Streams".into(),
                ));
            }
            urls => connect_redis(urls).await?,
        };
        let models = model_table(&config, "", Some(&redis))?;
        let names: Vec<String> = models
            .named()
            .iter()
            .filter(|m| m.queue.is_some())
            .map(|m| m.name.to_string())
            .collect();
        if names.is_empty() {
            return Err(invalid(
                "no model has balance = \"pull\": nothing to pull".into(),
            ));
        }
        let cache =
            layers::cache(Some(&redis), &config.cache, None).map_err(|e| invalid(e.to_string()))?;
        let (guarded, _) = layers::circuit_breakers(
            Upstream::routed(),
            config.circuit_open_wait,
            &cache.handle(),
            Some(&redis),
        )
        .map_err(|e| invalid(e.to_string()))?;
        let pullers = pull::pullers(&models, &guarded);
        tracing::info!(models = ?names, pullers = pullers.len(), "worker pulling");
        Ok(Self {
            models: names,
            _pullers: pullers,
        })
    }

    /// The pull-mode models this worker serves.
    pub fn models(&self) -> &[String] {
        &self.models
    }
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
        if config.upstream.is_some() && !config.models.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--upstream is for a gateway without [[models]]: each model names its own base_url",
            ));
        }
        let (upstream_url, mock) = match &config.upstream {
            Some(url) => (url.trim_end_matches('/').to_owned(), None),
            None if !config.models.is_empty() => (String::new(), None),
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
        let models = Arc::new(model_table(&config, &upstream_url, redis.as_ref())?);
        let model_names = models.named().iter().map(|m| m.name.to_string()).collect();
        let upstream = Upstream::routed();
        let shared = redis
            .as_ref()
            .map(|r| (r.client.clone(), r.degrade.clone()));
        let auth = auth::Auth::new(&config.keys, config.admin_token.as_ref());
        let budgets = budget::Budgets::new(shared.clone());
        let owners = owners::Owners::new(shared);
        let cell = context::StateCell::default();
        let context = config
            .context
            .as_ref()
            .map(|c| context::ContextState::new(c, &cell, redis.as_ref()));
        let semantic = match (config.semantic_cache, &context, &config.context) {
            (Some(similarity), Some(state), Some(c)) => {
                Some(layers::semantic(similarity, state, c, redis.as_ref()))
            }
            _ => None,
        };
        let cache = layers::cache(redis.as_ref(), &config.cache, semantic)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (upstream, circuits) = layers::circuit_breakers(
            upstream,
            config.circuit_open_wait,
            &cache.handle(),
            redis.as_ref(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let scrapers = scrape::start(&models);
        let pullers = if config.pullers {
            pull::pullers(&models, &upstream)
        } else {
            Vec::new()
        };
        let upstream = pull::Dispatch::new(layers::balance(upstream));
        let direct = upstream.clone();
        let (upstream, streams) = layers::relay(upstream, config.sse_heartbeat, redis.as_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let conversations = config
            .persistence
            .as_ref()
            .map(conversations::Conversations::start)
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let state = AppState(Arc::new(Shared {
            models,
            auth,
            budgets,
            owners,
            upstream,
            direct,
            streams,
            circuits,
            cache,
            context,
            conversations: conversations.clone(),
            redis,
            secure_cookies: config.secure_cookies,
            metrics,
            started: Arc::new(tokio::time::Instant::now()),
        }));
        let _ = cell.set(state.downgrade());
        #[cfg(test)]
        let weak = state.downgrade();
        let app = routes::router(state, &config.limits)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                without_delay(listener),
                axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                    SocketAddr,
                >(app),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
        });
        tracing::info!(%addr, "gateway listening");
        Ok(Self {
            addr,
            upstream_url,
            models: model_names,
            mock,
            shutdown: Some(tx),
            task: Some(task),
            conversations,
            _pullers: pullers,
            _scrapers: scrapers,
            #[cfg(test)]
            state: weak,
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

    /// With no model table: the base URL every model goes to (empty when
    /// the config lists models).
    pub fn upstream_url(&self) -> &str {
        &self.upstream_url
    }

    /// The configured model names, in the config's order (empty without a
    /// model table).
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The in-process mock upstream, when the gateway started one.
    pub fn mock(&self) -> Option<&MockHandle> {
        self.mock.as_ref()
    }

    /// Stops accepting connections, waits for open ones to finish, then
    /// writes the conversation turns still buffered (for at most 10 s).
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        };
        if let Some(conversations) = &self.conversations {
            conversations.flush(Duration::from_secs(10)).await;
        }
        served
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

/// The model table: the configured models, or, with none, every name to
/// `upstream_url` (the `--upstream` server or the mock), with the key in
/// `UPSTREAM_API_KEY` when set.
fn model_table(
    config: &Config,
    upstream_url: &str,
    redis: Option<&RedisState>,
) -> io::Result<models::Models> {
    // With Redis, every replica sees each deployment's load and one prefix
    // index.
    let shared = redis.map(|r| {
        tower_ai_balance::RedisStore::builder(r.client.clone())
            .degrade(r.degrade.clone())
            .build()
    });
    let timeouts = endpoint::Timeouts {
        connect: config.connect_timeout,
        head: config.upstream_timeout,
        idle: endpoint::DEFAULT_IDLE_TIMEOUT,
    };
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    if config.models.is_empty() {
        let endpoint = endpoint::Endpoint::new(upstream_url, None, timeouts)
            .map_err(|e| invalid(format!("--upstream: {e}")))?;
        let key = std::env::var("UPSTREAM_API_KEY").ok();
        let mut route = models::ModelRoute::single(
            "*",
            config::Provider::OpenAi,
            endpoint,
            key.as_deref().filter(|k| !k.is_empty()),
        )
        .map_err(|e| invalid(e.to_string()))?;
        route.wildcard = true;
        return Ok(models::Models::new(vec![route]));
    }
    if config.models.iter().all(|m| m.price.is_none())
        && config.keys.iter().any(|k| k.budget.is_some())
    {
        tracing::warn!("keys have budgets but no model has a price: nothing will be counted");
    }
    // Deployments on the same server (and trusting the same roots) share
    // one connection pool.
    let mut clients: std::collections::HashMap<_, endpoint::Endpoint> = Default::default();
    let mut routes = Vec::with_capacity(config.models.len());
    for model in &config.models {
        let mut pool = tower_ai_balance::Pool::builder(model.name.as_str())
            .strategy(match model.balance {
                BalanceStrategy::LeastLoaded | BalanceStrategy::Pull => {
                    tower_ai_balance::Strategy::LeastLoaded
                }
                BalanceStrategy::RoundRobin => tower_ai_balance::Strategy::RoundRobin,
                _ => tower_ai_balance::Strategy::cache_aware(),
            })
            .retries(
                model
                    .retries
                    .unwrap_or_else(|| (model.deployments.len().saturating_sub(1)).min(2) as u32),
            );
        if let Some(shared) = &shared {
            pool = pool.redis(shared);
        }
        if let Some(header) = &model.sticky_header {
            pool = pool.sticky(tower_ai_core::key::Header::new(header.clone()));
        }
        for deployment in &model.deployments {
            let key = (deployment.base_url.clone(), deployment.tls_ca_file.clone());
            let client = match clients.get(&key) {
                Some(client) => client.clone(),
                None => {
                    let client = endpoint::Endpoint::new(
                        &deployment.base_url,
                        deployment.tls_ca_file.as_deref(),
                        timeouts,
                    )
                    .map_err(|e| invalid(format!("model {}: {e}", model.name)))?;
                    clients.insert(key, client.clone());
                    client
                }
            };
            let mut target = models::Deployment::new(
                model.provider,
                client,
                deployment.api_key.as_ref().map(Secret::expose),
            );
            target.max_starting_tokens = deployment.max_starting_tokens;
            pool = pool.endpoint(
                tower_ai_balance::Endpoint::new(deployment.name.as_str(), Arc::new(target))
                    .weight(deployment.weight)
                    .max_concurrency(deployment.max_concurrency),
            );
        }
        let pool = pool
            .build()
            .map_err(|e| invalid(format!("model {}: {e}", model.name)))?;
        let mut route = models::ModelRoute::new(&model.name, model.provider, pool);
        route.upstream_model = model
            .upstream_model
            .as_deref()
            .filter(|m| *m != model.name)
            .map(Arc::from);
        route.price = model.price;
        route.fallbacks = model
            .fallbacks
            .iter()
            .map(|f| Arc::from(f.as_str()))
            .collect();
        route.metrics_interval = model.metrics_interval;
        if model.balance == BalanceStrategy::Pull {
            let Some(redis) = redis else {
                return Err(invalid(format!(
                    "model {}: balance = \"pull\" needs redis (its queue is a Redis Stream)",
                    model.name
                )));
            };
            route.queue = Some(
                tower_ai_balance::pull::PullQueue::builder(redis.client.clone(), &model.name)
                    .degrade(redis.degrade.clone())
                    .build(),
            );
        }
        routes.push(route);
    }
    Ok(models::Models::new(routes))
}

/// How long the gateway waits for the upstream's response head.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The listener whose connections send each write at once: a streamed
/// answer is many small writes, which Nagle's algorithm would hold back
/// behind the client's delayed acknowledgements (up to 40 ms a token).
fn without_delay(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn no_delay(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set on a connection");
        }
    }
    axum::serve::ListenerExt::tap_io(listener, no_delay)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;

    /// The context's embedder calls the gateway's own routes; its way back
    /// to the state must not keep a stopped gateway's state alive.
    #[tokio::test]
    async fn a_stopped_gateway_frees_its_state() {
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        };
        // Never called here: nothing needs to answer.
        let toml = "[[models]]\nname = \"embed\"\nprovider = \"openai\"\n\
                    base_url = \"http://127.0.0.1:9/v1\"\n\
                    [context]\nembeddings_model = \"embed\"\ndimensions = 8\n";
        if let Err(e) = config.read_toml(toml, Path::new("test.toml"), |_| None) {
            panic!("a valid config: {e}");
        }
        let gateway = Gateway::start(config).await.expect("the gateway starts");
        let state = gateway.state.clone();
        assert!(state.upgrade().is_some_and(|s| s.context.is_some()));
        gateway.shutdown().await.expect("a clean shutdown");
        assert!(state.upgrade().is_none(), "the state outlived its gateway");
    }

    /// The connections the gateway accepts send small writes at once.
    #[tokio::test]
    async fn accepted_connections_have_no_delay() {
        use axum::serve::Listener;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        let mut listener = without_delay(listener);
        let client = tokio::net::TcpStream::connect(addr);
        let ((accepted, _), client) = tokio::join!(listener.accept(), client);
        client.expect("a connection");
        assert!(accepted.nodelay().expect("the option reads"));
    }
}
