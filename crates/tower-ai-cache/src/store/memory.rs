//! L1: the in-process cache, bounded by total bytes (TinyLFU admission, LRU
//! eviction, through `moka`), each entry kept at most the L1 TTL.

use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::entry::{Entry, Freshness, now_ms};
use crate::key::CacheKey;
use crate::tag::TagId;

/// What an L1 lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Fresh(Arc<Entry>, Duration),
    Stale(Arc<Entry>),
    Miss,
}

#[derive(Clone)]
pub(crate) struct L1 {
    cache: Cache<CacheKey, Arc<Entry>>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl L1 {
    /// At most `capacity` bytes, each entry for `ttl_cap` from its store
    /// (one deadline for all, a timer wheel's work less per insert than a
    /// deadline each: an entry past its own lifetime reads as a miss).
    pub(crate) fn new(capacity: u64, ttl_cap: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &CacheKey, v: &Arc<Entry>| v.weight())
            .time_to_live(ttl_cap)
            .support_invalidation_closures()
            .eviction_listener(|_k, _v, cause| {
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => return,
                    RemovalCause::Replaced => return,
                };
                metrics::counter!("tower_ai_cache_evictions_total", "cause" => cause).increment(1);
            })
            .build();
        Self { cache }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Lookup {
        let Some(entry) = self.cache.get(key) else {
            return Lookup::Miss;
        };
        match entry.lifetime.freshness(now_ms()) {
            Freshness::Fresh(left) => Lookup::Fresh(entry, left),
            Freshness::Stale(_) => Lookup::Stale(entry),
            Freshness::Gone => Lookup::Miss,
        }
    }

    /// Whether an entry is held for `key` (fresh or not), without touching
    /// its recency.
    pub(crate) fn contains(&self, key: &CacheKey) -> bool {
        self.cache.contains_key(key)
    }

    pub(crate) fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
        metrics::gauge!("tower_ai_cache_l1_bytes").set(self.cache.weighted_size() as f64);
    }

    pub(crate) fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
    }

    pub(crate) fn remove_tag(&self, tag: TagId) {
        if self
            .cache
            .invalidate_entries_if(move |_k, v| v.tags.contains(&tag))
            .is_err()
        {
            // Closures are enabled at build time; if moka refused anyway,
            // dropping everything is the safe answer.
            self.cache.invalidate_all();
        }
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}
