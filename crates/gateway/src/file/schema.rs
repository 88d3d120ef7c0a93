//! The config file's TOML schema, as `serde` reads it: every section and
//! key, with the spans that errors point to. No checks here: the sections'
//! readers make sense of it.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Budget, OtelConfig, Price, Provider};

/// The whole file: any key it doesn't know is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) redis: Option<Vec<String>>,
    pub(super) admin: Option<AdminFile>,
    #[serde(default)]
    pub(super) models: Vec<ModelFile>,
    #[serde(default)]
    pub(super) keys: Vec<KeyFile>,
    #[serde(default)]
    pub(super) limits: Vec<LimitFile>,
    pub(super) cache: Option<CacheFile>,
    pub(super) context: Option<Spanned<ContextFile>>,
    pub(super) persistence: Option<Spanned<PersistenceFile>>,
    pub(super) otel: Option<Spanned<OtelConfig>>,
    pub(super) upstream_timeout_ms: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) circuit_open_wait_ms: Option<u64>,
    pub(super) sse_heartbeat_ms: Option<u64>,
    pub(super) secure_cookies: Option<bool>,
    pub(super) pullers: Option<bool>,
    pub(super) mock_token_delay_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    pub(super) token_env: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelFile {
    pub(super) name: Spanned<String>,
    pub(super) provider: Provider,
    pub(super) base_url: Option<Spanned<String>>,
    pub(super) api_key_env: Option<Spanned<String>>,
    pub(super) upstream_model: Option<String>,
    pub(super) tls_ca_file: Option<Spanned<PathBuf>>,
    pub(super) price: Option<Spanned<Price>>,
    #[serde(default)]
    pub(super) deployments: Vec<Spanned<DeploymentFile>>,
    pub(super) balance: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    #[serde(default)]
    pub(super) fallbacks: Vec<Spanned<String>>,
    pub(super) sticky_header: Option<Spanned<String>>,
    pub(super) metrics_interval_ms: Option<u64>,
}

/// One of a model's `deployments`; what it leaves out, it takes from the
/// model (`api_key_env`, `tls_ca_file`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeploymentFile {
    pub(super) name: Option<String>,
    pub(super) base_url: Spanned<String>,
    pub(super) api_key_env: Option<Spanned<String>>,
    pub(super) tls_ca_file: Option<Spanned<PathBuf>>,
    pub(super) weight: Option<u32>,
    pub(super) max_concurrency: Option<u32>,
    pub(super) max_starting_tokens: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyFile {
    pub(super) name: Option<String>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) key_sha256: Option<Spanned<String>>,
    pub(super) tier: Option<String>,
    pub(super) budget: Option<Spanned<Budget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitFile {
    pub(super) route: Spanned<String>,
    pub(super) tier: Option<String>,
    pub(super) requests: Option<Spanned<BucketFile>>,
    pub(super) tokens: Option<Spanned<BucketFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BucketFile {
    pub(super) capacity: u64,
    pub(super) per_second: Option<f64>,
    pub(super) per_minute: Option<f64>,
    pub(super) per_hour: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    pub(super) chat_ttl_s: Option<u64>,
    pub(super) completions_ttl_s: Option<u64>,
    pub(super) embeddings_ttl_s: Option<u64>,
    pub(super) responses_ttl_s: Option<u64>,
    pub(super) messages_ttl_s: Option<u64>,
    pub(super) semantic: Option<bool>,
    pub(super) similarity: Option<Spanned<f32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContextFile {
    pub(super) embeddings_model: Spanned<String>,
    pub(super) dimensions: Option<usize>,
    pub(super) history_turns: Option<usize>,
    pub(super) budget_tokens: Option<u64>,
    pub(super) top_k: Option<usize>,
    pub(super) min_score: Option<f32>,
    pub(super) backend: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PersistenceFile {
    pub(super) postgres_url: Option<Spanned<String>>,
    pub(super) postgres_url_env: Option<Spanned<String>>,
    pub(super) table: Option<Spanned<String>>,
    pub(super) every_turns: Option<Spanned<usize>>,
    pub(super) max_delay_ms: Option<Spanned<u64>>,
}
