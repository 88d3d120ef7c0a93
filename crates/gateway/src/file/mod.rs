//! The config file: its TOML schema (`schema`), and the checks that refuse
//! a bad file at start with the line and the reason, a section at a time.

mod keys;
mod models;
mod schema;
mod sections;
mod source;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError, Secret};
use schema::File;
use source::Source;

/// Reads a config file over `config`. `env` looks up the environment
/// variables the file names.
pub(crate) fn apply(
    config: &mut Config,
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let source = Source::new(path, text, env);
    let file: File = source.parse()?;

    if let Some(listen) = file.listen {
        config.listen = listen
            .get_ref()
            .parse()
            .map_err(|e| source.fail(listen.span(), format!("listen {}: {e}", listen.get_ref())))?;
    }
    if let Some(redis) = file.redis {
        config.redis = redis;
    }
    if let Some(admin) = file.admin {
        let name = admin.token_env.get_ref();
        let token = source.env(name).ok_or_else(|| {
            source.fail(
                admin.token_env.span(),
                format!("admin.token_env: the environment variable {name} is not set"),
            )
        })?;
        config.admin_token = Some(Secret::new(token));
    }

    let models = models::read(&source, file.models)?;
    config.keys.extend(keys::read_keys(&source, file.keys)?);
    config
        .limits
        .extend(keys::read_limits(&source, file.limits)?);
    if let Some(cache) = file.cache {
        let (ttls, semantic) = sections::cache(&source, cache)?;
        config.cache = ttls;
        if semantic.is_some() {
            config.semantic_cache = semantic;
        }
    }
    if let Some(context) = file.context {
        let has_redis = !config.redis.is_empty();
        config.context = Some(sections::context(&source, context, &models, has_redis)?);
    }
    config.models.extend(models);
    if let Some(persistence) = file.persistence {
        config.persistence = Some(sections::persistence(&source, persistence)?);
    }
    if config.semantic_cache.is_some() && config.context.is_none() {
        return Err(ConfigError::new(format!(
            "{}: cache.semantic needs a [context] section (its embeddings model)",
            source.shown
        )));
    }
    if let Some(otel) = file.otel {
        config.otel = Some(sections::otel(&source, otel)?);
    }

    for (key, value) in [
        ("upstream_timeout_ms", file.upstream_timeout_ms),
        ("connect_timeout_ms", file.connect_timeout_ms),
        ("circuit_open_wait_ms", file.circuit_open_wait_ms),
        ("sse_heartbeat_ms", file.sse_heartbeat_ms),
    ] {
        if value == Some(0) {
            return Err(source.fail_at_key(key, format!("{key} is at least 1")));
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
