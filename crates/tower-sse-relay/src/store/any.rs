//! [`AnyStore`]: the memory store or the Redis store, picked at run time.

#[cfg(feature = "redis")]
use super::RedisStore;
use super::{
    MemoryStore, Outcome, ResumeError, StoreError, StoredEvent, StreamStore, Subscription,
};
use crate::id::{ResumeFrom, StreamId};

/// A store picked at run time: the memory store, or (feature `redis`) the
/// Redis store. Every call is one `match` away from the store's own.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// Streams in this process only.
    Memory(MemoryStore),
    /// Streams shared by every replica through Redis.
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl Default for AnyStore {
    fn default() -> Self {
        Self::Memory(MemoryStore::new())
    }
}

impl From<MemoryStore> for AnyStore {
    fn from(store: MemoryStore) -> Self {
        Self::Memory(store)
    }
}

#[cfg(feature = "redis")]
impl From<RedisStore> for AnyStore {
    fn from(store: RedisStore) -> Self {
        Self::Redis(store)
    }
}

impl StreamStore for AnyStore {
    async fn create(&self, id: &StreamId) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.create(id).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => store.create(id).await,
        }
    }

    async fn append(&self, id: &StreamId, events: &[StoredEvent]) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.append(id, events).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => store.append(id, events).await,
        }
    }

    async fn finish(
        &self,
        id: &StreamId,
        last_seq: u64,
        outcome: Outcome,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.finish(id, last_seq, outcome).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => store.finish(id, last_seq, outcome).await,
        }
    }

    async fn subscribe(
        &self,
        id: &StreamId,
        from: ResumeFrom,
    ) -> Result<Subscription, ResumeError> {
        match self {
            Self::Memory(store) => store.subscribe(id, from).await,
            #[cfg(feature = "redis")]
            Self::Redis(store) => store.subscribe(id, from).await,
        }
    }
}
