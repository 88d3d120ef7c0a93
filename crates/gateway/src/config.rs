//! How a gateway is set up: the settings, and the config file's schema.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::DEFAULT_UPSTREAM_TIMEOUT;

/// How long the gateway waits for an upstream connection, TLS handshake
/// included.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The SHA-256 digest of a client key: how the gateway knows keys.
pub(crate) fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// How a gateway is set up: from the command line, a config file
/// (`--config`), or both (flags override the file).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where to listen (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// With no model table: the base URL every model goes to (any
    /// OpenAI-compatible server); `None` starts the mock LLM in process.
    pub upstream: Option<String>,
    /// Redis URLs for shared state: none (in memory), one (standalone), or
    /// several (the seed nodes of a Cluster).
    pub redis: Vec<String>,
    /// The in-process mock's delay between tokens (default 20 ms).
    pub mock_token_delay: Duration,
    /// How long to wait for the upstream's response head (default 60 s).
    pub upstream_timeout: Duration,
    /// How long to wait for an upstream connection, TLS included (default
    /// 10 s).
    pub connect_timeout: Duration,
    /// How long a model's circuit stays open before trial calls (default
    /// 30 s).
    pub circuit_open_wait: Duration,
    /// Whether the session cookie is `Secure` (sent over HTTPS only). Off by
    /// default because the gateway itself serves plain HTTP; turn it on
    /// behind a TLS-terminating proxy.
    pub secure_cookies: bool,
    /// Whether this process runs the pullers of pull-mode models (default
    /// `true`); `false` leaves them to `worker` processes.
    pub pullers: bool,
    /// How long a relayed stream may stay silent before a heartbeat comment
    /// (default 15 s).
    pub sse_heartbeat: Duration,
    /// The model table; empty: every model name goes to `upstream` (or the
    /// mock).
    pub models: Vec<ModelConfig>,
    /// The client keys served; empty: any key (the demo).
    pub keys: Vec<KeyConfig>,
    /// Limits replacing the built-in ones, by route and tier.
    pub limits: Vec<LimitConfig>,
    /// The bearer token `/admin/*` asks for; `None`: admin is open (the
    /// demo).
    pub admin_token: Option<Secret>,
    /// How long answers are cached, per route.
    pub cache: CacheTtls,
    /// Where OpenTelemetry traces go, when anywhere.
    pub otel: Option<OtelConfig>,
    /// The context layer (`[context]`): history, profile and retrieved
    /// passages injected into chat requests.
    pub context: Option<ContextConfig>,
    /// The semantic cache's similarity threshold on the chat route, when it
    /// is on (`[cache] semantic = true`; needs `[context]` for its
    /// embeddings).
    pub semantic_cache: Option<f32>,
    /// Where signed-in conversations are copied durably (`[persistence]`).
    pub persistence: Option<PersistenceConfig>,
}

/// Durable conversations (`[persistence]` in the config file): each chat
/// turn of a signed-in session is written to PostgreSQL, off the request's
/// path.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PersistenceConfig {
    /// The PostgreSQL URL (`postgres://user:password@host:port/db`).
    pub postgres_url: Secret,
    /// The table (created when missing; default
    /// `tower_ai_conversation_turns`).
    pub table: String,
    /// A conversation's turns are written every this many (default 4), at
    /// sign-out, and at most `max_delay` after they were recorded.
    pub every_turns: usize,
    /// The longest a recorded turn waits to be written (default 30 s).
    pub max_delay: Duration,
}

impl PersistenceConfig {
    /// The defaults, with `postgres_url`.
    pub fn new(postgres_url: Secret) -> Self {
        Self {
            postgres_url,
            table: "tower_ai_conversation_turns".into(),
            every_turns: 4,
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The context layer's settings (`[context]` in the config file).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ContextConfig {
    /// The configured model whose `/v1/embeddings` embeds questions and
    /// documents.
    pub embeddings_model: String,
    /// Its vectors' length (sent as `dimensions`; default 1536).
    pub dimensions: usize,
    /// Earlier turns asked for (default 8).
    pub history_turns: usize,
    /// The prompt's token budget: the client's messages, then the context
    /// (default 4096).
    pub budget_tokens: u64,
    /// Passages asked for (default 5).
    pub top_k: usize,
    /// The lowest similarity a passage may have (default 0.3).
    pub min_score: f32,
    /// Where the vectors live: in process (default) or in Redis's vector
    /// search, shared by every replica.
    pub backend: ContextBackend,
}

/// Where the context layer's vectors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ContextBackend {
    /// In process: exact cosine, lost on restart.
    #[default]
    Memory,
    /// Redis's Query Engine (`FT.CREATE … VECTOR HNSW`): the gateway's
    /// `redis` (Redis 8, or a server with the search module).
    Redis,
}

impl ContextConfig {
    /// The defaults, with `embeddings_model`.
    pub fn new(embeddings_model: impl Into<String>) -> Self {
        Self {
            embeddings_model: embeddings_model.into(),
            dimensions: 1536,
            history_turns: 8,
            budget_tokens: 4096,
            top_k: 5,
            min_score: 0.3,
            backend: ContextBackend::Memory,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: None,
            redis: Vec::new(),
            mock_token_delay: Duration::from_millis(20),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            circuit_open_wait: Duration::from_secs(30),
            secure_cookies: false,
            pullers: true,
            sse_heartbeat: Duration::from_secs(15),
            models: Vec::new(),
            keys: Vec::new(),
            limits: Vec::new(),
            admin_token: None,
            cache: CacheTtls::default(),
            otel: None,
            context: None,
            semantic_cache: None,
            persistence: None,
        }
    }
}

/// How long answers are cached on each route; zero turns the cache off for
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheTtls {
    /// `/v1/chat/completions` (default 1 h).
    pub chat: Duration,
    /// `/v1/completions` (default 1 h).
    pub completions: Duration,
    /// `/v1/embeddings` (default 1 h).
    pub embeddings: Duration,
    /// `/v1/responses` (default 1 h).
    pub responses: Duration,
    /// `/v1/messages` (default 1 h).
    pub messages: Duration,
}

impl Default for CacheTtls {
    fn default() -> Self {
        let hour = Duration::from_secs(3_600);
        Self {
            chat: hour,
            completions: hour,
            embeddings: hour,
            responses: hour,
            messages: hour,
        }
    }
}

/// A secret from the environment: a provider key or the admin token.
/// Its debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A command line or config file the gateway can't run with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A bad flag, or `--help`.
    Flags(String),
    /// A bad config file: where, and why.
    File {
        /// The file.
        path: String,
        /// The line (from 1), where one can be named.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The layers refused their settings.
    Layers(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flags(message) | Self::Layers(message) => f.write_str(message),
            Self::File {
                path,
                line: Some(line),
                reason,
            } => write!(f, "{path}:{line}: {reason}"),
            Self::File {
                path,
                line: None,
                reason,
            } => write!(f, "{path}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self::Layers(message.into())
    }
}

impl From<tower_ai_ratelimit::ConfigError> for ConfigError {
    fn from(e: tower_ai_ratelimit::ConfigError) -> Self {
        Self::Layers(e.to_string())
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ModelConfig {
    /// What clients ask for.
    pub name: String,
    /// How the servers are spoken to.
    pub provider: Provider,
    /// Where the model runs: one deployment (the model's own `base_url`)
    /// or several (`deployments`), balanced by `balance`.
    pub deployments: Vec<DeploymentConfig>,
    /// How a deployment is picked for each request.
    pub balance: BalanceStrategy,
    /// Attempts after the first, each on a new pick, before any byte is
    /// returned; default: one per other deployment, at most 2 (so a model
    /// with one deployment is not retried: clients retry on their own).
    pub retries: Option<u32>,
    /// Models tried in order when this one can't answer (every deployment
    /// failed, cooled down or its circuit open).
    pub fallbacks: Vec<String>,
    /// A request header whose value keeps a client on one deployment (a
    /// session or conversation id), while the load allows.
    pub sticky_header: Option<http::HeaderName>,
    /// How often each deployment's `/metrics` (vLLM or SGLang) is read for
    /// its own queue and KV-cache usage; `None`: never.
    pub metrics_interval: Option<Duration>,
    /// The name sent upstream, when it differs.
    pub upstream_model: Option<String>,
    /// USD per million tokens, for budgets and the spend metric.
    pub price: Option<Price>,
}

/// One deployment of a model: a server (or a provider account) that serves
/// it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeploymentConfig {
    /// Its name in `/admin/balance` and metrics (default: the model's name
    /// for a single deployment, `{model}/{index}` otherwise).
    pub name: String,
    /// The server's base URL (with or without a trailing `/v1`).
    pub base_url: String,
    /// The provider key, read from the environment variable the file names.
    pub api_key: Option<Secret>,
    /// An extra trusted root certificate (PEM), for private deployments.
    pub tls_ca_file: Option<PathBuf>,
    /// Its share of the load (default 1).
    pub weight: u32,
    /// Requests in flight at most (default 256); more wait for a permit.
    pub max_concurrency: u32,
    /// In pull mode: its puller takes a request only while the requests
    /// it has started and not yet answered a first byte of hold fewer
    /// prompt tokens than this (default: no limit, only
    /// `max_concurrency`). Near saturation it narrows the
    /// time-to-first-token tail of streamed answers.
    pub max_starting_tokens: Option<u64>,
}

/// `balance` of a model: how a deployment is picked for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BalanceStrategy {
    /// The deployment holding the longest prefix of the prompt, weighed
    /// against the load (the default).
    #[default]
    CacheAware,
    /// The power of two choices over tokens in flight.
    LeastLoaded,
    /// Each deployment in turn.
    RoundRobin,
    /// Requests wait in a Redis Stream for the model; each deployment's
    /// puller takes one when it has a free slot (needs `redis`).
    Pull,
}

/// `[otel]`: where traces go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OtelConfig {
    /// The OTLP/HTTP collector's base URL (e.g. `http://127.0.0.1:4318`);
    /// spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// The `service.name` resource attribute (default `tower-ai-gateway`).
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_service_name() -> String {
    "tower-ai-gateway".to_owned()
}

/// One `[[keys]]` entry: a client key the gateway serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeyConfig {
    /// The key's label in `/admin/keys` and metrics (default `key-N`).
    pub name: String,
    /// The SHA-256 digest of the key (the file may hold either).
    pub sha256: [u8; 32],
    /// The tier whose limits apply.
    pub tier: Option<String>,
    /// A spend limit, counted across every replica.
    pub budget: Option<Budget>,
}

/// A spend limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Budget {
    /// US dollars per period.
    pub usd: f64,
    /// The period, a fixed UTC window.
    pub per: Period,
}

/// The window a budget counts over; each starts on the UTC boundary
/// (weeks on Monday).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Period {
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day.
    Day,
    /// A week, from Monday 00:00 UTC.
    Week,
}

impl Period {
    /// The window's length.
    pub fn length(&self) -> Duration {
        Duration::from_secs(match self {
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
        })
    }

    /// Where the windows are aligned, in seconds after the Unix epoch (a
    /// Thursday: weeks start four days later, on a Monday).
    pub fn offset(&self) -> u64 {
        match self {
            Self::Week => 4 * 86_400,
            _ => 0,
        }
    }

    /// `minute`, `hour`, `day` or `week`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
        }
    }
}

/// One `[[limits]]` entry: replaces the built-in limits of a route (for
/// one tier, or for all).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LimitConfig {
    /// The path prefix it applies to.
    pub route: String,
    /// The tier it applies to; every tier when absent.
    pub tier: Option<String>,
    /// Requests: a bucket of `capacity`, refilled at a rate.
    pub requests: Option<Bucket>,
    /// LLM tokens, estimated before the call and reconciled after.
    pub tokens: Option<Bucket>,
}

/// A token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Bucket {
    /// How many fit.
    pub capacity: u64,
    /// Refilled per second.
    pub per_second: f64,
}

/// How a model's server wants to be spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum Provider {
    /// Any OpenAI-compatible server (OpenAI, vLLM, SGLang, Ollama, …): the
    /// key goes in `Authorization: Bearer`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic: the key goes in `x-api-key`, with `anthropic-version`.
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl Provider {
    /// `"openai"` or `"anthropic"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// A model's price, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Price {
    /// Per million input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Per million output (completion) tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// What `input` and `output` tokens cost, in nano-dollars (a dollar is
    /// 10⁹): whole numbers that Redis can add atomically.
    pub fn nanos(&self, input: u64, output: u64) -> u64 {
        // USD per million tokens = 1,000 nano-dollars per token per unit.
        let cost = input as f64 * self.input_per_mtok * 1_000.0
            + output as f64 * self.output_per_mtok * 1_000.0;
        cost.ceil().clamp(0.0, u64::MAX as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_in_nanodollars() {
        let price = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
        };
        // 1M input tokens cost $0.15; 1M output, $0.60.
        assert_eq!(price.nanos(1_000_000, 0), 150_000_000);
        assert_eq!(price.nanos(0, 1_000_000), 600_000_000);
        assert_eq!(price.nanos(10, 20), 1_500 + 12_000);
    }
}
