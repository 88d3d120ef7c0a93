use std::borrow::Cow;

use super::degrade::{Degrade, DegradeConfig};
use super::key::KeySpace;

/// The key prefix every store uses unless told otherwise.
pub const DEFAULT_PREFIX: &str = "tower-ai";

/// What every layer's Redis store builder takes the same way: the key prefix
/// and the [`Degrade`] health state its calls go through.
///
/// A builder holds one, forwards its `prefix` and `degrade` setters to
/// [`set_prefix`](Self::set_prefix) and [`set_degrade`](Self::set_degrade),
/// and builds its store from [`keys`](Self::keys) and
/// [`degrade_or`](Self::degrade_or).
///
/// # Example
/// ```
/// use tower_ai_core::redis::StoreOptions;
///
/// let mut options = StoreOptions::default();
/// assert_eq!(options.prefix(), "tower-ai");
/// options.set_prefix("my-app");
/// let tag = tower_ai_core::redis::Tag::fixed("t");
/// assert_eq!(options.keys("cache").key(&tag, "v"), "my-app:cache:{t}:v");
/// // No `Degrade` was given: a new one for the component.
/// assert_eq!(options.degrade_or("cache").component(), "cache");
/// ```
#[derive(Debug, Clone)]
pub struct StoreOptions {
    prefix: String,
    degrade: Option<Degrade>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            degrade: None,
        }
    }
}

impl StoreOptions {
    /// Sets the prefix of every key (default [`DEFAULT_PREFIX`]).
    pub fn set_prefix(&mut self, prefix: impl Into<String>) {
        self.prefix = prefix.into();
    }

    /// Sets the health state calls go through, e.g. a clone of one shared
    /// with the other stores on the same Redis.
    pub fn set_degrade(&mut self, degrade: Degrade) {
        self.degrade = Some(degrade);
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The health state given to [`set_degrade`](Self::set_degrade), if any.
    pub fn degrade(&self) -> Option<&Degrade> {
        self.degrade.as_ref()
    }

    /// The keys of `component` under the prefix
    /// (`{prefix}:{component}:…`).
    pub fn keys(&self, component: &str) -> KeySpace {
        KeySpace::new(&self.prefix, component)
    }

    /// The health state given to [`set_degrade`](Self::set_degrade), or a
    /// new `Degrade::new(component, DegradeConfig::default())`.
    pub fn degrade_or(&self, component: impl Into<Cow<'static, str>>) -> Degrade {
        self.degrade
            .clone()
            .unwrap_or_else(|| Degrade::new(component, DegradeConfig::default()))
    }
}
