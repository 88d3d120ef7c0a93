//! `[[models]]`: each model's name, provider, deployments (or one
//! `base_url`), credentials, balancing, fallbacks and price.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::schema::{DeploymentFile, ModelFile};
use super::source::Source;
use crate::config::{BalanceStrategy, ConfigError, DeploymentConfig, ModelConfig, Secret};

/// Requests in flight per deployment when the file doesn't say.
const DEFAULT_MAX_CONCURRENCY: u32 = 256;

/// The file's models, each checked, and their fallbacks checked against
/// the others.
pub(super) fn read(
    source: &Source<'_>,
    models: Vec<ModelFile>,
) -> Result<Vec<ModelConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut read = Vec::with_capacity(models.len());
    for model in &models {
        read.push(model_of(source, model, &mut names)?);
    }
    // A fallback names another configured model.
    for (model, config) in models.iter().zip(&read) {
        for fallback in &model.fallbacks {
            if *fallback.get_ref() == config.name || !names.contains(fallback.get_ref()) {
                return Err(source.fail(
                    fallback.span(),
                    format!(
                        "model {}: the fallback {} is not another configured model",
                        config.name,
                        fallback.get_ref()
                    ),
                ));
            }
        }
    }
    Ok(read)
}

/// One model; `names` holds the names of the models before it.
fn model_of(
    source: &Source<'_>,
    model: &ModelFile,
    names: &mut HashSet<String>,
) -> Result<ModelConfig, ConfigError> {
    let name = model.name.get_ref().trim().to_owned();
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(source.fail(
            model.name.span(),
            "a model name is 1 to 256 characters, without control characters".into(),
        ));
    }
    if !names.insert(name.clone()) {
        return Err(source.fail(
            model.name.span(),
            format!("the model {name} is listed twice"),
        ));
    }
    let credentials = Credentials {
        source,
        model: &name,
    };
    let api_key = model
        .api_key_env
        .as_ref()
        .map(|var| credentials.key(var))
        .transpose()?;
    let tls_ca_file = model
        .tls_ca_file
        .as_ref()
        .map(|file| credentials.ca(file))
        .transpose()?;
    let deployments = match (&model.base_url, model.deployments.is_empty()) {
        (Some(url), true) => {
            check_url(url).map_err(|reason| source.fail(url.span(), reason))?;
            vec![DeploymentConfig {
                name: name.clone(),
                base_url: url.get_ref().clone(),
                api_key,
                tls_ca_file,
                weight: 1,
                max_concurrency: DEFAULT_MAX_CONCURRENCY,
                max_starting_tokens: None,
            }]
        }
        (None, false) => {
            let inherited = Inherited {
                api_key,
                tls_ca_file,
            };
            deployments(&credentials, model, &inherited)?
        }
        (Some(url), false) => {
            return Err(source.fail(
                url.span(),
                format!("model {name}: either base_url or deployments, not both"),
            ));
        }
        (None, true) => {
            return Err(source.fail(
                model.name.span(),
                format!("model {name}: a base_url or deployments is required"),
            ));
        }
    };
    let balance = match &model.balance {
        None => BalanceStrategy::default(),
        Some(value) => match value.get_ref().as_str() {
            "cache_aware" => BalanceStrategy::CacheAware,
            "least_loaded" => BalanceStrategy::LeastLoaded,
            "round_robin" => BalanceStrategy::RoundRobin,
            "pull" => BalanceStrategy::Pull,
            other => {
                return Err(source.fail(
                    value.span(),
                    format!(
                        "balance {other:?}: expected \"cache_aware\", \"least_loaded\", \"round_robin\" or \"pull\""
                    ),
                ));
            }
        },
    };
    let sticky_header = match &model.sticky_header {
        None => None,
        Some(header) => Some(
            http::HeaderName::from_bytes(header.get_ref().trim().as_bytes()).map_err(|_| {
                source.fail(
                    header.span(),
                    format!("sticky_header {:?}: not a header name", header.get_ref()),
                )
            })?,
        ),
    };
    let price = match &model.price {
        None => None,
        Some(price) => {
            let p = *price.get_ref();
            let valid = |v: f64| v.is_finite() && v >= 0.0;
            if !(valid(p.input_per_mtok) && valid(p.output_per_mtok)) {
                return Err(source.fail(
                    price.span(),
                    "a price is zero or more dollars per million tokens".into(),
                ));
            }
            Some(p)
        }
    };
    Ok(ModelConfig {
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
        upstream_model: model.upstream_model.clone(),
        price,
    })
}

/// What a model's deployments take from the model when they don't say.
struct Inherited {
    api_key: Option<Secret>,
    tls_ca_file: Option<PathBuf>,
}

/// A model's `deployments`, each checked (at most 64, each name once).
fn deployments(
    credentials: &Credentials<'_>,
    model: &ModelFile,
    inherited: &Inherited,
) -> Result<Vec<DeploymentConfig>, ConfigError> {
    let (source, name) = (credentials.source, credentials.model);
    let mut deployments = Vec::with_capacity(model.deployments.len());
    let mut deployment_names = HashSet::new();
    for (i, spanned) in model.deployments.iter().enumerate() {
        let d: &DeploymentFile = spanned.get_ref();
        check_url(&d.base_url).map_err(|reason| source.fail(d.base_url.span(), reason))?;
        let deployment = DeploymentConfig {
            name: match &d.name {
                Some(given) => format!("{name}/{}", given.trim()),
                None => format!("{name}/{i}"),
            },
            base_url: d.base_url.get_ref().clone(),
            api_key: match &d.api_key_env {
                Some(var) => Some(credentials.key(var)?),
                None => inherited.api_key.clone(),
            },
            tls_ca_file: match &d.tls_ca_file {
                Some(file) => Some(credentials.ca(file)?),
                None => inherited.tls_ca_file.clone(),
            },
            weight: d.weight.unwrap_or(1),
            max_concurrency: d.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
            max_starting_tokens: d.max_starting_tokens.as_ref().map(|t| *t.get_ref()),
        };
        if let Some(tokens) = &d.max_starting_tokens
            && *tokens.get_ref() == 0
        {
            return Err(source.fail(
                tokens.span(),
                "a deployment's max_starting_tokens is at least 1".into(),
            ));
        }
        if deployment.weight == 0 || deployment.max_concurrency == 0 {
            return Err(source.fail(
                spanned.span(),
                "a deployment's weight and max_concurrency are at least 1".into(),
            ));
        }
        if !deployment_names.insert(deployment.name.clone()) {
            return Err(source.fail(
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
        return Err(source.fail(
            model.name.span(),
            format!("model {name}: at most 64 deployments"),
        ));
    }
    Ok(deployments)
}

/// Reads what a model's entries name: its keys' variables and its CA files.
struct Credentials<'a> {
    source: &'a Source<'a>,
    model: &'a str,
}

impl Credentials<'_> {
    /// The key in the environment variable `var` names.
    fn key(&self, var: &Spanned<String>) -> Result<Secret, ConfigError> {
        self.source
            .env(var.get_ref())
            .map(Secret::new)
            .ok_or_else(|| {
                self.source.fail(
                    var.span(),
                    format!(
                        "model {}: the environment variable {} (api_key_env) is not set",
                        self.model,
                        var.get_ref()
                    ),
                )
            })
    }

    /// A CA file, relative to the config file's folder.
    fn ca(&self, file: &Spanned<PathBuf>) -> Result<PathBuf, ConfigError> {
        let resolved = self.source.base.join(file.get_ref());
        if resolved.is_file() {
            Ok(resolved)
        } else {
            Err(self.source.fail(
                file.span(),
                format!("tls_ca_file {}: no such file", resolved.display()),
            ))
        }
    }
}

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
