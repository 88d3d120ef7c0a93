//! `[cache]`, `[context]`, `[persistence]` and `[otel]`.

use std::time::Duration;

use toml::Spanned;

use super::schema::{CacheFile, ContextFile, PersistenceFile};
use super::source::Source;
use crate::config::{
    CacheTtls, ConfigError, ContextBackend, ContextConfig, ModelConfig, OtelConfig,
    PersistenceConfig, Secret,
};

/// `[cache]`: each route's TTL (the default where the file says none), and
/// the semantic cache's similarity when it is on.
pub(super) fn cache(
    source: &Source<'_>,
    cache: CacheFile,
) -> Result<(CacheTtls, Option<f32>), ConfigError> {
    let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
    let d = CacheTtls::default();
    let ttls = CacheTtls {
        chat: secs(cache.chat_ttl_s, d.chat),
        completions: secs(cache.completions_ttl_s, d.completions),
        embeddings: secs(cache.embeddings_ttl_s, d.embeddings),
        responses: secs(cache.responses_ttl_s, d.responses),
        messages: secs(cache.messages_ttl_s, d.messages),
    };
    if cache.semantic != Some(true) {
        return Ok((ttls, None));
    }
    let similarity = match cache.similarity {
        None => 0.95,
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            return Err(source.fail(
                s.span(),
                format!("cache.similarity {}: expected 0 to 1", s.get_ref()),
            ));
        }
    };
    Ok((ttls, Some(similarity)))
}

/// `[context]`: its embeddings model (one of `models`), its index's
/// backend (Redis only when the gateway has Redis) and its sizes.
pub(super) fn context(
    source: &Source<'_>,
    context: Spanned<ContextFile>,
    models: &[ModelConfig],
    has_redis: bool,
) -> Result<ContextConfig, ConfigError> {
    let span = context.span();
    let context = context.into_inner();
    let backend = match &context.backend {
        None => ContextBackend::Memory,
        Some(b) if b.get_ref() == "memory" => ContextBackend::Memory,
        Some(b) if b.get_ref() == "redis" => {
            if !has_redis {
                return Err(source.fail(
                    b.span(),
                    "context.backend \"redis\" needs `redis` URLs".into(),
                ));
            }
            ContextBackend::Redis
        }
        Some(b) => {
            return Err(source.fail(
                b.span(),
                format!(
                    "context.backend {:?}: expected \"memory\" or \"redis\"",
                    b.get_ref()
                ),
            ));
        }
    };
    let name = context.embeddings_model.get_ref();
    if !models.iter().any(|m| m.name == *name) {
        return Err(source.fail(
            context.embeddings_model.span(),
            format!("context.embeddings_model {name:?}: not a model of [[models]]"),
        ));
    }
    let d = ContextConfig::new(name.clone());
    let dimensions = context.dimensions.unwrap_or(d.dimensions);
    if dimensions == 0 || dimensions > 16_384 {
        return Err(source.fail(
            span,
            format!("context.dimensions {dimensions}: expected 1 to 16384"),
        ));
    }
    Ok(ContextConfig {
        embeddings_model: name.clone(),
        dimensions,
        history_turns: context.history_turns.unwrap_or(d.history_turns),
        budget_tokens: context.budget_tokens.unwrap_or(d.budget_tokens),
        top_k: context.top_k.unwrap_or(d.top_k),
        min_score: context.min_score.unwrap_or(d.min_score),
        backend,
    })
}

/// `[persistence]`: a PostgreSQL URL (in the file or, with its password,
/// in an environment variable), the table, how often turns are written.
pub(super) fn persistence(
    source: &Source<'_>,
    file: Spanned<PersistenceFile>,
) -> Result<PersistenceConfig, ConfigError> {
    let span = file.span();
    let file = file.into_inner();
    let url = match (file.postgres_url, file.postgres_url_env) {
        (Some(url), None) => url.into_inner(),
        (None, Some(name)) => source.env(name.get_ref()).ok_or_else(|| {
            source.fail(
                name.span(),
                format!(
                    "persistence.postgres_url_env: the environment variable {} is not set",
                    name.get_ref()
                ),
            )
        })?,
        _ => {
            return Err(source.fail(
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
            return Err(source.fail(n.span(), "persistence.every_turns is at least 1".into()));
        }
        persistence.every_turns = *n.get_ref();
    }
    if let Some(ms) = file.max_delay_ms {
        if *ms.get_ref() == 0 {
            return Err(source.fail(ms.span(), "persistence.max_delay_ms is at least 1".into()));
        }
        persistence.max_delay = Duration::from_millis(*ms.get_ref());
    }
    // The URL and the table are checked the way the sink will use them.
    tower_ai_context::durable::PostgresSink::builder(persistence.postgres_url.expose())
        .table(persistence.table.clone())
        .build()
        .map_err(|e| source.fail(span, format!("[persistence]: {e}")))?;
    Ok(persistence)
}

/// `[otel]`: an http or https endpoint.
pub(super) fn otel(
    source: &Source<'_>,
    otel: Spanned<OtelConfig>,
) -> Result<OtelConfig, ConfigError> {
    let endpoint = &otel.get_ref().endpoint;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(source.fail(
            otel.span(),
            format!("otel.endpoint {endpoint}: expected an http:// or https:// URL"),
        ));
    }
    Ok(otel.into_inner())
}
