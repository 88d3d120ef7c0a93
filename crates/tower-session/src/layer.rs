//! [`SessionLayer`] and its builder, [`SessionBuilder`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cookie::{Key, SameSite};
use http::HeaderName;
use tower_layer::Layer;

use crate::carrier::{self, Carrier};
use crate::config::{Config, OutagePolicy};
use crate::error::ConfigError;
use crate::service::SessionManager;
use crate::sessions::Sessions;
#[cfg(feature = "redis")]
use crate::store::RedisStore;
use crate::store::{DynStore, MemoryStore, SessionStore};

/// The default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "sid";
/// The default idle TTL: 30 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);
/// The default touch interval: an unchanged session's TTL is renewed at most
/// once a minute.
pub const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// The default cap on a session's history: 100 turns.
pub const DEFAULT_HISTORY_TURNS: usize = 100;
/// The default limit on one history turn's content: 64 KiB.
pub const DEFAULT_MAX_TURN_BYTES: usize = 64 * 1024;
/// The default user field: `"user"`.
pub const DEFAULT_USER_FIELD: &str = "user";

/// Cookies live at most 400 days in current browsers.
const MAX_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

/// The [`Layer`] that gives every request a lazy [`Session`](crate::Session).
///
/// Made once (it holds the store and the configuration behind an `Arc`);
/// clones share them. See the [crate docs](crate) for the behaviour.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    config: Arc<Config>,
}

impl SessionLayer {
    /// A layer on `store` with the defaults: cookie `sid` (`HttpOnly`,
    /// `Secure`, `SameSite=Lax`, `Path=/`, persistent), 30 min sliding TTL
    /// renewed at most once a minute when unchanged, no absolute lifetime,
    /// `503` on a store outage, history capped at 100 turns of at most
    /// 64 KiB, user field `"user"`.
    ///
    /// The same as `SessionLayer::builder().store(store).build()`, which
    /// can't fail on the defaults.
    pub fn new(store: impl SessionStore) -> Self {
        Self {
            config: Arc::new(SessionBuilder::new().store(store).into_config()),
        }
    }

    /// A builder starting from the defaults of [`SessionLayer::new`], on a
    /// new [`MemoryStore`] until `redis` (feature `redis`) or
    /// [`store`](SessionBuilder::store) says otherwise.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::new()
    }

    /// A handle for work outside a request on the same store: log a user
    /// out everywhere, read or change a profile.
    pub fn sessions(&self) -> Sessions {
        Sessions::new(Arc::clone(&self.config))
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionManager<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionManager::new(inner, Arc::clone(&self.config))
    }
}

/// Builds a [`SessionLayer`]; made by [`SessionLayer::builder`].
/// [`build`](SessionBuilder::build) checks the settings.
#[must_use]
pub struct SessionBuilder {
    /// `None`: a new [`MemoryStore`], made by `into_config`.
    store: Option<Arc<dyn DynStore>>,
    cookie_name: Cow<'static, str>,
    http_only: bool,
    secure: bool,
    same_site: SameSite,
    path: Cow<'static, str>,
    domain: Option<Cow<'static, str>>,
    persistent: bool,
    header: Option<String>,
    keys: Vec<Vec<u8>>,
    ttl: Duration,
    touch_interval: Duration,
    absolute: Option<Duration>,
    outage: OutagePolicy,
    user_field: Cow<'static, str>,
    history_turns: usize,
    max_turn_bytes: usize,
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("cookie_name", &self.cookie_name)
            .field("header", &self.header)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SessionBuilder {
    fn new() -> Self {
        Self {
            store: None,
            cookie_name: Cow::Borrowed(DEFAULT_COOKIE_NAME),
            http_only: true,
            secure: true,
            same_site: SameSite::Lax,
            path: Cow::Borrowed("/"),
            domain: None,
            persistent: true,
            header: None,
            keys: Vec::new(),
            ttl: DEFAULT_TTL,
            touch_interval: DEFAULT_TOUCH_INTERVAL,
            absolute: None,
            outage: OutagePolicy::Refuse,
            user_field: Cow::Borrowed(DEFAULT_USER_FIELD),
            history_turns: DEFAULT_HISTORY_TURNS,
            max_turn_bytes: DEFAULT_MAX_TURN_BYTES,
        }
    }

    /// Keeps the sessions in `store` (default: a new [`MemoryStore`], for
    /// one replica or tests). For a `RedisStore`, `redis` (feature `redis`)
    /// says the same.
    pub fn store(mut self, store: impl SessionStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Keeps the sessions in Redis, through `store` (feature `redis`): shared
    /// by every replica. Same as [`store`](Self::store).
    #[cfg(feature = "redis")]
    pub fn redis<C>(self, store: RedisStore<C>) -> Self
    where
        RedisStore<C>: SessionStore,
    {
        self.store(store)
    }

    /// The cookie's name (default `sid`): an RFC 6265 token.
    pub fn cookie_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// The cookie's `HttpOnly` attribute (default on: scripts can't read
    /// the id). Turning it off exposes sessions to cross-site scripting.
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The cookie's `Secure` attribute (default on: sent over HTTPS only;
    /// browsers treat `localhost` as secure).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// The cookie's `SameSite` attribute (default `Lax`). `None` needs
    /// [`secure`](Self::secure).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The cookie's `Path` (default `/`).
    pub fn path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        self.path = path.into();
        self
    }

    /// The cookie's `Domain` (default none: this host only).
    pub fn domain(mut self, domain: impl Into<Cow<'static, str>>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Whether the cookie carries `Max-Age` (default on, renewed with the
    /// TTL). Off: a browser-session cookie; the server-side TTL still ends
    /// the session.
    pub fn persistent_cookie(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Also accepts the id in this request header, for API clients: when a
    /// request carries it, the header is used (and a new id is sent back in
    /// the same response header) instead of the cookie.
    pub fn header(mut self, name: impl Into<String>) -> Self {
        self.header = Some(name.into());
        self
    }

    /// Signs the id with HMAC-SHA256 (`cookie`'s signed jar): the first key
    /// signs, every key verifies, so a key can be rotated by putting the new
    /// one first and dropping the old one after the TTL. Keys need at least
    /// 64 bytes. An id is already unguessable; signing adds a check before
    /// any store lookup and lets a leaked key list be revoked.
    pub fn signed<K: AsRef<[u8]>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.keys = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        self
    }

    /// The idle TTL (default 30 min): a session nobody used for this long is
    /// gone. Every request that uses it, reading or writing, renews it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often a session that is only read has its TTL (and cookie)
    /// renewed (default 1 min): reads within the interval write nothing.
    /// So the effective idle timeout is between `ttl - interval` and `ttl`.
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// An absolute lifetime (default none): the session ends this long after
    /// it was created, however active. Measured with the replicas' clocks.
    pub fn absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.absolute = Some(lifetime);
        self
    }

    /// What to do when the store fails (default [`OutagePolicy::Refuse`]).
    pub fn on_outage(mut self, policy: OutagePolicy) -> Self {
        self.outage = policy;
        self
    }

    /// The session field that holds the user's id (default `"user"`):
    /// setting it links the session to the user's index ("log out
    /// everywhere") and profile.
    pub fn user_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.user_field = field.into();
        self
    }

    /// How many history turns a session keeps (default 100); older ones are
    /// dropped as new ones come. The system message is kept apart and never
    /// dropped.
    pub fn history_limit(mut self, turns: usize) -> Self {
        self.history_turns = turns;
        self
    }

    /// The largest history turn content accepted, in bytes (default 64 KiB).
    pub fn max_turn_bytes(mut self, bytes: usize) -> Self {
        self.max_turn_bytes = bytes;
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<SessionLayer, ConfigError> {
        if !carrier::is_token(&self.cookie_name) {
            return Err(ConfigError::InvalidCookieName(
                self.cookie_name.into_owned(),
            ));
        }
        if let Some(header) = &self.header
            && HeaderName::try_from(header.as_str()).is_err()
        {
            return Err(ConfigError::InvalidHeaderName(header.clone()));
        }
        for attr in std::iter::once(&self.path).chain(&self.domain) {
            if attr.is_empty() || !carrier::is_attribute_value(attr) {
                return Err(ConfigError::InvalidCookieAttribute(attr.to_string()));
            }
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > MAX_TTL {
            return Err(ConfigError::InvalidTtl);
        }
        if self.touch_interval >= self.ttl {
            return Err(ConfigError::InvalidTouchInterval);
        }
        if self.absolute.is_some_and(|a| a < self.ttl) {
            return Err(ConfigError::InvalidAbsoluteLifetime);
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(ConfigError::SameSiteNoneWithoutSecure);
        }
        if self.history_turns == 0 {
            return Err(ConfigError::InvalidHistoryLimit);
        }
        if self.user_field.is_empty() || self.user_field.starts_with('$') {
            return Err(ConfigError::InvalidUserField);
        }
        for key in &self.keys {
            if Key::try_from(key.as_slice()).is_err() {
                return Err(ConfigError::SigningKeyTooShort);
            }
        }
        Ok(SessionLayer {
            config: Arc::new(self.into_config()),
        })
    }

    /// The configuration, unchecked: only for the defaults and after
    /// [`build`](Self::build)'s checks.
    fn into_config(self) -> Config {
        Config {
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            carrier: Carrier {
                name: self.cookie_name,
                http_only: self.http_only,
                secure: self.secure,
                same_site: self.same_site,
                path: self.path,
                domain: self.domain,
                persistent: self.persistent,
                header: self
                    .header
                    .and_then(|h| HeaderName::try_from(h.as_str()).ok()),
                keys: self
                    .keys
                    .iter()
                    .filter_map(|k| Key::try_from(k.as_slice()).ok())
                    .collect(),
            },
            ttl: self.ttl,
            touch_interval: self.touch_interval,
            absolute: self.absolute,
            outage: self.outage,
            user_field: self.user_field,
            history_turns: self.history_turns,
            max_turn_bytes: self.max_turn_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> SessionBuilder {
        SessionLayer::builder()
    }

    #[test]
    fn invalid_settings_are_refused() {
        let err = |b: SessionBuilder| b.build().err();
        assert!(builder().build().is_ok());
        assert_eq!(
            err(builder().cookie_name("a b")),
            Some(ConfigError::InvalidCookieName("a b".into()))
        );
        assert!(matches!(
            err(builder().header("bad header")),
            Some(ConfigError::InvalidHeaderName(_))
        ));
        assert!(matches!(
            err(builder().path("/a;b")),
            Some(ConfigError::InvalidCookieAttribute(_))
        ));
        assert_eq!(
            err(builder().ttl(Duration::ZERO)),
            Some(ConfigError::InvalidTtl)
        );
        assert_eq!(
            err(builder()
                .ttl(Duration::from_secs(10))
                .touch_interval(Duration::from_secs(10))),
            Some(ConfigError::InvalidTouchInterval)
        );
        assert_eq!(
            err(builder().absolute_lifetime(Duration::from_secs(60))),
            Some(ConfigError::InvalidAbsoluteLifetime)
        );
        assert_eq!(
            err(builder().same_site(SameSite::None).secure(false)),
            Some(ConfigError::SameSiteNoneWithoutSecure)
        );
        assert_eq!(
            err(builder().signed([[0u8; 32]])),
            Some(ConfigError::SigningKeyTooShort)
        );
        assert_eq!(
            err(builder().history_limit(0)),
            Some(ConfigError::InvalidHistoryLimit)
        );
        assert_eq!(
            err(builder().user_field("$user")),
            Some(ConfigError::InvalidUserField)
        );
        assert!(builder().signed([[7u8; 64]]).build().is_ok());
    }
}
