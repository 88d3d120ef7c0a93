//! The config file: its TOML schema, and the checks that refuse a bad file
//! at start with the line and the reason.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{
    BalanceStrategy, Bucket, Budget, CacheTtls, Config, ConfigError, ContextBackend, ContextConfig,
    DeploymentConfig, KeyConfig, LimitConfig, ModelConfig, OtelConfig, PersistenceConfig, Price,
    Provider, Secret, key_digest,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Spanned<String>>,
    redis: Option<Vec<String>>,
    admin: Option<AdminFile>,
    #[serde(default)]
    models: Vec<ModelFile>,
    #[serde(default)]
    keys: Vec<KeyFile>,
    #[serde(default)]
    limits: Vec<LimitFile>,
    cache: Option<CacheFile>,
    context: Option<Spanned<ContextFile>>,
    persistence: Option<Spanned<PersistenceFile>>,
    otel: Option<Spanned<OtelConfig>>,
    upstream_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    circuit_open_wait_ms: Option<u64>,
    sse_heartbeat_ms: Option<u64>,
    secure_cookies: Option<bool>,
    pullers: Option<bool>,
    mock_token_delay_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    token_env: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    name: Spanned<String>,
    provider: Provider,
    base_url: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    upstream_model: Option<String>,
    tls_ca_file: Option<Spanned<PathBuf>>,
    price: Option<Spanned<Price>>,
    #[serde(default)]
    deployments: Vec<Spanned<DeploymentFile>>,
    balance: Option<Spanned<String>>,
    retries: Option<u32>,
    #[serde(default)]
    fallbacks: Vec<Spanned<String>>,
    sticky_header: Option<Spanned<String>>,
    metrics_interval_ms: Option<u64>,
}

/// One of a model's `deployments`; what it leaves out, it takes from the
/// model (`api_key_env`, `tls_ca_file`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentFile {
    name: Option<String>,
    base_url: Spanned<String>,
    api_key_env: Option<Spanned<String>>,
    tls_ca_file: Option<Spanned<PathBuf>>,
    weight: Option<u32>,
    max_concurrency: Option<u32>,
    max_starting_tokens: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: Option<String>,
    key: Option<Spanned<String>>,
    key_sha256: Option<Spanned<String>>,
    tier: Option<String>,
    budget: Option<Spanned<Budget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFile {
    route: Spanned<String>,
    tier: Option<String>,
    requests: Option<Spanned<BucketFile>>,
    tokens: Option<Spanned<BucketFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketFile {
    capacity: u64,
    per_second: Option<f64>,
    per_minute: Option<f64>,
    per_hour: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    chat_ttl_s: Option<u64>,
    completions_ttl_s: Option<u64>,
    embeddings_ttl_s: Option<u64>,
    responses_ttl_s: Option<u64>,
    messages_ttl_s: Option<u64>,
    semantic: Option<bool>,
    similarity: Option<Spanned<f32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextFile {
    embeddings_model: Spanned<String>,
    dimensions: Option<usize>,
    history_turns: Option<usize>,
    budget_tokens: Option<u64>,
    top_k: Option<usize>,
    min_score: Option<f32>,
    backend: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistenceFile {
    postgres_url: Option<Spanned<String>>,
    postgres_url_env: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    every_turns: Option<Spanned<usize>>,
    max_delay_ms: Option<Spanned<u64>>,
}

/// Reads a config file over `config`. `env` looks up the environment
/// variables the file names.
pub(crate) fn apply(
    config: &mut Config,
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let file: File = toml::from_str(text).map_err(|e| ConfigError::File {
        path: shown.clone(),
        line: e.span().map(|s| line_of(text, s.start)),
        reason: e.message().to_owned(),
    })?;
    let fail = |span: Range<usize>, reason: String| ConfigError::File {
        path: shown.clone(),
        line: Some(line_of(text, span.start)),
        reason,
    };
    let base = path.parent().unwrap_or(Path::new("."));

    if let Some(listen) = file.listen {
        config.listen = listen
            .get_ref()
            .parse()
            .map_err(|e| fail(listen.span(), format!("listen {}: {e}", listen.get_ref())))?;
    }
    if let Some(redis) = file.redis {
        config.redis = redis;
    }
    if let Some(admin) = file.admin {
        let name = admin.token_env.get_ref();
        let token = env(name).filter(|t| !t.is_empty()).ok_or_else(|| {
            fail(
                admin.token_env.span(),
                format!("admin.token_env: the environment variable {name} is not set"),
            )
        })?;
        config.admin_token = Some(Secret::new(token));
    }

    let mut names = HashSet::new();
    let mut fallbacks = Vec::new();
    for model in file.models {
        let name = model.name.get_ref().trim().to_owned();
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err(fail(
                model.name.span(),
                "a model name is 1 to 256 characters, without control characters".into(),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(fail(
                model.name.span(),
                format!("the model {name} is listed twice"),
            ));
        }
        let read_key = |var: &Spanned<String>| {
            env(var.get_ref())
                .filter(|k| !k.is_empty())
                .map(Secret::new)
                .ok_or_else(|| {
                    fail(
                        var.span(),
                        format!(
                            "model {name}: the environment variable {} (api_key_env) is not set",
                            var.get_ref()
                        ),
                    )
                })
        };
        let read_ca = |file: &Spanned<PathBuf>| {
            let resolved = base.join(file.get_ref());
            if resolved.is_file() {
                Ok(resolved)
            } else {
                Err(fail(
                    file.span(),
                    format!("tls_ca_file {}: no such file", resolved.display()),
                ))
            }
        };
        let api_key = model.api_key_env.as_ref().map(read_key).transpose()?;
        let tls_ca_file = model.tls_ca_file.as_ref().map(read_ca).transpose()?;
        let mut deployments = Vec::new();
        match (&model.base_url, model.deployments.is_empty()) {
            (Some(url), true) => {
                check_url(url).map_err(|reason| fail(url.span(), reason))?;
                deployments.push(DeploymentConfig {
                    name: name.clone(),
                    base_url: url.get_ref().clone(),
                    api_key: api_key.clone(),
                    tls_ca_file: tls_ca_file.clone(),
                    weight: 1,
                    max_concurrency: DEFAULT_MAX_CONCURRENCY,
                    max_starting_tokens: None,
                });
            }
            (None, false) => {
                let mut deployment_names = HashSet::new();
                for (i, spanned) in model.deployments.iter().enumerate() {
                    let d = spanned.get_ref();
                    check_url(&d.base_url).map_err(|reason| fail(d.base_url.span(), reason))?;
                    let deployment = DeploymentConfig {
                        name: match &d.name {
                            Some(given) => format!("{name}/{}", given.trim()),
                            None => format!("{name}/{i}"),
                        },
                        base_url: d.base_url.get_ref().clone(),
                        api_key: match &d.api_key_env {
                            Some(var) => Some(read_key(var)?),
                            None => api_key.clone(),
                        },
                        tls_ca_file: match &d.tls_ca_file {
                            Some(file) => Some(read_ca(file)?),
                            None => tls_ca_file.clone(),
                        },
                        weight: d.weight.unwrap_or(1),
                        max_concurrency: d.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
                        max_starting_tokens: d.max_starting_tokens.as_ref().map(|t| *t.get_ref()),
                    };
                    if let Some(tokens) = &d.max_starting_tokens
                        && *tokens.get_ref() == 0
                    {
                        return Err(fail(
                            tokens.span(),
                            "a deployment's max_starting_tokens is at least 1".into(),
                        ));
                    }
                    if deployment.weight == 0 || deployment.max_concurrency == 0 {
                        return Err(fail(
                            spanned.span(),
                            "a deployment's weight and max_concurrency are at least 1".into(),
                        ));
                    }
                    if !deployment_names.insert(deployment.name.clone()) {
                        return Err(fail(
                            spanned.span(),
                            format!(
                                "model {name}: two deployments are named {}",
                                deployment.name
                            ),
                        ));
                    }
                    deployments.push(deployment);
                }
                if deployments.len() > 64 {
                    return Err(fail(
                        model.name.span(),
                        format!("model {name}: at most 64 deployments"),
                    ));
                }
            }
            (Some(url), false) => {
                return Err(fail(
                    url.span(),
                    format!("model {name}: either base_url or deployments, not both"),
                ));
            }
            (None, true) => {
                return Err(fail(
                    model.name.span(),
                    format!("model {name}: a base_url or deployments is required"),
                ));
            }
        }
        let balance = match &model.balance {
            None => BalanceStrategy::default(),
            Some(value) => match value.get_ref().as_str() {
                "cache_aware" => BalanceStrategy::CacheAware,
                "least_loaded" => BalanceStrategy::LeastLoaded,
                "round_robin" => BalanceStrategy::RoundRobin,
                "pull" => BalanceStrategy::Pull,
                other => {
                    return Err(fail(
                        value.span(),
                        format!(
                            "balance {other:?}: expected \"cache_aware\", \"least_loaded\", \"round_robin\" or \"pull\""
                        ),
                    ));
                }
            },
        };
        fallbacks.push((name.clone(), model.fallbacks.clone()));
        let sticky_header = match &model.sticky_header {
            None => None,
            Some(header) => Some(
                http::HeaderName::from_bytes(header.get_ref().trim().as_bytes()).map_err(|_| {
                    fail(
                        header.span(),
                        format!("sticky_header {:?}: not a header name", header.get_ref()),
                    )
                })?,
            ),
        };
        let price = match model.price {
            None => None,
            Some(price) => {
                let p = *price.get_ref();
                let valid = |v: f64| v.is_finite() && v >= 0.0;
                if !(valid(p.input_per_mtok) && valid(p.output_per_mtok)) {
                    return Err(fail(
                        price.span(),
                        "a price is zero or more dollars per million tokens".into(),
                    ));
                }
                Some(p)
            }
        };
        config.models.push(ModelConfig {
            name,
            provider: model.provider,
            deployments,
            balance,
            retries: model.retries,
            fallbacks: model
                .fallbacks
                .iter()
                .map(|f| f.get_ref().clone())
                .collect(),
            sticky_header,
            metrics_interval: model
                .metrics_interval_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            upstream_model: model.upstream_model,
            price,
        });
    }
    // A fallback names another configured model.
    for (model, listed) in fallbacks {
        for fallback in listed {
            if fallback.get_ref() == &model || !names.contains(fallback.get_ref()) {
                return Err(fail(
                    fallback.span(),
                    format!(
                        "model {model}: the fallback {} is not another configured model",
                        fallback.get_ref()
                    ),
                ));
            }
        }
    }

    let mut digests = HashSet::new();
    let mut key_names = HashSet::new();
    for (i, key) in file.keys.into_iter().enumerate() {
        let sha256 = match (&key.key, &key.key_sha256) {
            (Some(k), None) => {
                if k.get_ref().is_empty() {
                    return Err(fail(k.span(), "an empty key".into()));
                }
                key_digest(k.get_ref())
            }
            (None, Some(hex)) => parse_hex32(hex.get_ref()).ok_or_else(|| {
                fail(
                    hex.span(),
                    "key_sha256 is the key's SHA-256 digest: 64 hex digits".into(),
                )
            })?,
            (Some(k), Some(_)) => {
                return Err(fail(k.span(), "give key or key_sha256, not both".into()));
            }
            (None, None) => {
                return Err(ConfigError::File {
                    path: shown.clone(),
                    line: None,
                    reason: format!("keys[{i}]: give key or key_sha256"),
                });
            }
        };
        let span = key
            .key
            .as_ref()
            .map(Spanned::span)
            .or_else(|| key.key_sha256.as_ref().map(Spanned::span))
            .unwrap_or_default();
        if !digests.insert(sha256) {
            return Err(fail(span, "this key is listed twice".into()));
        }
        let budget = match key.budget {
            None => None,
            Some(budget) => {
                let b = *budget.get_ref();
                if !(b.usd.is_finite() && b.usd >= 0.0) {
                    return Err(fail(
                        budget.span(),
                        "a budget is zero or more dollars".into(),
                    ));
                }
                Some(b)
            }
        };
        let name = key.name.unwrap_or_else(|| format!("key-{}", i + 1));
        if !key_names.insert(name.clone()) {
            return Err(fail(
                span,
                format!(
                    "two keys are named {name}: a name labels one key's budget, streams and metrics"
                ),
            ));
        }
        config.keys.push(KeyConfig {
            name,
            sha256,
            tier: key.tier,
            budget,
        });
    }

    let mut rules = HashSet::new();
    for limit in file.limits {
        let route = limit.route.get_ref();
        if !route.starts_with('/') {
            return Err(fail(
                limit.route.span(),
                format!("route {route}: a path prefix starts with /"),
            ));
        }
        if limit.requests.is_none() && limit.tokens.is_none() {
            return Err(fail(
                limit.route.span(),
                format!("route {route}: give requests, tokens or both"),
            ));
        }
        let bucket = |b: Option<Spanned<BucketFile>>| -> Result<Option<Bucket>, ConfigError> {
            let Some(b) = b else { return Ok(None) };
            let span = b.span();
            let f = b.into_inner();
            let rate = match (f.per_second, f.per_minute, f.per_hour) {
                (Some(r), None, None) => r,
                (None, Some(r), None) => r / 60.0,
                (None, None, Some(r)) => r / 3_600.0,
                _ => {
                    return Err(fail(
                        span,
                        "give exactly one of per_second, per_minute and per_hour".into(),
                    ));
                }
            };
            if f.capacity == 0 || !(rate.is_finite() && rate > 0.0) {
                return Err(fail(
                    span,
                    "a limit needs a capacity of at least 1 and a rate above 0".into(),
                ));
            }
            Ok(Some(Bucket {
                capacity: f.capacity,
                per_second: rate,
            }))
        };
        if !rules.insert((route.clone(), limit.tier.clone())) {
            return Err(fail(
                limit.route.span(),
                format!("route {route} is limited twice for the same tier"),
            ));
        }
        config.limits.push(LimitConfig {
            route: route.clone(),
            tier: limit.tier,
            requests: bucket(limit.requests)?,
            tokens: bucket(limit.tokens)?,
        });
    }

    if let Some(cache) = file.cache {
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        let d = CacheTtls::default();
        config.cache = CacheTtls {
            chat: secs(cache.chat_ttl_s, d.chat),
            completions: secs(cache.completions_ttl_s, d.completions),
            embeddings: secs(cache.embeddings_ttl_s, d.embeddings),
            responses: secs(cache.responses_ttl_s, d.responses),
            messages: secs(cache.messages_ttl_s, d.messages),
        };
        if cache.semantic == Some(true) {
            let similarity = match cache.similarity {
                None => 0.95,
                Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
                Some(s) => {
                    return Err(fail(
                        s.span(),
                        format!("cache.similarity {}: expected 0 to 1", s.get_ref()),
                    ));
                }
            };
            config.semantic_cache = Some(similarity);
        }
    }
    if let Some(context) = file.context {
        let span = context.span();
        let context = context.into_inner();
        let backend = match &context.backend {
            None => ContextBackend::Memory,
            Some(b) if b.get_ref() == "memory" => ContextBackend::Memory,
            Some(b) if b.get_ref() == "redis" => {
                if config.redis.is_empty() {
                    return Err(fail(
                        b.span(),
                        "context.backend \"redis\" needs `redis` URLs".into(),
                    ));
                }
                ContextBackend::Redis
            }
            Some(b) => {
                return Err(fail(
                    b.span(),
                    format!(
                        "context.backend {:?}: expected \"memory\" or \"redis\"",
                        b.get_ref()
                    ),
                ));
            }
        };
        let name = context.embeddings_model.get_ref();
        if !names.contains(name.as_str()) {
            return Err(fail(
                context.embeddings_model.span(),
                format!("context.embeddings_model {name:?}: not a model of [[models]]"),
            ));
        }
        let d = ContextConfig::new(name.clone());
        let dimensions = context.dimensions.unwrap_or(d.dimensions);
        if dimensions == 0 || dimensions > 16_384 {
            return Err(fail(
                span,
                format!("context.dimensions {dimensions}: expected 1 to 16384"),
            ));
        }
        config.context = Some(ContextConfig {
            embeddings_model: name.clone(),
            dimensions,
            history_turns: context.history_turns.unwrap_or(d.history_turns),
            budget_tokens: context.budget_tokens.unwrap_or(d.budget_tokens),
            top_k: context.top_k.unwrap_or(d.top_k),
            min_score: context.min_score.unwrap_or(d.min_score),
            backend,
        });
    }
    if let Some(persistence) = file.persistence {
        config.persistence = Some(persistence_of(persistence, env, &fail)?);
    }
    if config.semantic_cache.is_some() && config.context.is_none() {
        return Err(ConfigError::new(format!(
            "{shown}: cache.semantic needs a [context] section (its embeddings model)"
        )));
    }
    if let Some(otel) = file.otel {
        let endpoint = &otel.get_ref().endpoint;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(fail(
                otel.span(),
                format!("otel.endpoint {endpoint}: expected an http:// or https:// URL"),
            ));
        }
        config.otel = Some(otel.into_inner());
    }
    for (key, value) in [
        ("upstream_timeout_ms", file.upstream_timeout_ms),
        ("connect_timeout_ms", file.connect_timeout_ms),
        ("circuit_open_wait_ms", file.circuit_open_wait_ms),
        ("sse_heartbeat_ms", file.sse_heartbeat_ms),
    ] {
        if value == Some(0) {
            return Err(ConfigError::File {
                path: shown.clone(),
                line: text.find(key).map(|at| line_of(text, at)),
                reason: format!("{key} is at least 1"),
            });
        }
    }
    let millis = Duration::from_millis;
    if let Some(v) = file.upstream_timeout_ms {
        config.upstream_timeout = millis(v);
    }
    if let Some(v) = file.connect_timeout_ms {
        config.connect_timeout = millis(v);
    }
    if let Some(v) = file.circuit_open_wait_ms {
        config.circuit_open_wait = millis(v);
    }
    if let Some(v) = file.sse_heartbeat_ms {
        config.sse_heartbeat = millis(v);
    }
    if let Some(v) = file.mock_token_delay_ms {
        config.mock_token_delay = millis(v);
    }
    if let Some(v) = file.pullers {
        config.pullers = v;
    }
    if let Some(v) = file.secure_cookies {
        config.secure_cookies = v;
    }
    Ok(())
}

/// Requests in flight per deployment when the file doesn't say.
const DEFAULT_MAX_CONCURRENCY: u32 = 256;

/// A base URL the gateway can reach: http or https, a host, no query.
fn check_url(url: &Spanned<String>) -> Result<(), String> {
    let text = url.get_ref();
    let parsed = text.parse::<http::Uri>().ok();
    let valid = parsed.as_ref().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some_and(|h| !h.is_empty())
            && u.query().is_none()
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "base_url {text}: expected an http:// or https:// URL with a host and no query"
        ))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// `[persistence]`: a PostgreSQL URL (in the file or, with its password,
/// in an environment variable), the table, how often turns are written.
fn persistence_of(
    file: Spanned<PersistenceFile>,
    env: &dyn Fn(&str) -> Option<String>,
    fail: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<PersistenceConfig, ConfigError> {
    let span = file.span();
    let file = file.into_inner();
    let url = match (file.postgres_url, file.postgres_url_env) {
        (Some(url), None) => url.into_inner(),
        (None, Some(name)) => env(name.get_ref())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                fail(
                    name.span(),
                    format!(
                        "persistence.postgres_url_env: the environment variable {} is not set",
                        name.get_ref()
                    ),
                )
            })?,
        _ => {
            return Err(fail(
                span,
                "[persistence] needs one of postgres_url or postgres_url_env".into(),
            ));
        }
    };
    let mut persistence = PersistenceConfig::new(Secret::new(url));
    if let Some(table) = file.table {
        persistence.table = table.get_ref().clone();
    }
    if let Some(n) = file.every_turns {
        if *n.get_ref() == 0 {
            return Err(fail(
                n.span(),
                "persistence.every_turns is at least 1".into(),
            ));
        }
        persistence.every_turns = *n.get_ref();
    }
    if let Some(ms) = file.max_delay_ms {
        if *ms.get_ref() == 0 {
            return Err(fail(
                ms.span(),
                "persistence.max_delay_ms is at least 1".into(),
            ));
        }
        persistence.max_delay = Duration::from_millis(*ms.get_ref());
    }
    // The URL and the table are checked the way the sink will use them.
    tower_ai_context::durable::PostgresSink::builder(persistence.postgres_url.expose())
        .table(persistence.table.clone())
        .build()
        .map_err(|e| fail(span, format!("[persistence]: {e}")))?;
    Ok(persistence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-up".into()),
            "GATEWAY_ADMIN_TOKEN" => Some("admin-secret".into()),
            _ => None,
        }
    }

    fn read(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        apply(&mut config, Path::new("gateway.toml"), text, &env).map(|()| config)
    }

    const FULL: &str = r#"
listen = "127.0.0.1:9090"
redis = ["redis://127.0.0.1:6379"]

[admin]
token_env = "GATEWAY_ADMIN_TOKEN"

[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
upstream_model = "gpt-4o-mini-2024-07-18"
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[[keys]]
key = "sk-team-a"
tier = "pro"
budget = { usd = 5.0, per = "day" }

[[keys]]
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"

[[limits]]
route = "/v1/chat/completions"
tier = "pro"
requests = { capacity = 100, per_second = 10.0 }
tokens = { capacity = 200000, per_minute = 200000.0 }

[cache]
chat_ttl_s = 0
"#;

    #[test]
    fn reads_every_key() {
        let c = read(FULL);
        let Ok(c) = c else {
            panic!("a valid file: {c:?}")
        };
        assert_eq!(c.listen.port(), 9090);
        assert_eq!(c.redis.len(), 1);
        assert!(c.admin_token.is_some());
        assert_eq!(c.models.len(), 1);
        let m = &c.models[0];
        assert_eq!(m.provider, Provider::OpenAi);
        assert_eq!(m.deployments.len(), 1);
        let d = &m.deployments[0];
        assert_eq!(d.name, "gpt-4o-mini");
        assert_eq!(d.base_url, "https://api.openai.com/v1");
        assert_eq!(d.api_key.as_ref().map(Secret::expose), Some("sk-up"));
        assert_eq!((d.weight, d.max_concurrency), (1, 256));
        assert_eq!(m.balance, BalanceStrategy::CacheAware);
        assert_eq!(m.upstream_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys[0].sha256, key_digest("sk-team-a"));
        assert_eq!(c.keys[0].tier.as_deref(), Some("pro"));
        assert_eq!(c.keys[1].name, "key-2");
        assert_eq!(c.keys[1].sha256[31], 1);
        assert_eq!(c.limits[0].requests.map(|b| b.capacity), Some(100));
        let per_second = c.limits[0].tokens.map(|b| b.per_second).unwrap_or_default();
        assert!((per_second - 200_000.0 / 60.0).abs() < 1e-9);
        assert_eq!(c.cache.chat, Duration::ZERO);
        assert_eq!(c.cache.embeddings, CacheTtls::default().embeddings);
        // Secrets never show in debug output.
        assert!(!format!("{c:?}").contains("sk-up"));
        assert!(!format!("{c:?}").contains("admin-secret"));
    }

    #[test]
    fn reads_deployments_balance_and_fallbacks() {
        let c = read(
            r#"
[[models]]
name = "llama"
provider = "openai"
api_key_env = "OPENAI_API_KEY"
balance = "least_loaded"
retries = 1
fallbacks = ["gpt"]
sticky_header = "X-Session-Id"
deployments = [
  { base_url = "http://10.0.0.1:8000/v1", max_concurrency = 64, max_starting_tokens = 2048 },
  { name = "big", base_url = "http://10.0.0.2:8000", weight = 3 },
]

[[models]]
name = "gpt"
provider = "openai"
base_url = "https://api.openai.com/v1"
"#,
        );
        let Ok(c) = c else {
            panic!("a valid file: {c:?}")
        };
        let m = &c.models[0];
        assert_eq!(m.balance, BalanceStrategy::LeastLoaded);
        assert_eq!(m.retries, Some(1));
        assert_eq!(m.fallbacks, ["gpt"]);
        assert_eq!(
            m.sticky_header.as_ref().map(|h| h.as_str()),
            Some("x-session-id")
        );
        let names: Vec<_> = m.deployments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["llama/0", "llama/big"]);
        assert_eq!(
            (m.deployments[0].max_concurrency, m.deployments[0].weight),
            (64, 1)
        );
        assert_eq!(
            (m.deployments[1].max_concurrency, m.deployments[1].weight),
            (256, 3)
        );
        assert_eq!(
            (
                m.deployments[0].max_starting_tokens,
                m.deployments[1].max_starting_tokens
            ),
            (Some(2048), None)
        );
        assert!(
            m.deployments
                .iter()
                .all(|d| d.api_key.as_ref().map(Secret::expose) == Some("sk-up")),
            "a deployment takes the model's key unless it names its own"
        );
        assert_eq!(c.models[1].fallbacks, Vec::<String>::new());
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../examples/gateway.toml");
        let mut config = Config::default();
        let every_variable_set = |_: &str| Some("set".to_owned());
        let read = apply(
            &mut config,
            Path::new("gateway.toml"),
            text,
            &every_variable_set,
        );
        assert!(read.is_ok(), "{read:?}");
        assert!(
            config
                .models
                .iter()
                .any(|m| m.deployments.len() > 1 && !m.fallbacks.is_empty())
        );
    }

    #[track_caller]
    fn refused(text: &str, line: usize, says: &str) {
        match read(text) {
            Err(ConfigError::File {
                line: Some(l),
                reason,
                ..
            }) => {
                assert_eq!(l, line, "{reason}");
                assert!(reason.contains(says), "{reason}");
            }
            other => panic!("expected a refusal at line {line}: {other:?}"),
        }
    }

    #[test]
    fn context_and_the_semantic_cache_are_checked() {
        let model = "[[models]]\nname = \"e\"\nprovider = \"openai\"\nbase_url = \"http://h\"\n";
        refused(
            &format!("{model}[context]\nembeddings_model = \"nope\"\n"),
            6,
            "not a model of [[models]]",
        );
        refused(
            &format!("{model}[context]\nembeddings_model = \"e\"\nbackend = \"disk\"\n"),
            7,
            "expected \"memory\" or \"redis\"",
        );
        refused(
            &format!("{model}[cache]\nsemantic = true\nsimilarity = 1.5\n"),
            7,
            "expected 0 to 1",
        );
        assert!(
            read(&format!("{model}[cache]\nsemantic = true\n")).is_err(),
            "needs [context]"
        );
        let config = read(&format!(
            "{model}[context]\nembeddings_model = \"e\"\ntop_k = 2\n[cache]\nsemantic = true\n"
        ))
        .expect("valid");
        assert_eq!(config.semantic_cache, Some(0.95));
        let context = config.context.expect("a context");
        assert_eq!(
            (context.top_k, context.dimensions, context.budget_tokens),
            (2, 1536, 4096)
        );
    }

    #[test]
    fn persistence_is_checked() {
        refused("[persistence]\nevery_turns = 2\n", 1, "one of postgres_url");
        refused(
            "[persistence]\npostgres_url_env = \"NOPE\"\n",
            2,
            "NOPE is not set",
        );
        refused(
            "[persistence]\npostgres_url = \"postgres://h/db\"\nevery_turns = 0\n",
            3,
            "at least 1",
        );
        refused(
            "[persistence]\npostgres_url = \"postgres://h/db\"\ntable = \"x; drop\"\n",
            1,
            "table",
        );
        let config =
            read("[persistence]\npostgres_url = \"postgres://u@h:5/db\"\nevery_turns = 2\n")
                .expect("valid");
        let persistence = config.persistence.expect("persistence");
        assert_eq!(persistence.postgres_url.expose(), "postgres://u@h:5/db");
        assert_eq!(persistence.every_turns, 2);
        assert_eq!(persistence.table, "tower_ai_conversation_turns");
    }

    #[test]
    fn refuses_a_bad_file_with_the_line_and_the_reason() {
        refused("listen = 5\n", 1, "string");
        refused("\n\nfrobnicate = true\n", 3, "frobnicate");
        refused(
            "[[models]]\nname = \"m\"\nprovider = \"azure\"\nbase_url = \"http://h\"\n",
            3,
            "azure",
        );
        refused(
            "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"ftp://h\"\n",
            4,
            "http",
        );
        refused(
            "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"http://h\"\napi_key_env = \"NOPE\"\n",
            5,
            "NOPE",
        );
        refused("[admin]\ntoken_env = \"NOPE\"\n", 2, "NOPE");
        refused("[[keys]]\nkey_sha256 = \"abc\"\n", 2, "64 hex");
        refused(
            &format!("[[keys]]\nkey_sha256 = \"+a{}\"\n", "0".repeat(62)),
            2,
            "64 hex",
        );
        refused(
            "[[keys]]\nname = \"a\"\nkey = \"k1\"\n[[keys]]\nname = \"a\"\nkey = \"k2\"\n",
            6,
            "two keys",
        );
        refused(
            "[[limits]]\nroute = \"/v1/\"\nrequests = { capacity = 5, per_second = 1.0 }\n[[limits]]\nroute = \"/v1/\"\nrequests = { capacity = 6, per_second = 1.0 }\n",
            5,
            "twice",
        );
        refused("\nupstream_timeout_ms = 0\n", 2, "at least 1");
        refused(
            "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"https://h/v1?x=1\"\n",
            4,
            "no query",
        );
        refused(
            "[[limits]]\nroute = \"/v1/\"\nrequests = { capacity = 5, per_second = 1.0, per_minute = 2.0 }\n",
            3,
            "exactly one",
        );
        refused("[[limits]]\nroute = \"/v1/\"\n", 2, "give requests");
        refused(
            "[[keys]]\nkey = \"a\"\nbudget = { usd = 1.0, per = \"fortnight\" }\n",
            3,
            "fortnight",
        );
        let model = "[[models]]\nname = \"m\"\nprovider = \"openai\"\n";
        refused(model, 2, "a base_url or deployments");
        refused(
            &format!(
                "{model}base_url = \"http://h\"\ndeployments = [{{ base_url = \"http://i\" }}]\n"
            ),
            4,
            "not both",
        );
        refused(
            &format!("{model}deployments = [{{ base_url = \"http://i\", weight = 0 }}]\n"),
            4,
            "at least 1",
        );
        refused(
            &format!(
                "{model}deployments = [{{ base_url = \"http://i\", max_starting_tokens = 0 }}]\n"
            ),
            4,
            "max_starting_tokens is at least 1",
        );
        refused(
            &format!(
                "{model}deployments = [{{ base_url = \"http://i\", name = \"x\" }}, {{ base_url = \"http://j\", name = \"x\" }}]\n"
            ),
            4,
            "two deployments",
        );
        refused(
            &format!("{model}deployments = [{{ base_url = \"ftp://i\" }}]\n"),
            4,
            "http",
        );
        refused(
            &format!("{model}base_url = \"http://h\"\nbalance = \"fastest\"\n"),
            5,
            "fastest",
        );
        refused(
            &format!("{model}base_url = \"http://h\"\nfallbacks = [\"nope\"]\n"),
            5,
            "nope is not another configured model",
        );
        refused(
            &format!("{model}base_url = \"http://h\"\nfallbacks = [\"m\"]\n"),
            5,
            "not another",
        );
        refused(
            &format!("{model}base_url = \"http://h\"\nsticky_header = \"a b\"\n"),
            5,
            "not a header name",
        );
    }
}
