//! What the context layer gathers, and the traits of its sources.

use std::fmt;

use http::request::Parts;

use crate::index::BoxFuture;

/// One earlier turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `user`, `assistant` (or `tool`).
    pub role: String,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A turn.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// One retrieved passage.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// Where it comes from (a document id and chunk).
    pub id: String,
    /// Its text.
    pub text: String,
    /// Its similarity to the question.
    pub score: f32,
}

/// Why a source gave nothing: the layer goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(pub String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

impl From<crate::IndexError> for SourceError {
    fn from(error: crate::IndexError) -> Self {
        Self(error.to_string())
    }
}

impl From<crate::EmbedError> for SourceError {
    fn from(error: crate::EmbedError) -> Self {
        Self(error.to_string())
    }
}

/// The conversation's earlier turns, for the request in `parts` (a session
/// an earlier layer put in its extensions, a conversation id header, …).
pub trait HistorySource: Send + Sync {
    /// The last `n` turns, oldest first; none when the request has no
    /// conversation.
    fn history<'a>(
        &'a self,
        parts: &'a Parts,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, SourceError>>;
}

/// The user's profile fields (name, plan, language, …), for the request in
/// `parts`.
pub trait ProfileSource: Send + Sync {
    /// The fields, in the order they should be shown; none when the request
    /// has no known user.
    fn profile<'a>(
        &'a self,
        parts: &'a Parts,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, SourceError>>;
}

/// Passages relevant to a question, for the request in `parts` (whose
/// tenant decides what may be retrieved).
pub trait Retriever: Send + Sync {
    /// At most `k` passages, best first.
    fn retrieve<'a>(
        &'a self,
        parts: &'a Parts,
        question: &'a str,
        k: usize,
    ) -> BoxFuture<'a, Result<Vec<Passage>, SourceError>>;
}
