//! [`ConfigError`]: what `CacheBuilder::build` refuses.

use std::fmt;

/// A cache configuration that can't work (found when the layer is built,
/// never at request time): one variant per kind of mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `l1_capacity` is 0 bytes.
    ZeroL1Capacity,
    /// `l1_ttl` is 0.
    ZeroL1Ttl,
    /// `max_body` is 0 or more than 4 GiB.
    MaxBodyOutOfRange {
        /// The `max_body` given.
        bytes: usize,
    },
    /// `max_in_flight` is 0.
    ZeroMaxInFlight,
    /// `cache_name` is not an HTTP token (it is empty or has a character a
    /// token can't hold).
    InvalidCacheName {
        /// The name given.
        name: String,
    },
    /// The default `ttl` is 0.
    ZeroTtl,
    /// A route matches no method.
    RouteWithoutMethod {
        /// The route's name.
        route: String,
    },
    /// A route's TTL is 0.
    ZeroRouteTtl {
        /// The route's name.
        route: String,
    },
    /// A cache with Redis was built outside a Tokio runtime (it starts its
    /// invalidation subscriber when built).
    NoTokioRuntime,
    /// The Redis store's `lock_ttl` is 0.
    ZeroLockTtl,
    /// The Redis store's `blocking_connections` is 0.
    ZeroBlockingConnections,
    /// The Redis store's key prefix contains `{` or `}` (which would change
    /// the keys' Cluster hash tags).
    BracesInPrefix {
        /// The prefix given.
        prefix: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid cache configuration: ")?;
        match self {
            Self::ZeroL1Capacity => f.write_str("l1_capacity must be more than 0 bytes"),
            Self::ZeroL1Ttl => f.write_str("l1_ttl must be more than 0"),
            Self::MaxBodyOutOfRange { .. } => {
                f.write_str("max_body must be between 1 byte and 4 GiB")
            }
            Self::ZeroMaxInFlight => f.write_str("max_in_flight must be at least 1"),
            Self::InvalidCacheName { name } => write!(f, "cache_name {name:?} is not a token"),
            Self::ZeroTtl => f.write_str("ttl must be more than 0"),
            Self::RouteWithoutMethod { route } => write!(f, "route {route:?} has no method"),
            Self::ZeroRouteTtl { route } => write!(f, "route {route:?} has a zero TTL"),
            Self::NoTokioRuntime => {
                f.write_str("a cache with Redis must be built inside a Tokio runtime")
            }
            Self::ZeroLockTtl | Self::ZeroBlockingConnections => {
                f.write_str("lock_ttl and blocking_connections must be more than 0")
            }
            Self::BracesInPrefix { .. } => f.write_str("the Redis prefix must not contain braces"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::ConfigError;

    #[test]
    fn messages() {
        assert_eq!(
            ConfigError::RouteWithoutMethod {
                route: "chat".to_owned()
            }
            .to_string(),
            "invalid cache configuration: route \"chat\" has no method"
        );
        assert_eq!(
            ConfigError::ZeroBlockingConnections.to_string(),
            "invalid cache configuration: lock_ttl and blocking_connections must be more than 0"
        );
    }
}
