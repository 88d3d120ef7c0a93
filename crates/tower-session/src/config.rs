//! The runtime settings every part of the layer reads: `Config`, shared
//! behind an `Arc` by a layer's clones, services and sessions, and the
//! [`OutagePolicy`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::carrier::Carrier;
use crate::store::DynStore;

/// What the layer does when the session store fails or can't be reached
/// during a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Answer `503 Service Unavailable` (`application/problem+json`, or gRPC
    /// `UNAVAILABLE`) whenever a store call the request needed failed:
    /// loading the session, or saving what the handler changed. The
    /// handler's own response is dropped. A route that never touches the
    /// session is never refused. The default.
    #[default]
    Refuse,
    /// Go on without the session: a failed load reads as an empty session,
    /// changes are not saved (and logged), the client's cookie is left as it
    /// was. History and profile calls still return the error to the handler.
    Continue,
}

/// Settings shared by every clone of a layer, its services and sessions.
pub(crate) struct Config {
    pub(crate) store: Arc<dyn DynStore>,
    pub(crate) carrier: Carrier,
    pub(crate) ttl: Duration,
    pub(crate) touch_interval: Duration,
    pub(crate) absolute: Option<Duration>,
    pub(crate) outage: OutagePolicy,
    pub(crate) user_field: Cow<'static, str>,
    pub(crate) history_turns: usize,
    pub(crate) max_turn_bytes: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("cookie", &self.carrier.name)
            .field("header", &self.carrier.header)
            .field("signed", &!self.carrier.keys.is_empty())
            .field("ttl", &self.ttl)
            .field("touch_interval", &self.touch_interval)
            .field("absolute", &self.absolute)
            .field("outage", &self.outage)
            .finish_non_exhaustive()
    }
}
