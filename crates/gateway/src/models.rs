//! The model table: what clients may ask for, and where each name goes.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;

use crate::config::{Price, Provider};
use crate::endpoint::Endpoint;

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
