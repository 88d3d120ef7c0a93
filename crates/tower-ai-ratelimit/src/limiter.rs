//! Checking keys against policies without a tower service.

use tower_ai_core::key::ClientKey;

use crate::error::ConfigError;
use crate::policy::Policy;
use crate::resolver::{Policies, PolicySet};
use crate::store::{Backend, Charge, MemoryStore, Verdict};

/// A set of policies and a store, for checks outside a tower service (a
/// custom middleware, a job queue, a WebSocket).
///
/// ```
/// use tower_ai_core::key::ClientKey;
/// use tower_ai_ratelimit::{Limiter, MemoryStore, Policy, Rate};
///
/// let limiter = Limiter::memory([Policy::token_bucket(2, Rate::per_second(1.0))], MemoryStore::new()).unwrap();
/// let key = ClientKey::digest("user", "u-1");
/// assert!(limiter.check_now(&key, 1).is_some_and(|v| v.allowed()));
/// assert!(limiter.check_now(&key, 1).is_some_and(|v| v.allowed()));
/// assert!(limiter.check_now(&key, 1).is_some_and(|v| !v.allowed()));
/// ```
#[derive(Debug, Clone)]
pub struct Limiter {
    set: PolicySet,
    backend: Backend,
}

impl Limiter {
    fn new(
        policies: impl IntoIterator<Item = Policy>,
        backend: Backend,
    ) -> Result<Self, ConfigError> {
        let resolver = Policies::new().otherwise(policies).compile()?;
        let set = resolver
            .default_set()
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::EmptyLimiter)?;
        Ok(Self { set, backend })
    }

    /// A limiter on a memory store.
    pub fn memory(
        policies: impl IntoIterator<Item = Policy>,
        store: MemoryStore,
    ) -> Result<Self, ConfigError> {
        Self::new(policies, Backend::Memory(store))
    }

    /// A limiter on Redis.
    #[cfg(feature = "redis")]
    pub fn redis(
        policies: impl IntoIterator<Item = Policy>,
        store: crate::store::RedisStore,
    ) -> Result<Self, ConfigError> {
        Self::new(policies, Backend::Redis(store))
    }

    /// Checks `cost` against every policy for `key`, charging all or none.
    pub async fn check(&self, key: &ClientKey, cost: u64) -> Verdict {
        match self.set.as_ref() {
            [one] => self.backend.check(key, &[charge(one, cost)]).await,
            set => {
                let charges: Vec<Charge<'_>> = set.iter().map(|c| charge(c, cost)).collect();
                self.backend.check(key, &charges).await
            }
        }
    }

    /// Like [`Limiter::check`], at once, for a memory store (`None` for
    /// Redis, whose checks are a round trip).
    pub fn check_now(&self, key: &ClientKey, cost: u64) -> Option<Verdict> {
        match self.set.as_ref() {
            [one] => self.backend.check_local(key, &[charge(one, cost)]),
            set => {
                let charges: Vec<Charge<'_>> = set.iter().map(|c| charge(c, cost)).collect();
                self.backend.check_local(key, &charges)
            }
        }
    }
}

fn charge(c: &crate::resolver::Compiled, cost: u64) -> Charge<'_> {
    Charge {
        slot: c.slot,
        name: c.policy.name(),
        spec: c.spec,
        cost,
    }
}
