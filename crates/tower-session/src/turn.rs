//! One turn of a conversation, [`Turn`], and who said it, [`Role`]: what the
//! history stores (re-exported from [`history`](crate::history)).

use serde::{Deserialize, Serialize};

/// Who said a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// The system prompt. A session keeps at most one, apart from the
    /// capped list: appending another replaces it.
    System,
    /// Developer instructions (OpenAI's newer name for system-level
    /// messages); stored like any other turn.
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

impl Role {
    /// Its name in a chat API's messages: `system`, `user`, ….
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Developer => "developer",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Turn {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
    /// Its size in model tokens, as counted by the caller (usually from the
    /// upstream's `usage`).
    pub tokens: u32,
}

impl Turn {
    /// A turn.
    pub fn new(role: Role, content: impl Into<String>, tokens: u32) -> Self {
        Self {
            role,
            content: content.into(),
            tokens,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>, tokens: u32) -> Self {
        Self::new(Role::System, content, tokens)
    }

    /// A user message.
    pub fn user(content: impl Into<String>, tokens: u32) -> Self {
        Self::new(Role::User, content, tokens)
    }

    /// A model answer.
    pub fn assistant(content: impl Into<String>, tokens: u32) -> Self {
        Self::new(Role::Assistant, content, tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_serialise_with_lowercase_roles() {
        let json = serde_json::to_string(&Turn::assistant("hi", 2)).unwrap();
        assert_eq!(json, r#"{"role":"assistant","content":"hi","tokens":2}"#);
        let back: Turn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Turn::assistant("hi", 2));
    }
}
