//! The model table: what clients may ask for, and where each name goes.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use tower_ai_balance::Pool;

use crate::config::{Price, Provider};
use crate::endpoint::Endpoint;

/// One model as the gateway serves it.
#[derive(Debug)]
pub(crate) struct ModelRoute {
    /// The name clients use (from the config: safe as a metric label).
    pub(crate) name: Arc<str>,
    pub(crate) provider: Provider,
    /// Its deployments, and the balancer's state over them.
    pub(crate) pool: Pool<Arc<Deployment>>,
    /// In pull mode, the queue its requests wait in for a deployment's
    /// puller.
    pub(crate) queue: Option<tower_ai_balance::pull::PullQueue>,
    /// How often its deployments' `/metrics` are read, if they are.
    pub(crate) metrics_interval: Option<std::time::Duration>,
    /// Models tried in order when this one can't answer.
    pub(crate) fallbacks: Vec<Arc<str>>,
    /// The name sent upstream, when it differs from `name`.
    pub(crate) upstream_model: Option<Arc<str>>,
    pub(crate) price: Option<Price>,
    /// Whether this route answers for any model name (the no-config demo,
    /// or `--upstream` without a model table).
    pub(crate) wildcard: bool,
}

/// One server (or provider account) serving a model: its client and the
/// credential it is sent.
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) endpoint: Endpoint,
    /// The provider credential, as its header value (marked sensitive).
    pub(crate) credential: Option<HeaderValue>,
    /// In pull mode, its puller's bound on the prompt tokens starting.
    pub(crate) max_starting_tokens: Option<u64>,
}

impl Deployment {
    pub(crate) fn new(provider: Provider, endpoint: Endpoint, key: Option<&str>) -> Self {
        Self {
            endpoint,
            credential: key.and_then(|key| credential(provider, key)),
            max_starting_tokens: None,
        }
    }
}

/// The deployment the balancer picked for a request, in its extensions.
pub(crate) type Picked = tower_ai_balance::Endpoint<Arc<Deployment>>;

impl ModelRoute {
    /// A route over `pool`, with no renaming, no price, no fallbacks.
    pub(crate) fn new(name: &str, provider: Provider, pool: Pool<Arc<Deployment>>) -> Self {
        Self {
            name: name.into(),
            provider,
            pool,
            queue: None,
            metrics_interval: None,
            fallbacks: Vec::new(),
            upstream_model: None,
            price: None,
            wildcard: false,
        }
    }

    /// A route to one server, not retried (clients retry on their own; a
    /// retry on the same server is theirs to make).
    pub(crate) fn single(
        name: &str,
        provider: Provider,
        endpoint: Endpoint,
        key: Option<&str>,
    ) -> Result<Self, tower_ai_balance::ConfigError> {
        let deployment = Arc::new(Deployment::new(provider, endpoint, key));
        let pool = Pool::builder(name)
            .endpoint(tower_ai_balance::Endpoint::new(name, deployment))
            .retries(0)
            .build()?;
        Ok(Self::new(name, provider, pool))
    }

    /// How the route picks a deployment, as the config names it.
    pub(crate) fn balance(&self) -> &'static str {
        if self.queue.is_some() {
            "pull"
        } else {
            self.pool.strategy().name()
        }
    }

    /// The deployment a request goes to when nothing was picked for it (a
    /// model list from the upstream): the first one.
    pub(crate) fn first(&self) -> Option<&Arc<Deployment>> {
        self.pool.endpoints().first().map(|e| e.target())
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
