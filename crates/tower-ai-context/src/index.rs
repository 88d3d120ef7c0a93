//! What every vector index backend speaks: records, queries, hits, errors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// A boxed future, so [`VectorIndex`] can be used as `dyn VectorIndex`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One vector with its id, scope and payload.
#[derive(Clone, PartialEq)]
pub struct Record {
    /// Who may find it: a query finds the record only if it names this
    /// scope exactly.
    pub scope: Arc<str>,
    /// Unique within its scope: an upsert with the same scope and id
    /// replaces the record.
    pub id: Arc<str>,
    /// The embedding; normalized by the index.
    pub vector: Vec<f32>,
    /// What a hit returns with it (a passage's text, a cached answer's key).
    pub payload: Bytes,
    /// How long it lives; `None`: until deleted or evicted.
    pub ttl: Option<Duration>,
}

impl Record {
    /// A record with no TTL.
    pub fn new(
        scope: impl Into<Arc<str>>,
        id: impl Into<Arc<str>>,
        vector: Vec<f32>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            scope: scope.into(),
            id: id.into(),
            vector,
            payload: payload.into(),
            ttl: None,
        }
    }

    /// Expires after `ttl`.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("scope", &self.scope)
            .field("id", &self.id)
            .field("dimensions", &self.vector.len())
            .field("payload_bytes", &self.payload.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A k-nearest search.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The query's embedding (normalized by the index).
    pub vector: &'a [f32],
    /// The scopes searched; a record in any other scope is never a hit.
    pub scopes: &'a [&'a str],
    /// At most this many hits, best first.
    pub k: usize,
    /// Only hits with at least this cosine similarity.
    pub min_score: f32,
}

impl<'a> Query<'a> {
    /// The 10 nearest records in `scopes`, at any score.
    pub fn new(vector: &'a [f32], scopes: &'a [&'a str]) -> Self {
        Self {
            vector,
            scopes,
            k: 10,
            min_score: -1.0,
        }
    }

    /// At most `k` hits.
    #[must_use]
    pub fn k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }

    /// Only hits with a cosine similarity of at least `min_score`.
    #[must_use]
    pub fn min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The record's scope.
    pub scope: Arc<str>,
    /// The record's id.
    pub id: Arc<str>,
    /// Cosine similarity to the query, in `[-1, 1]`.
    pub score: f32,
    /// The record's payload.
    pub payload: Bytes,
}

/// Why an index call failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum IndexError {
    /// A vector whose length isn't the index's.
    Dimensions {
        /// The index's dimensions.
        expected: usize,
        /// The vector's.
        got: usize,
    },
    /// A vector with a NaN or infinite component, or all zeros: it has no
    /// direction.
    InvalidVector,
    /// One record is larger than the whole index may hold.
    TooLarge {
        /// The record's size in bytes.
        bytes: usize,
        /// The index's bound.
        max_bytes: usize,
    },
    /// The backend is unreachable or answered an error.
    Unavailable(String),
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dimensions { expected, got } => {
                write!(f, "a vector of {got} dimensions for an index of {expected}")
            }
            Self::InvalidVector => {
                f.write_str("a vector with no direction (zero, NaN or infinite)")
            }
            Self::TooLarge { bytes, max_bytes } => write!(
                f,
                "a record of {bytes} bytes for an index bounded to {max_bytes}"
            ),
            Self::Unavailable(reason) => write!(f, "the vector index is unavailable: {reason}"),
        }
    }
}

impl std::error::Error for IndexError {}

/// A store of vectors searched by cosine similarity within scopes.
///
/// Every index belongs to one embedding model and its dimensions (both in
/// its [`name`](Self::name)): vectors of two models never mix.
pub trait VectorIndex: Send + Sync {
    /// The index's name: the embedding model's and the dimensions.
    fn name(&self) -> &str;

    /// The vectors' length.
    fn dimensions(&self) -> usize;

    /// Inserts or replaces records (by scope and id). All are checked
    /// first: on an error, none is written.
    fn upsert(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), IndexError>>;

    /// The `k` records nearest the query within its scopes, at or above its
    /// minimum score, best first (ties: the record written first).
    fn search<'a>(&'a self, query: Query<'a>) -> BoxFuture<'a, Result<Vec<Hit>, IndexError>>;

    /// Deletes records of `scope` by id; the ids not there are ignored.
    /// Returns how many were deleted.
    fn delete<'a>(
        &'a self,
        scope: &'a str,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<usize, IndexError>>;
}

/// A unit vector in the direction of `vector`, or why there is none.
pub(crate) fn normalized(vector: &[f32], dimensions: usize) -> Result<Vec<f32>, IndexError> {
    if vector.len() != dimensions {
        return Err(IndexError::Dimensions {
            expected: dimensions,
            got: vector.len(),
        });
    }
    let norm = vector
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(IndexError::InvalidVector);
    }
    Ok(vector
        .iter()
        .map(|&x| (f64::from(x) / norm) as f32)
        .collect())
}
