//! The errors a handler can see, a store can return, and a builder can refuse.

use std::borrow::Cow;
use std::fmt;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a [`Session`](crate::Session) call.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The session store failed or could not be reached. Under
    /// [`OutagePolicy::Refuse`](crate::OutagePolicy::Refuse) the layer answers
    /// the request with `503` whatever the handler returns.
    Store(StoreError),
    /// A value could not be serialised, or a stored value does not
    /// deserialise into the requested type.
    Json(serde_json::Error),
    /// Keys starting with `$` are reserved for the session's own metadata.
    ReservedKey,
    /// The change needs a new cookie (a new session, a new id), but the
    /// response head has already been sent.
    HeadSent,
    /// The session has no user (its user field is unset): there is no
    /// profile or user index to work on.
    NoUser,
    /// A history turn is larger than the configured limit.
    TurnTooLarge {
        /// The turn's content length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The operating system gave no random bytes for a new id.
    Entropy(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "session store: {e}"),
            Self::Json(e) => write!(f, "session value: {e}"),
            Self::ReservedKey => f.write_str("session keys starting with `$` are reserved"),
            Self::HeadSent => f.write_str(
                "the response head was already sent: a new session or id can't be given to the client",
            ),
            Self::NoUser => f.write_str("the session has no user"),
            Self::TurnTooLarge { len, max } => {
                write!(f, "history turn of {len} bytes is over the {max}-byte limit")
            }
            Self::Entropy(e) => write!(f, "no OS entropy for a session id: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Store(e) => Some(e),
            Self::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

/// The kind of a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend could not be reached, timed out, or is marked down.
    Unavailable,
    /// The store does not implement this operation.
    Unsupported,
    /// The store holds something it can't read.
    Corrupt,
    /// Anything else.
    Other,
}

/// An error from a [`SessionStore`](crate::SessionStore).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Cow<'static, str>,
    source: Option<Source>,
}

impl StoreError {
    /// The backend could not be reached, timed out, or is marked down.
    pub fn unavailable(source: impl Into<Source>) -> Self {
        Self::with_source(StoreErrorKind::Unavailable, "unavailable", source)
    }

    /// The store does not implement `operation`.
    pub fn unsupported(operation: &'static str) -> Self {
        Self {
            kind: StoreErrorKind::Unsupported,
            message: Cow::Borrowed(operation),
            source: None,
        }
    }

    /// The store holds something it can't read.
    pub fn corrupt(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: StoreErrorKind::Corrupt,
            message: message.into(),
            source: None,
        }
    }

    /// Any other failure.
    pub fn other(source: impl Into<Source>) -> Self {
        Self::with_source(StoreErrorKind::Other, "failed", source)
    }

    fn with_source(kind: StoreErrorKind, message: &'static str, source: impl Into<Source>) -> Self {
        Self {
            kind,
            message: Cow::Borrowed(message),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether this is a failure of the backend (as opposed to an operation
    /// the store doesn't support): the ones the outage policy applies to.
    pub fn is_outage(&self) -> bool {
        self.kind != StoreErrorKind::Unsupported
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StoreErrorKind::Unsupported => write!(f, "unsupported operation: {}", self.message),
            StoreErrorKind::Corrupt => write!(f, "corrupt data: {}", self.message),
            _ => match &self.source {
                Some(source) => write!(f, "{}: {source}", self.message),
                None => f.write_str(&self.message),
            },
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// An invalid [`SessionLayer`](crate::SessionLayer) configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie name is empty or not an RFC 6265 token.
    InvalidCookieName(String),
    /// The header name is not a valid HTTP header name.
    InvalidHeaderName(String),
    /// The cookie path or domain contains characters a cookie can't carry.
    InvalidCookieAttribute(String),
    /// The idle TTL must be at least one second and at most 400 days (the
    /// longest `Max-Age` browsers keep).
    InvalidTtl,
    /// The touch interval must be shorter than the idle TTL.
    InvalidTouchInterval,
    /// The absolute lifetime must be at least the idle TTL.
    InvalidAbsoluteLifetime,
    /// A signing key must have at least 64 bytes.
    SigningKeyTooShort,
    /// `SameSite=None` is only accepted by browsers on `Secure` cookies.
    SameSiteNoneWithoutSecure,
    /// The history must keep at least one turn.
    InvalidHistoryLimit,
    /// The user field must be a non-empty key that doesn't start with `$`.
    InvalidUserField,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidCookieName(n) => write!(f, "invalid cookie name {n:?}"),
            Self::InvalidHeaderName(n) => write!(f, "invalid header name {n:?}"),
            Self::InvalidCookieAttribute(a) => write!(f, "invalid cookie attribute {a:?}"),
            Self::InvalidTtl => f.write_str("the idle TTL must be between 1 s and 400 days"),
            Self::InvalidTouchInterval => {
                f.write_str("the touch interval must be shorter than the idle TTL")
            }
            Self::InvalidAbsoluteLifetime => {
                f.write_str("the absolute lifetime must be at least the idle TTL")
            }
            Self::SigningKeyTooShort => f.write_str("a signing key must have at least 64 bytes"),
            Self::SameSiteNoneWithoutSecure => {
                f.write_str("SameSite=None needs the Secure attribute")
            }
            Self::InvalidHistoryLimit => f.write_str("the history must keep at least one turn"),
            Self::InvalidUserField => {
                f.write_str("the user field must be non-empty and must not start with `$`")
            }
        }
    }
}

impl std::error::Error for ConfigError {}
