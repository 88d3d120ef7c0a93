//! [`ConfigError`]: what [`RateLimitBuilder::build`] and the [`Limiter`]
//! constructors refuse.
//!
//! [`RateLimitBuilder::build`]: crate::RateLimitBuilder::build
//! [`Limiter`]: crate::Limiter

use std::fmt;

/// A rate-limit configuration that can't work (found when the layer is
/// built, never at request time).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The layer has no policy at all (neither `.policy()` nor
    /// `.policies()`).
    NoPolicy,
    /// A [`Limiter`](crate::Limiter) was given no policy.
    EmptyLimiter,
    /// More policies apply to one request than a check can carry.
    TooManyPolicies {
        /// How many policies the set has.
        count: usize,
        /// The most one request may be checked against.
        max: usize,
    },
    /// Two different policies share a name (and so would share a count).
    DuplicatePolicy {
        /// The shared name.
        name: String,
    },
    /// The same policy appears twice in one set.
    RepeatedPolicy {
        /// The policy's name.
        name: String,
    },
    /// A policy's capacity is zero.
    ZeroCapacity {
        /// The policy's name.
        policy: String,
    },
    /// A policy's name is empty, longer than 64 characters, or contains
    /// braces, colons or quotes.
    InvalidPolicyName {
        /// The name given.
        name: String,
    },
    /// A bucket policy's rate is not positive or above 10^9 per second.
    InvalidRate {
        /// The policy's name.
        policy: String,
    },
    /// A window policy's window is shorter than 1 ms.
    InvalidWindow {
        /// The policy's name.
        policy: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid rate limit configuration: ")?;
        match self {
            Self::NoPolicy => f.write_str("no policy: add one with .policy() or .policies()"),
            Self::EmptyLimiter => f.write_str("a limiter needs at least one policy"),
            Self::TooManyPolicies { max, .. } => {
                write!(f, "at most {max} policies apply to one request")
            }
            Self::DuplicatePolicy { name } => {
                write!(f, "two different policies are named {name:?}")
            }
            Self::RepeatedPolicy { name } => write!(f, "policy {name:?} appears twice in one set"),
            Self::ZeroCapacity { policy } => {
                write!(f, "policy {policy}: capacity must be at least 1")
            }
            Self::InvalidPolicyName { name } => write!(
                f,
                "policy {name}: a name is 1 to 64 characters, without braces, colons or quotes"
            ),
            Self::InvalidRate { policy } => write!(
                f,
                "policy {policy}: the rate must be positive and at most 10^9 per second"
            ),
            Self::InvalidWindow { policy } => {
                write!(f, "policy {policy}: the window must be at least 1 ms")
            }
        }
    }
}

impl std::error::Error for ConfigError {}
