use std::fmt;

/// A relay or store configuration that can't work (found when it is built,
/// never at request time).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SSE relay configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The error type of a relayed body: the inner body's error, or a store
/// error that ended a resumed stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
