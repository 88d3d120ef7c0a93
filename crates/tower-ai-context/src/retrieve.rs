//! [`IndexRetriever`]: passages from a [`VectorIndex`], scoped per tenant;
//! documents cut into overlapping chunks.

use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;

use http::request::Parts;
use tower_ai_core::key::ClientKey;

use crate::embed::Embedder;
use crate::index::{BoxFuture, IndexError, Query, Record, VectorIndex};
use crate::sources::{Passage, Retriever, SourceError};

/// The scope of passages every tenant sees.
pub const PUBLIC: &str = "public";

/// The request's tenant, as the context layer found it (in the request's
/// extensions): its passages' scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantScope(pub Arc<str>);

impl TenantScope {
    /// The scope of `key`'s passages (its stable bytes, hex: never the raw
    /// key).
    pub fn of(key: &ClientKey) -> Self {
        let bytes = key.to_bytes();
        let mut scope = String::with_capacity(7 + bytes.len() * 2);
        scope.push_str("tenant:");
        for b in bytes {
            let _ = write!(scope, "{b:02x}");
        }
        Self(scope.into())
    }
}

/// How documents are cut: chunks of about `tokens` tokens (4 bytes each),
/// the last `overlap` of each repeated at the start of the next, cut at a
/// whitespace where there is one.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    /// Tokens a chunk.
    pub tokens: usize,
    /// Tokens shared by neighbours.
    pub overlap: usize,
}

impl Default for Chunking {
    /// 256 tokens, 32 shared.
    fn default() -> Self {
        Self {
            tokens: 256,
            overlap: 32,
        }
    }
}

impl Chunking {
    /// `text` in chunks.
    pub fn chunks<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let size = self.tokens.max(1) * 4;
        let overlap = (self.overlap * 4).min(size / 2);
        let mut chunks = Vec::new();
        let mut start = 0;
        let text_len = text.len();
        while start < text_len {
            let mut end = floor_char(text, (start + size).min(text_len));
            if end < text_len {
                // Back to the last whitespace in the chunk's second half.
                let middle = floor_char(text, start + size / 2).max(start);
                if let Some(space) = text[middle..end].rfind(char::is_whitespace) {
                    end = middle + space;
                }
            }
            if end <= start {
                end = ceil_char(text, start + 1);
            }
            let chunk = text[start..end].trim();
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
            if end >= text_len {
                break;
            }
            start = floor_char(text, end.saturating_sub(overlap)).max(start + 1);
            start = ceil_char(text, start);
        }
        chunks
    }
}

fn floor_char(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char(text: &str, mut at: usize) -> usize {
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at.min(text.len())
}

/// Passages from a vector index: the question embedded, the `k` nearest in
/// the tenant's scope and the public one, above a minimum score.
#[derive(Clone)]
pub struct IndexRetriever {
    embedder: Arc<dyn Embedder>,
    index: Arc<dyn VectorIndex>,
    min_score: f32,
    chunking: Chunking,
}

impl fmt::Debug for IndexRetriever {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexRetriever")
            .field("embedder", &self.embedder.model())
            .field("index", &self.index.name())
            .field("min_score", &self.min_score)
            .field("chunking", &self.chunking)
            .finish()
    }
}

/// Chunk ids are `{document}#{n}`; deleting a document deletes them in
/// batches of this many until one batch finds fewer.
const DELETE_BATCH: usize = 64;

impl IndexRetriever {
    /// Passages of at least 0.3 cosine similarity, documents cut by
    /// [`Chunking::default`].
    pub fn new(embedder: Arc<dyn Embedder>, index: Arc<dyn VectorIndex>) -> Self {
        Self {
            embedder,
            index,
            min_score: 0.3,
            chunking: Chunking::default(),
        }
    }

    /// The lowest similarity a passage may have.
    #[must_use]
    pub fn min_score(mut self, min_score: f32) -> Self {
        self.min_score = min_score;
        self
    }

    /// How documents are cut.
    #[must_use]
    pub fn chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = chunking;
        self
    }

    /// Stores document `id` in `scope` (a [`TenantScope`]'s, or
    /// [`PUBLIC`]), replacing an earlier version: its chunks are embedded in
    /// one call and upserted. Returns the number of chunks.
    pub async fn ingest(&self, scope: &str, id: &str, text: &str) -> Result<usize, SourceError> {
        let chunks: Vec<String> = self
            .chunking
            .chunks(text)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let vectors = self.embedder.embed(&chunks).await?;
        if vectors.len() != chunks.len() {
            return Err(SourceError(format!(
                "{} vectors for {} chunks",
                vectors.len(),
                chunks.len()
            )));
        }
        self.delete_from(scope, id, chunks.len()).await?;
        let records = chunks
            .iter()
            .zip(vectors)
            .enumerate()
            .map(|(n, (chunk, vector))| {
                Record::new(scope, format!("{id}#{n}"), vector, chunk.clone())
            })
            .collect();
        self.index.upsert(records).await?;
        Ok(chunks.len())
    }

    /// Deletes document `id` from `scope`; returns how many chunks went.
    pub async fn delete(&self, scope: &str, id: &str) -> Result<usize, IndexError> {
        self.delete_from(scope, id, 0).await
    }

    /// Deletes the chunks of `id` from number `from` on.
    async fn delete_from(&self, scope: &str, id: &str, from: usize) -> Result<usize, IndexError> {
        let mut deleted = 0;
        let mut start = from;
        loop {
            let ids: Vec<String> = (start..start + DELETE_BATCH)
                .map(|n| format!("{id}#{n}"))
                .collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let n = self.index.delete(scope, &refs).await?;
            deleted += n;
            if n < DELETE_BATCH {
                return Ok(deleted);
            }
            start += DELETE_BATCH;
        }
    }
}

impl Retriever for IndexRetriever {
    fn retrieve<'a>(
        &'a self,
        parts: &'a Parts,
        question: &'a str,
        k: usize,
    ) -> BoxFuture<'a, Result<Vec<Passage>, SourceError>> {
        Box::pin(async move {
            let texts = [question.to_owned()];
            let mut vectors = self.embedder.embed(&texts).await?;
            let Some(vector) = vectors.pop() else {
                return Err(SourceError("no vector for the question".into()));
            };
            let tenant = parts.extensions.get::<TenantScope>();
            let mut scopes = vec![PUBLIC];
            if let Some(tenant) = tenant {
                scopes.push(&tenant.0);
            }
            let hits = self
                .index
                .search(Query::new(&vector, &scopes).k(k).min_score(self.min_score))
                .await?;
            Ok(hits
                .into_iter()
                .map(|hit| Passage {
                    id: hit.id.to_string(),
                    text: String::from_utf8_lossy(&hit.payload).into_owned(),
                    score: hit.score,
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_overlap_and_cover_the_text() {
        let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        let chunking = Chunking {
            tokens: 40,
            overlap: 8,
        };
        let chunks = chunking.chunks(&text);
        assert!(chunks.len() > 5);
        for chunk in &chunks {
            assert!(chunk.len() <= 160, "{}", chunk.len());
            assert!(!chunk.starts_with(' ') && !chunk.ends_with(' '));
        }
        for pair in chunks.windows(2) {
            let last_word = pair[0].rsplit(' ').next().unwrap_or("");
            assert!(pair[1].contains(last_word), "neighbours share words");
        }
        for word in &words {
            assert!(
                chunks.iter().any(|c| c.split(' ').any(|w| w == word)),
                "{word} kept"
            );
        }
    }

    #[test]
    fn chunks_never_split_a_character_and_always_advance() {
        let text = "é".repeat(1000) + &"ü".repeat(3);
        let chunks = Chunking {
            tokens: 10,
            overlap: 3,
        }
        .chunks(&text);
        assert!(chunks.iter().all(|c| !c.is_empty()));
        assert_eq!(Chunking::default().chunks(""), Vec::<&str>::new());
        assert_eq!(Chunking::default().chunks("short"), vec!["short"]);
    }
}
