//! The runtime configuration every other file reads: what the layer does
//! with a keyless request, which fields responses carry, the custom cost
//! and refusal, and [`Shared`], the state one layer's services share.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_ai_core::key::{ApiKey, ClientKey, Or, PeerIp, RequestHead};
use tower_ai_core::reject::Refusal;

use crate::algorithm::Decision;
use crate::policy::Policy;
use crate::resolver::Resolver;
use crate::store::Backend;

/// What happens to a request in which the key extractor finds no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Such requests share one anonymous key (the default).
    #[default]
    Shared,
    /// Such requests are refused with this status (e.g. `401`).
    Refuse(StatusCode),
    /// Such requests are not limited.
    Allow,
}

/// Which rate-limit fields responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderStyle {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` (default on).
    pub x_ratelimit: bool,
    /// The IETF draft's `RateLimit-Policy` and `RateLimit` (default off).
    pub ietf: bool,
    /// OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
    /// (default off).
    pub openai: bool,
}

impl Default for HeaderStyle {
    fn default() -> Self {
        Self {
            x_ratelimit: true,
            ietf: false,
            openai: false,
        }
    }
}

impl HeaderStyle {
    /// Sends (or not) `X-RateLimit-*`.
    #[must_use]
    pub const fn x_ratelimit(mut self, on: bool) -> Self {
        self.x_ratelimit = on;
        self
    }

    /// Sends (or not) the IETF fields.
    #[must_use]
    pub const fn ietf(mut self, on: bool) -> Self {
        self.ietf = on;
        self
    }

    /// Sends (or not) OpenAI's fields.
    #[must_use]
    pub const fn openai(mut self, on: bool) -> Self {
        self.openai = on;
        self
    }

    /// Every field family.
    pub const fn all() -> Self {
        Self {
            x_ratelimit: true,
            ietf: true,
            openai: true,
        }
    }
}

/// A request's cost in requests, from its head (1 when unset).
pub(crate) type CostFn = Arc<dyn Fn(RequestHead<'_>) -> u64 + Send + Sync>;

/// Shapes the refusal of a rate-limited request.
pub(crate) type RefusalFn = Arc<dyn Fn(&Refused<'_>) -> Refusal + Send + Sync>;

/// What a refusal is about, for a custom refusal
/// ([`RateLimitBuilder::refusal`](crate::RateLimitBuilder::refusal)).
#[derive(Debug)]
#[non_exhaustive]
pub struct Refused<'a> {
    /// The policy that refused (the one with the longest wait).
    pub policy: &'a Policy,
    /// Its decision.
    pub decision: Decision,
    /// Who was refused.
    pub key: &'a ClientKey,
    /// Until every refusing policy would admit the request.
    pub retry_after: Duration,
}

/// The default key: the API key, else the peer address.
pub type DefaultKey = Or<ApiKey, PeerIp>;

/// The state every service of one layer shares.
pub(crate) struct Shared<K> {
    pub(crate) key: K,
    pub(crate) resolver: Resolver,
    pub(crate) backend: Backend,
    pub(crate) missing_key: MissingKey,
    pub(crate) throttle: Option<Duration>,
    pub(crate) headers: HeaderStyle,
    pub(crate) cost: Option<CostFn>,
    pub(crate) refusal: Option<RefusalFn>,
    pub(crate) default_tokens: u64,
    pub(crate) usage_body_limit: usize,
}
