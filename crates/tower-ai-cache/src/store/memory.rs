//! L1: the in-process cache, bounded by total bytes (`quick_cache`: a
//! scan-resistant CLOCK-Pro eviction, in shards each behind one lock), each
//! entry kept at most the L1 TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::entry::{Entry, Freshness, millis, now_ms};
use crate::key::CacheKey;
use crate::tag::TagId;

/// What an L1 lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Fresh(Arc<Entry>, Duration),
    Stale(Arc<Entry>),
    Miss,
}

/// An entry as L1 holds it: with its weight (read on every eviction scan)
/// and the instant L1 lets it go.
#[derive(Clone)]
struct Held {
    entry: Arc<Entry>,
    weight: u32,
    until_ms: u64,
}

#[derive(Clone, Copy)]
struct ByWeight;

impl Weighter<CacheKey, Held> for ByWeight {
    fn weight(&self, _key: &CacheKey, held: &Held) -> u64 {
        u64::from(held.weight)
    }
}

/// Counts the entries an insert pushed out, once per insert.
#[derive(Clone, Copy)]
struct CountEvictions;

/// The evictions of one insert; counted when it ends.
#[derive(Default)]
struct Evicted(u64);

impl Drop for Evicted {
    fn drop(&mut self) {
        if self.0 > 0 {
            metrics::counter!("tower_ai_cache_evictions_total", "cause" => "size")
                .increment(self.0);
        }
    }
}

impl Lifecycle<CacheKey, Held> for CountEvictions {
    type RequestState = Evicted;

    fn on_evict(&self, evicted: &mut Evicted, _key: CacheKey, _held: Held) {
        evicted.0 += 1;
    }
}

/// Each shard holds at least this much, so that the largest answer fits
/// in one (an entry over its shard's share is never admitted).
const MIN_SHARD_BYTES: u64 = 8 << 20;

/// A guess of the average entry's size, to size the shards' tables.
const TYPICAL_ENTRY_BYTES: u64 = 2 << 10;

/// Inserts set `tower_ai_cache_l1_bytes` at most this often: its value is
/// the sum over the shards, each read under its lock, which an insert on
/// every request would take on every core.
const GAUGE_EVERY_MS: u64 = 100;

#[derive(Clone)]
pub(crate) struct L1 {
    cache: Arc<Cache<CacheKey, Held, ByWeight, DefaultHashBuilder, CountEvictions>>,
    ttl_cap_ms: u64,
    /// When an insert last set the bytes gauge (`now_ms`).
    gauged_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl L1 {
    /// At most `capacity` bytes, each entry for `ttl_cap` from its store
    /// (an entry past its own lifetime, or past this cap, reads as a miss).
    pub(crate) fn new(capacity: u64, ttl_cap: Duration) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (capacity / MIN_SHARD_BYTES).clamp(1, (parallelism * 4) as u64);
        // A power of two at most `shards` (quick_cache rounds up).
        let shards = 1 << (u64::BITS - 1 - shards.leading_zeros());
        let options = OptionsBuilder::new()
            .shards(shards)
            .weight_capacity(capacity)
            .estimated_items_capacity(
                usize::try_from((capacity / TYPICAL_ENTRY_BYTES).clamp(64, 1 << 20))
                    .unwrap_or(1 << 20),
            )
            .build();
        let cache = match options {
            Ok(options) => Cache::with_options(
                options,
                ByWeight,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            // Refused only when a capacity is unset; both are set above.
            Err(_) => Cache::with(
                64,
                capacity,
                ByWeight,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
        };
        Self {
            cache: Arc::new(cache),
            ttl_cap_ms: millis(ttl_cap),
            gauged_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Lookup {
        let Some(held) = self.cache.get(key) else {
            return Lookup::Miss;
        };
        let now = now_ms();
        if now >= held.until_ms {
            self.expire(key, &held);
            return Lookup::Miss;
        }
        match held.entry.lifetime.freshness(now) {
            Freshness::Fresh(left) => Lookup::Fresh(held.entry, left),
            Freshness::Stale(_) => Lookup::Stale(held.entry),
            Freshness::Gone => {
                self.expire(key, &held);
                Lookup::Miss
            }
        }
    }

    /// Drops an entry past its time (unless another took its place).
    fn expire(&self, key: &CacheKey, held: &Held) {
        if self
            .cache
            .remove_if(key, |h| Arc::ptr_eq(&h.entry, &held.entry))
            .is_some()
        {
            metrics::counter!("tower_ai_cache_evictions_total", "cause" => "expired").increment(1);
        }
    }

    /// Whether an entry is held for `key` (fresh or not), without touching
    /// its recency.
    pub(crate) fn contains(&self, key: &CacheKey) -> bool {
        self.cache.contains_key(key)
    }

    pub(crate) fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        let now = now_ms();
        let held = Held {
            weight: entry.weight(),
            until_ms: now.saturating_add(self.ttl_cap_ms),
            entry,
        };
        self.cache.insert(key, held);
        // One insert in each `GAUGE_EVERY_MS` sets the gauge (the others
        // read one atomic): it follows the inserts within that time.
        let last = self.gauged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= GAUGE_EVERY_MS
            && self
                .gauged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.set_gauge();
        }
    }

    pub(crate) fn remove(&self, key: &CacheKey) {
        self.cache.remove(key);
        self.set_gauge();
    }

    pub(crate) fn remove_tag(&self, tag: TagId) {
        self.cache
            .retain(|_k, held| !held.entry.tags.contains(&tag));
        self.set_gauge();
    }

    pub(crate) fn clear(&self) {
        self.cache.clear();
        self.set_gauge();
    }

    fn set_gauge(&self) {
        metrics::gauge!("tower_ai_cache_l1_bytes").set(self.cache.weight() as f64);
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weight()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::entry::{Head, Lifetime};

    fn entry(body: usize, tag: u8) -> Arc<Entry> {
        Arc::new(Entry {
            head: Arc::new(Head::storable(StatusCode::OK, &HeaderMap::new())),
            body: Bytes::from(vec![b'x'; body]),
            trailers: None,
            lifetime: Lifetime::new(Duration::from_secs(60), Duration::ZERO, Duration::ZERO),
            tokens: 0,
            tags: vec![TagId::from_bytes([tag; 16])],
        })
    }

    fn key(n: u32) -> CacheKey {
        let mut bytes = [0; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        CacheKey::from_bytes(bytes)
    }

    #[test]
    fn an_entry_past_the_l1_ttl_reads_as_a_miss_and_goes() {
        let kept = L1::new(1 << 20, Duration::from_secs(60));
        kept.insert(key(1), entry(10, 0));
        assert!(matches!(kept.get(&key(1)), Lookup::Fresh(..)));

        let capped = L1::new(1 << 20, Duration::ZERO);
        capped.insert(key(1), entry(10, 0));
        assert!(capped.contains(&key(1)));
        assert!(matches!(capped.get(&key(1)), Lookup::Miss));
        assert!(!capped.contains(&key(1)));
    }

    #[test]
    fn bytes_stay_within_the_capacity() {
        let l1 = L1::new(64 << 10, Duration::from_secs(60));
        for n in 0..1_000 {
            l1.insert(key(n), entry(1_000, 0));
            assert!(
                l1.weighted_size() <= 64 << 10,
                "{} bytes",
                l1.weighted_size()
            );
        }
        assert!(l1.entry_count() > 10 && l1.entry_count() < 64);
    }

    #[test]
    fn the_largest_answer_fits_in_the_default_capacity() {
        // 4 MiB is `max_body`'s default; 64 MiB `l1_capacity`'s.
        let l1 = L1::new(64 << 20, Duration::from_secs(60));
        l1.insert(key(1), entry(4 << 20, 0));
        assert!(matches!(l1.get(&key(1)), Lookup::Fresh(..)));
    }

    #[test]
    fn a_tag_drops_its_entries_only() {
        let l1 = L1::new(1 << 20, Duration::from_secs(60));
        l1.insert(key(1), entry(10, 1));
        l1.insert(key(2), entry(10, 2));
        l1.remove_tag(TagId::from_bytes([1; 16]));
        assert!(!l1.contains(&key(1)));
        assert!(l1.contains(&key(2)));
    }

    /// Records the bytes gauge; any other metric goes nowhere.
    #[derive(Default)]
    struct BytesGauge(Arc<AtomicU64>);

    impl BytesGauge {
        fn read(&self) -> f64 {
            f64::from_bits(self.0.load(Ordering::Relaxed))
        }
    }

    impl metrics::Recorder for BytesGauge {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            if key.name() == "tower_ai_cache_l1_bytes" {
                metrics::Gauge::from_arc(Arc::clone(&self.0))
            } else {
                metrics::Gauge::noop()
            }
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn the_bytes_gauge_follows_the_first_insert_and_every_invalidation() {
        let gauge = BytesGauge::default();
        metrics::with_local_recorder(&gauge, || {
            let l1 = L1::new(1 << 20, Duration::from_secs(60));
            l1.insert(key(1), entry(10, 1));
            let one = l1.weighted_size();
            assert!(one > 0);
            assert_eq!(gauge.read(), one as f64);
            // Later inserts may leave it for up to `GAUGE_EVERY_MS`; an
            // invalidation sets it at once.
            l1.insert(key(2), entry(10, 2));
            l1.insert(key(3), entry(10, 3));
            l1.remove_tag(TagId::from_bytes([1; 16]));
            assert_eq!(gauge.read(), l1.weighted_size() as f64);
            l1.remove(&key(2));
            assert_eq!(gauge.read(), l1.weighted_size() as f64);
            l1.clear();
            assert_eq!(gauge.read(), 0.0);
        });
    }
}
