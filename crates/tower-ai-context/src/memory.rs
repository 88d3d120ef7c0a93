//! [`MemoryIndex`]: the embedded backend, exact cosine in process.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::HashMap;
use tokio::time::Instant;

use crate::index::{BoxFuture, Hit, IndexError, Query, Record, VectorIndex, normalized};

/// Bytes a record counts beyond its vector, ids and payload.
const RECORD_OVERHEAD: usize = 64;

/// Rows searched by one thread; a larger search is split across the
/// machine's cores.
const ROWS_PER_THREAD: usize = 16_384;

/// An in-process vector index: exact cosine similarity (a dot product of
/// unit vectors, every record of the searched scopes compared), bounded in
/// records and bytes, with per-record TTLs.
///
/// Each scope's vectors lie in one contiguous block, so a search streams
/// through memory; a search over more than 16,384 records is split across
/// the machine's cores. Searches share a read lock; writes take it alone.
/// Past a bound, expired records go first, then the oldest written.
///
/// A search runs in the task that awaits it: over 100,000 records of 384
/// dimensions, a few milliseconds.
pub struct MemoryIndex {
    name: String,
    dimensions: usize,
    max_records: usize,
    max_bytes: usize,
    inner: RwLock<Inner>,
}

impl fmt::Debug for MemoryIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.read();
        f.debug_struct("MemoryIndex")
            .field("name", &self.name)
            .field("records", &inner.records)
            .field("bytes", &inner.bytes)
            .field("max_records", &self.max_records)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Builds a [`MemoryIndex`].
#[derive(Debug, Clone)]
pub struct MemoryIndexBuilder {
    model: String,
    dimensions: usize,
    max_records: usize,
    max_bytes: usize,
}

impl MemoryIndexBuilder {
    /// At most this many records (default 1,000,000).
    #[must_use]
    pub fn max_records(mut self, n: usize) -> Self {
        self.max_records = n.max(1);
        self
    }

    /// At most this many bytes of vectors, ids and payloads (default 1 GiB).
    #[must_use]
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// The index.
    pub fn build(self) -> MemoryIndex {
        MemoryIndex {
            name: format!("{}:{}", self.model, self.dimensions),
            dimensions: self.dimensions,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            inner: RwLock::new(Inner::default()),
        }
    }
}

impl MemoryIndex {
    /// An index for the vectors of embedding model `model`, of `dimensions`
    /// dimensions.
    pub fn builder(model: impl Into<String>, dimensions: usize) -> MemoryIndexBuilder {
        MemoryIndexBuilder {
            model: model.into(),
            dimensions,
            max_records: 1_000_000,
            max_bytes: 1 << 30,
        }
    }

    /// The records held (expired ones included until they're purged).
    pub fn len(&self) -> usize {
        self.inner.read().records
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes its records count.
    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }

    /// Drops the expired records now (searches skip them anyway).
    pub fn purge_expired(&self) -> usize {
        self.inner.write().purge(Instant::now(), self.dimensions)
    }

    fn upsert_now(&self, records: Vec<Record>) -> Result<(), IndexError> {
        let now = Instant::now();
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            let vector = normalized(&record.vector, self.dimensions)?;
            let bytes = record_bytes(&record, self.dimensions);
            if bytes > self.max_bytes {
                return Err(IndexError::TooLarge {
                    bytes,
                    max_bytes: self.max_bytes,
                });
            }
            rows.push((record, vector, bytes));
        }
        let mut inner = self.inner.write();
        for (record, vector, bytes) in rows {
            let expires = record.ttl.and_then(|ttl| now.checked_add(ttl));
            inner.insert(record, &vector, bytes, expires, self.dimensions);
        }
        if inner.records > self.max_records || inner.bytes > self.max_bytes {
            inner.purge(now, self.dimensions);
        }
        while inner.records > self.max_records || inner.bytes > self.max_bytes {
            if !inner.evict_oldest(self.dimensions) {
                break;
            }
        }
        Ok(())
    }

    fn search_now(&self, query: &Query<'_>) -> Result<Vec<Hit>, IndexError> {
        let vector = normalized(query.vector, self.dimensions)?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let inner = self.inner.read();
        let mut scopes: Vec<&str> = query.scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        let mut best = TopK::new(query.k);
        for scope in scopes {
            let Some((scope, partition)) = inner.partitions.get_key_value(scope) else {
                continue;
            };
            let found = partition.search(&vector, query.k, query.min_score, now, self.dimensions);
            for (score, row) in found {
                best.push(score, scope, &partition.rows[row]);
            }
        }
        Ok(best.into_hits())
    }

    fn delete_now(&self, scope: &str, ids: &[&str]) -> usize {
        let mut inner = self.inner.write();
        ids.iter()
            .filter(|id| inner.remove(scope, id, self.dimensions))
            .count()
    }
}

impl VectorIndex for MemoryIndex {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn upsert(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), IndexError>> {
        Box::pin(async move { self.upsert_now(records) })
    }

    fn search<'a>(&'a self, query: Query<'a>) -> BoxFuture<'a, Result<Vec<Hit>, IndexError>> {
        Box::pin(async move { self.search_now(&query) })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a str,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<usize, IndexError>> {
        Box::pin(async move { Ok(self.delete_now(scope, ids)) })
    }
}

fn record_bytes(record: &Record, dimensions: usize) -> usize {
    dimensions * 4 + record.scope.len() + record.id.len() + record.payload.len() + RECORD_OVERHEAD
}

#[derive(Default)]
struct Inner {
    partitions: HashMap<Arc<str>, Partition>,
    /// Every record by its write sequence: the oldest first.
    order: BTreeMap<u64, (Arc<str>, Arc<str>)>,
    next_seq: u64,
    records: usize,
    bytes: usize,
}

impl Inner {
    fn insert(
        &mut self,
        record: Record,
        vector: &[f32],
        bytes: usize,
        expires: Option<Instant>,
        dimensions: usize,
    ) {
        self.remove(&record.scope, &record.id, dimensions);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order
            .insert(seq, (Arc::clone(&record.scope), Arc::clone(&record.id)));
        let partition = self.partitions.entry(record.scope).or_default();
        partition
            .ids
            .insert(Arc::clone(&record.id), partition.rows.len());
        partition.vectors.extend_from_slice(vector);
        partition.rows.push(Row {
            id: record.id,
            payload: record.payload,
            expires,
            seq,
            bytes,
        });
        self.records += 1;
        self.bytes += bytes;
    }

    /// Removes one record; whether it was there.
    fn remove(&mut self, scope: &str, id: &str, dimensions: usize) -> bool {
        let Some(partition) = self.partitions.get_mut(scope) else {
            return false;
        };
        let Some(row) = partition.take(id, dimensions) else {
            return false;
        };
        if partition.rows.is_empty() {
            self.partitions.remove(scope);
        }
        self.order.remove(&row.seq);
        self.records -= 1;
        self.bytes -= row.bytes;
        true
    }

    fn evict_oldest(&mut self, dimensions: usize) -> bool {
        let Some((_, (scope, id))) = self.order.pop_first() else {
            return false;
        };
        self.remove(&scope, &id, dimensions);
        true
    }

    fn purge(&mut self, now: Instant, dimensions: usize) -> usize {
        let expired: Vec<(Arc<str>, Arc<str>)> = self
            .partitions
            .iter()
            .flat_map(|(scope, partition)| {
                partition
                    .rows
                    .iter()
                    .filter(|row| row.expired(now))
                    .map(|row| (Arc::clone(scope), Arc::clone(&row.id)))
            })
            .collect();
        for (scope, id) in &expired {
            self.remove(scope, id, dimensions);
        }
        expired.len()
    }
}

/// One scope's records: row `i`'s vector is `vectors[i * dimensions..]`.
#[derive(Default)]
struct Partition {
    vectors: Vec<f32>,
    rows: Vec<Row>,
    ids: HashMap<Arc<str>, usize>,
}

struct Row {
    id: Arc<str>,
    payload: Bytes,
    expires: Option<Instant>,
    seq: u64,
    bytes: usize,
}

impl Row {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

impl Partition {
    /// Removes a row (the last one takes its place).
    fn take(&mut self, id: &str, dimensions: usize) -> Option<Row> {
        let index = self.ids.remove(id)?;
        let last = self.rows.len() - 1;
        let row = self.rows.swap_remove(index);
        if index != last {
            self.vectors.copy_within(
                last * dimensions..(last + 1) * dimensions,
                index * dimensions,
            );
            self.ids.insert(Arc::clone(&self.rows[index].id), index);
        }
        self.vectors.truncate(last * dimensions);
        Some(row)
    }

    /// The best `k` rows at or above `min_score`, as (score, row index).
    fn search(
        &self,
        query: &[f32],
        k: usize,
        min_score: f32,
        now: Instant,
        dimensions: usize,
    ) -> Vec<(f32, usize)> {
        let rows = self.rows.len();
        let threads = thread::available_parallelism().map_or(1, usize::from);
        let parts = rows.div_ceil(ROWS_PER_THREAD).clamp(1, threads);
        let scan = |from: usize, to: usize| {
            let mut best = Vec::with_capacity(k + 1);
            for (offset, vector) in self.vectors[from * dimensions..to * dimensions]
                .chunks_exact(dimensions)
                .enumerate()
            {
                let score = dot(query, vector);
                if score < min_score {
                    continue;
                }
                let row = from + offset;
                if best.len() == k && !self.better(score, row, best[k - 1]) {
                    continue;
                }
                if self.rows[row].expired(now) {
                    continue;
                }
                let at = best.partition_point(|&other| self.better(other.0, other.1, (score, row)));
                best.insert(at, (score, row));
                best.truncate(k);
            }
            best
        };
        if parts == 1 {
            return scan(0, rows);
        }
        let per = rows.div_ceil(parts);
        let found: Vec<Vec<(f32, usize)>> = thread::scope(|s| {
            let handles: Vec<_> = (1..parts)
                .map(|p| {
                    let scan = &scan;
                    s.spawn(move || scan(p * per, ((p + 1) * per).min(rows)))
                })
                .collect();
            let mut found = vec![scan(0, per.min(rows))];
            // A scan can't panic (slices within bounds); an empty result
            // if one did is still a valid (partial) answer.
            found.extend(handles.into_iter().map(|h| h.join().unwrap_or_default()));
            found
        });
        let mut all: Vec<(f32, usize)> = found.into_iter().flatten().collect();
        all.sort_unstable_by(|a, b| {
            if self.better(a.0, a.1, *b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        all.truncate(k);
        all
    }

    /// Whether (score, row) ranks before `other`: a higher score, then the
    /// record written first.
    fn better(&self, score: f32, row: usize, other: (f32, usize)) -> bool {
        score > other.0 || (score == other.0 && self.rows[row].seq < self.rows[other.1].seq)
    }
}

/// The best `k` hits across scopes.
struct TopK<'a> {
    k: usize,
    hits: Vec<(f32, u64, &'a Arc<str>, &'a Row)>,
}

impl<'a> TopK<'a> {
    fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(k + 1),
        }
    }

    fn push(&mut self, score: f32, scope: &'a Arc<str>, row: &'a Row) {
        let better = |a: (f32, u64), b: (f32, u64)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
        let at = self
            .hits
            .partition_point(|h| better((h.0, h.1), (score, row.seq)));
        if at < self.k {
            self.hits.insert(at, (score, row.seq, scope, row));
            self.hits.truncate(self.k);
        }
    }

    fn into_hits(self) -> Vec<Hit> {
        self.hits
            .into_iter()
            .map(|(score, _, scope, row)| Hit {
                scope: Arc::clone(scope),
                id: Arc::clone(&row.id),
                score,
                payload: row.payload.clone(),
            })
            .collect()
    }
}

/// The dot product, in 16 lanes the compiler vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a16, a_rest) = a.as_chunks::<16>();
    let (b16, b_rest) = b.as_chunks::<16>();
    let mut lanes = [0.0f32; 16];
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::dot;

    #[test]
    fn dot_matches_a_plain_sum_on_every_length() {
        for len in [0, 1, 15, 16, 17, 384, 1536, 1537] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.5)
                .collect();
            let plain: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!(
                (f64::from(dot(&a, &b)) - plain).abs() < 1e-3,
                "length {len}"
            );
        }
    }
}
