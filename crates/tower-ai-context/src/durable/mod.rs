//! Durable conversations: turns written, off the request path, to a store
//! that outlives the session's memory (Redis with a TTL) and a restart.
//!
//! - A [`Turn`] is one message of a conversation at its 0-based position.
//! - A [`ConversationSink`] stores turns, upserting on (conversation,
//!   position), and reads a conversation back in order.
//!   `PostgresSink` (feature `postgres`) stores them in a PostgreSQL
//!   table.
//! - A [`DurableWriter`] sits between the chat path and a sink:
//!   [`record`](DurableWriter::record) is synchronous and never waits for the
//!   sink. It buffers each conversation's turns, hands them to a background
//!   task every [`every_turns`](DurableConfig::every_turns) turns, at
//!   [`end`](DurableWriter::end) (session end) or after
//!   [`max_delay`](DurableConfig::max_delay), and the task writes them in
//!   order, retrying with backoff while the sink fails. What it holds is
//!   bounded ([`max_queued_turns`](DurableConfig::max_queued_turns)): when
//!   full, a turn is refused, never waited for. A store outage therefore
//!   neither slows nor fails a chat request; the turns recorded meanwhile are
//!   written when it comes back.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_ai_context::BoxFuture;
//! use tower_ai_context::durable::{ConversationSink, DurableConfig, DurableWriter, SinkError, Turn};
//!
//! /// A sink in memory (a real one is `PostgresSink`).
//! #[derive(Debug, Default)]
//! struct Memory(Mutex<Vec<Turn>>);
//!
//! impl ConversationSink for Memory {
//!     fn write<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<(), SinkError>> {
//!         Box::pin(async move {
//!             let mut stored = self.0.lock().unwrap();
//!             for turn in turns {
//!                 stored.retain(|t| (&t.conversation, t.index) != (&turn.conversation, turn.index));
//!                 stored.push(turn.clone());
//!             }
//!             Ok(())
//!         })
//!     }
//!
//!     fn read<'a>(&'a self, conversation: &'a str) -> BoxFuture<'a, Result<Vec<Turn>, SinkError>> {
//!         Box::pin(async move {
//!             let mut turns: Vec<Turn> =
//!                 self.0.lock().unwrap().iter().filter(|t| t.conversation == conversation).cloned().collect();
//!             turns.sort_by_key(|t| t.index);
//!             Ok(turns)
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sink = Arc::new(Memory::default());
//! let writer = DurableWriter::spawn(sink.clone(), DurableConfig::default().every_turns(2));
//! writer.record(Turn::new("chat-1", 0, "user", "Hi")).unwrap();
//! writer.record(Turn::new("chat-1", 1, "assistant", "Hello.").tokens(2)).unwrap();
//! writer.record(Turn::new("chat-1", 2, "user", "Bye")).unwrap();
//! writer.end("chat-1"); // the session ended: the last turn goes too
//! writer.flush().await.unwrap();
//! let turns = sink.read("chat-1").await.unwrap();
//! assert_eq!(turns.len(), 3);
//! assert_eq!(turns[1].content, "Hello.");
//! # }
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::index::BoxFuture;

#[cfg(feature = "postgres")]
mod postgres;
mod writer;

#[cfg(feature = "postgres")]
pub use postgres::{PostgresSink, PostgresSinkBuilder};
pub use writer::{DurableConfig, DurableWriter, WriterError, WriterStats};

/// One turn of a conversation, at its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Turn {
    /// The conversation it belongs to (e.g. the session id).
    pub conversation: String,
    /// Its 0-based position in the conversation: with `conversation`, what
    /// a store upserts on.
    pub index: u64,
    /// Who said it (`system`, `user`, `assistant`, `tool`, …).
    pub role: String,
    /// What was said.
    pub content: String,
    /// Its size in model tokens, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
}

impl Turn {
    /// A turn with no token count.
    pub fn new(
        conversation: impl Into<String>,
        index: u64,
        role: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Self {
            conversation: conversation.into(),
            index,
            role: role.into(),
            content: content.into(),
            tokens: None,
        }
    }

    /// With its size in model tokens.
    #[must_use]
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }
}

/// Why a sink call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkError {
    /// The store is unreachable, timed out or answered an error that may
    /// pass: the same call may succeed later (a [`DurableWriter`] retries).
    Unavailable(String),
    /// The store refuses these turns and always will (e.g. a position too
    /// large for its column, a character its text type can't hold):
    /// retrying is useless (a [`DurableWriter`] drops them).
    Rejected(String),
    /// The sink's configuration is invalid (a table name that isn't an
    /// identifier, a URL that doesn't parse).
    Config(String),
}

impl SinkError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(reason) => {
                write!(f, "the conversation store is unavailable: {reason}")
            }
            Self::Rejected(reason) => write!(f, "the conversation store refused turns: {reason}"),
            Self::Config(reason) => write!(f, "invalid conversation store configuration: {reason}"),
        }
    }
}

impl std::error::Error for SinkError {}

/// A durable store of conversations.
///
/// Writes are idempotent upserts on (conversation, index), so a retried
/// write never duplicates a turn; when one call holds the same position
/// twice, the later turn wins.
pub trait ConversationSink: Send + Sync {
    /// Inserts or replaces `turns` (by conversation and index). A store
    /// writes them all or none.
    fn write<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Every stored turn of `conversation`, by index; empty when there are
    /// none.
    fn read<'a>(&'a self, conversation: &'a str) -> BoxFuture<'a, Result<Vec<Turn>, SinkError>>;
}
