//! Where rate-limit state lives: [`MemoryStore`] for one process, and with
//! the `redis` feature a Redis store shared by every replica, which falls
//! back to a memory store while Redis is down.

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{FailMode, RedisStore, RedisStoreBuilder};

use tower_ai_core::key::ClientKey;

use crate::algorithm::{Decision, Spec};

/// The most policies one request can be checked against.
pub const MAX_POLICIES: usize = 8;

/// One policy's part of a check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Charge<'a> {
    /// The policy's number within its layer.
    pub(crate) slot: u32,
    /// The policy's name (it names the Redis key).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) name: &'a str,
    pub(crate) spec: Spec,
    pub(crate) cost: u64,
}

/// The outcome of checking a request against its policies.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    allowed: bool,
    unavailable: bool,
    decisions: Decisions,
}

/// One decision inline (the common case: no allocation), or several.
#[derive(Debug, Clone, Default)]
enum Decisions {
    #[default]
    None,
    One(Decision),
    Many(Vec<Decision>),
}

impl Verdict {
    /// Whether every policy admitted the request.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Whether the store could not decide (Redis down with `fail_closed`).
    pub fn unavailable(&self) -> bool {
        self.unavailable
    }

    /// Each policy's decision, in the order of the policy set.
    pub fn decisions(&self) -> &[Decision] {
        match &self.decisions {
            Decisions::None => &[],
            Decisions::One(d) => std::slice::from_ref(d),
            Decisions::Many(v) => v,
        }
    }

    pub(crate) fn decisions_mut(&mut self) -> &mut [Decision] {
        match &mut self.decisions {
            Decisions::None => &mut [],
            Decisions::One(d) => std::slice::from_mut(d),
            Decisions::Many(v) => v,
        }
    }

    /// A verdict of one decision.
    pub(crate) fn single(d: Decision) -> Self {
        Self {
            allowed: d.allowed(),
            unavailable: false,
            decisions: Decisions::One(d),
        }
    }

    pub(crate) fn push(&mut self, d: Decision) {
        match &mut self.decisions {
            Decisions::None => self.decisions = Decisions::One(d),
            Decisions::One(first) => {
                let first = *first;
                self.decisions = Decisions::Many(vec![first, d]);
            }
            Decisions::Many(v) => v.push(d),
        }
    }

    pub(crate) fn set_allowed(&mut self, allowed: bool) {
        self.allowed = allowed;
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn unavailable_verdict() -> Self {
        Self {
            unavailable: true,
            ..Self::default()
        }
    }
}

/// The backend a layer checks against.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl Backend {
    pub(crate) fn check_local(&self, key: &ClientKey, charges: &[Charge<'_>]) -> Option<Verdict> {
        match self {
            Self::Memory(m) => Some(m.check(key, charges)),
            #[cfg(feature = "redis")]
            Self::Redis(_) => None,
        }
    }

    pub(crate) async fn check(&self, key: &ClientKey, charges: &[Charge<'_>]) -> Verdict {
        match self {
            Self::Memory(m) => m.check(key, charges),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.check(key, charges).await,
        }
    }

    /// Charges more (`refund == false`) or gives back, for reconciliation.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn adjust(&self, key: &ClientKey, charge: Charge<'_>, refund: bool) {
        match self {
            Self::Memory(m) => m.adjust(key, &charge, refund),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.adjust(key, charge, refund).await,
        }
    }
}
