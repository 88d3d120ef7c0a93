//! Embeddings: the [`Embedder`] trait, and [`HttpEmbedder`], which asks an
//! OpenAI-compatible `/v1/embeddings` endpoint.

use std::fmt;

use crate::index::BoxFuture;

mod http;
pub use self::http::{HttpEmbedder, HttpEmbedderBuilder};

/// Turns texts into vectors, with one model.
pub trait Embedder: Send + Sync {
    /// The model's name: part of every index's name, so vectors of two
    /// models never mix.
    fn model(&self) -> &str;

    /// One vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String])
    -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>>;
}

/// Why texts couldn't be embedded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmbedError {
    /// The embeddings endpoint couldn't be reached, or timed out.
    Unavailable(String),
    /// It answered with an error status (the status and the start of its
    /// body).
    Status(u16, String),
    /// Its answer wasn't an embeddings list of the texts asked for.
    Malformed(String),
}

impl fmt::Display for EmbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(reason) => {
                write!(f, "the embeddings endpoint is unavailable: {reason}")
            }
            Self::Status(status, body) => {
                write!(f, "the embeddings endpoint answered {status}: {body}")
            }
            Self::Malformed(reason) => write!(f, "a malformed embeddings answer: {reason}"),
        }
    }
}

impl std::error::Error for EmbedError {}
