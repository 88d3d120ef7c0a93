//! Context for LLM calls: the vector index that retrieval and the semantic
//! cache search.
//!
//! A [`VectorIndex`] holds [`Record`]s (a vector, an id, a scope and a
//! payload) and answers k-nearest searches by cosine similarity within the
//! scopes a [`Query`] names, above a minimum score. Scopes are exact: a
//! record is found only by a query naming its scope, so a tenant's passages
//! or cached answers never reach another tenant (compose a scope from
//! everything that must match, and add a shared scope such as `"public"`
//! to a query to see shared records too).
//!
//! [`MemoryIndex`] is the embedded backend: in process, exact cosine over
//! normalized `f32` vectors, bounded in records and bytes, records expiring
//! after their TTL.
//!
//! ```
//! use std::time::Duration;
//! use tower_ai_context::{MemoryIndex, Query, Record, VectorIndex};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let index = MemoryIndex::builder("embed-small", 3).build();
//! index
//!     .upsert(vec![
//!         Record::new("tenant:acme", "doc-1#0", vec![1.0, 0.0, 0.0], "Acme ships on Mondays."),
//!         Record::new("tenant:other", "doc-9#0", vec![1.0, 0.0, 0.0], "Other ships on Fridays.")
//!             .ttl(Duration::from_secs(3600)),
//!     ])
//!     .await
//!     .unwrap();
//! let hits = index
//!     .search(Query::new(&[0.9, 0.1, 0.0], &["tenant:acme", "public"]).k(5).min_score(0.5))
//!     .await
//!     .unwrap();
//! assert_eq!(hits.len(), 1);
//! assert_eq!(&*hits[0].id, "doc-1#0");
//! # }
//! ```

pub mod durable;
pub mod embed;
mod fit;
mod index;
mod layer;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;
mod retrieve;
mod sources;

pub use embed::{EmbedError, Embedder, HttpEmbedder, HttpEmbedderBuilder};
pub use index::{BoxFuture, Hit, IndexError, Query, Record, VectorIndex};
pub use layer::{CONTEXT_HEADER, ContextBuilder, ContextFuture, ContextLayer, ContextService};
pub use memory::{MemoryIndex, MemoryIndexBuilder};
pub use retrieve::{Chunking, IndexRetriever, PUBLIC, TenantScope};
pub use sources::{HistorySource, Message, Passage, ProfileSource, Retriever, SourceError};
