//! The model table: what clients may ask for, and where each name goes.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use serde::Deserialize;

use crate::upstream::Endpoint;

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

/// One model as the gateway serves it.
#[derive(Debug)]
pub(crate) struct ModelRoute {
    /// The name clients use (from the config: safe as a metric label).
    pub(crate) name: Arc<str>,
    pub(crate) provider: Provider,
    pub(crate) endpoint: Endpoint,
    /// The name sent upstream, when it differs from `name`.
    pub(crate) upstream_model: Option<Arc<str>>,
    /// The provider credential, as its header value (marked sensitive).
    pub(crate) credential: Option<HeaderValue>,
    pub(crate) price: Option<Price>,
    /// Whether this route answers for any model name (the no-config demo,
    /// or `--upstream` without a model table).
    pub(crate) wildcard: bool,
}

impl ModelRoute {
    /// A route with no renaming, no price.
    pub(crate) fn new(
        name: &str,
        provider: Provider,
        endpoint: Endpoint,
        key: Option<&str>,
    ) -> Self {
        Self {
            name: name.into(),
            provider,
            endpoint,
            upstream_model: None,
            credential: key.and_then(|key| credential(provider, key)),
            price: None,
            wildcard: false,
        }
    }
}

/// A provider key as the header value its provider reads.
pub(crate) fn credential(provider: Provider, key: &str) -> Option<HeaderValue> {
    let value = match provider {
        Provider::OpenAi => HeaderValue::from_str(&format!("Bearer {key}")),
        Provider::Anthropic => HeaderValue::from_str(key),
    };
    value.ok().map(|mut v| {
        v.set_sensitive(true);
        v
    })
}

/// The model a request was routed to, in its extensions: the upstream
/// client sends it to this model's server.
#[derive(Debug, Clone)]
pub(crate) struct Target(pub(crate) Arc<ModelRoute>);

/// The model table.
#[derive(Debug, Clone, Default)]
pub(crate) struct Models {
    by_name: HashMap<Arc<str>, Arc<ModelRoute>>,
    /// The configured order, for `/v1/models`.
    order: Vec<Arc<ModelRoute>>,
    /// The route for any other name, when there is one.
    wildcard: Option<Arc<ModelRoute>>,
}

impl Models {
    pub(crate) fn new(routes: Vec<ModelRoute>) -> Self {
        let mut models = Self::default();
        for route in routes {
            let route = Arc::new(route);
            if route.wildcard {
                models.wildcard = Some(route);
            } else {
                models.by_name.insert(route.name.clone(), route.clone());
                models.order.push(route);
            }
        }
        models
    }

    /// The route for a client's model name.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.by_name.get(name).or(self.wildcard.as_ref())
    }

    /// The named models, in the config's order.
    pub(crate) fn named(&self) -> &[Arc<ModelRoute>] {
        &self.order
    }

    /// The route for any name, when the gateway has no model table.
    pub(crate) fn wildcard(&self) -> Option<&Arc<ModelRoute>> {
        self.wildcard.as_ref()
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
