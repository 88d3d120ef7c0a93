use std::fmt;

use tower_ai_core::sse::EncodeError;

/// A relay or store configuration that can't work (found when it is built,
/// never at request time).
///
/// One variant per kind of mistake; its `Display` reads
/// `invalid SSE relay configuration: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// [`heartbeat`](crate::SseRelayBuilder::heartbeat) was given a zero
    /// interval.
    ZeroHeartbeat,
    /// [`max_event_size`](crate::SseRelayBuilder::max_event_size) is zero.
    ZeroMaxEventSize,
    /// [`max_duration`](crate::SseRelayBuilder::max_duration) is zero.
    ZeroMaxDuration,
    /// [`drain_usage`](crate::SseRelayBuilder::drain_usage) was given a zero
    /// limit.
    ZeroDrainUsage,
    /// [`max_generations`](crate::SseRelayBuilder::max_generations) is zero.
    ZeroMaxGenerations,
    /// The [`streams_path`](crate::SseRelayBuilder::streams_path) does not
    /// start with `/`.
    StreamsPath {
        /// The path given.
        path: String,
    },
    /// The [`heartbeat_comment`](crate::SseRelayBuilder::heartbeat_comment)
    /// can't be written as one SSE comment line.
    HeartbeatComment {
        /// Why the comment was refused (a line break in it).
        error: EncodeError,
    },
    /// A bound of a [`MemoryStoreBuilder`](crate::store::MemoryStoreBuilder)
    /// is zero.
    ZeroMemoryBound {
        /// The bound: `"max_streams"`, `"max_events"`, `"max_stream_bytes"`
        /// or `"max_total_bytes"`.
        bound: &'static str,
    },
    /// The [`MemoryStoreBuilder::ttl`](crate::store::MemoryStoreBuilder::ttl)
    /// is zero.
    ZeroMemoryTtl,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid SSE relay configuration: ")?;
        match self {
            Self::ZeroHeartbeat => f.write_str("the heartbeat interval must be above zero"),
            Self::ZeroMaxEventSize => f.write_str("max_event_size must be above zero"),
            Self::ZeroMaxDuration => f.write_str("max_duration must be above zero"),
            Self::ZeroDrainUsage => f.write_str("the usage drain limit must be above zero"),
            Self::ZeroMaxGenerations => f.write_str("max_generations must be above zero"),
            Self::StreamsPath { .. } => f.write_str("the streams path must start with '/'"),
            Self::HeartbeatComment { error } => write!(f, "heartbeat comment: {error}"),
            Self::ZeroMemoryBound { .. } => {
                f.write_str("every memory store bound must be above zero")
            }
            Self::ZeroMemoryTtl => f.write_str("the memory store's TTL must be above zero"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The error type of a relayed body: the inner body's error, or a store
/// error that ended a resumed stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_mistake() {
        let cases = [
            (
                ConfigError::ZeroHeartbeat,
                "the heartbeat interval must be above zero",
            ),
            (
                ConfigError::ZeroMaxEventSize,
                "max_event_size must be above zero",
            ),
            (
                ConfigError::ZeroMaxDuration,
                "max_duration must be above zero",
            ),
            (
                ConfigError::ZeroDrainUsage,
                "the usage drain limit must be above zero",
            ),
            (
                ConfigError::ZeroMaxGenerations,
                "max_generations must be above zero",
            ),
            (
                ConfigError::StreamsPath {
                    path: "v1/streams".into(),
                },
                "the streams path must start with '/'",
            ),
            (
                ConfigError::HeartbeatComment {
                    error: EncodeError::LineBreakInComment,
                },
                "heartbeat comment: SSE comment contains a line break (CR or LF)",
            ),
            (
                ConfigError::ZeroMemoryBound {
                    bound: "max_events",
                },
                "every memory store bound must be above zero",
            ),
            (
                ConfigError::ZeroMemoryTtl,
                "the memory store's TTL must be above zero",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(
                error.to_string(),
                format!("invalid SSE relay configuration: {message}")
            );
        }
    }
}
