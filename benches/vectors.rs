//! The vector index backends beside a plain linear scan, in the same run:
//! 10,000 and 100,000 records of 384 and 1,536 dimensions (the sizes of
//! common small and large embedding models), all in the searched scope, the
//! 5 nearest of each query. Backends: the embedded `MemoryIndex`, and
//! `RedisIndex` on a redis-server 8 with the RediSearch module (started by
//! test-support; `scripts/install-redis-search` fetches it), HNSW with its
//! default `ef_runtime` and exact (`.exact(true)`), over a loopback
//! connection, so a Redis search includes one round trip.
//!
//! The plain scan is what one would write first: a `Vec` per record, a
//! cosine computed as a sum over zipped iterators, every score collected
//! and sorted. `MemoryIndex` keeps a scope's unit vectors in one block,
//! computes dot products in 16 lanes, keeps a running top k, and splits a
//! search over 16,384 records across the machine's cores.
//!
//! ```sh
//! cargo bench --bench vectors             # 41 queries a size
//! cargo bench --bench vectors -- --quick  # 11
//! ```
//!
//! Reported per size and backend: the search's median and slowest time,
//! the plain scan's median over the backend's, and recall@5 (the share of
//! the plain scan's 5 nearest the backend found; HNSW is approximate).
//! Records go into Redis in pipelined batches (one script call per 1,000
//! records); the time that took is printed below the table. Redis is
//! measured at 10,000 records (inserting 100,000 into HNSW takes minutes).
//! The vectors are uniformly random, HNSW's worst case (no clusters to
//! find): its recall on real embeddings is far higher.

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tower_ai::context::redis::RedisIndex;
use tower_ai::context::{Hit, MemoryIndex, Query, Record, VectorIndex};
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn vector(&mut self, dims: usize) -> Vec<f32> {
        (0..dims)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The first thing one would write.
fn plain_scan(records: &[Vec<f32>], query: &[f32], k: usize) -> Vec<(f32, usize)> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let q = norm(query);
    let mut scores: Vec<(f32, usize)> = records
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let dot: f32 = v.iter().zip(query).map(|(a, b)| a * b).sum();
            (dot / (norm(v) * q), i)
        })
        .collect();
    scores.sort_by(|a, b| b.0.total_cmp(&a.0));
    scores.truncate(k);
    scores
}

/// Records per Redis upsert (one script call each).
const REDIS_BATCH: usize = 1_000;

/// The largest size written to Redis: HNSW insertion runs at a few hundred
/// to two thousand records a second here (10 minutes for 100,000 × 1,536),
/// so the 100,000-record sizes compare the embedded index and the scan only.
const REDIS_MAX_ROWS: usize = 10_000;

/// Share of `truth`'s ids among `hits`.
fn recall(hits: &[Hit], truth: &[(f32, usize)]) -> f64 {
    let found = truth
        .iter()
        .filter(|(_, i)| hits.iter().any(|h| h.id.parse::<usize>().ok() == Some(*i)))
        .count();
    found as f64 / truth.len().max(1) as f64
}

struct Row {
    backend: &'static str,
    times: Vec<Duration>,
    recall: f64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let queries = if quick { 11 } else { 41 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let redis = test_support::search::start();
    let client = runtime
        .block_on(connect(&[redis.url()], &ConnectOptions::default()))
        .expect("connected to the bench Redis");
    let degrade = Degrade::new(
        "context-bench",
        DegradeConfig::default().timeout(Duration::from_secs(10)),
    );
    println!(
        "{} threads; the 5 nearest, {queries} queries a size\n",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!(
        "| backend | records | dims | search p50 | search max | plain scan p50 | plain ÷ backend | recall@5 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for (rows, dims) in [
        (10_000, 384),
        (100_000, 384),
        (10_000, 1_536),
        (100_000, 1_536),
    ] {
        let mut rng = Rng(rows as u64 ^ dims as u64);
        let vectors: Vec<Vec<f32>> = (0..rows).map(|_| rng.vector(dims)).collect();
        let records = |from: usize, chunk: &[Vec<f32>]| -> Vec<Record> {
            chunk
                .iter()
                .enumerate()
                .map(|(i, v)| Record::new("tenant", (from + i).to_string(), v.clone(), ""))
                .collect()
        };
        let memory = MemoryIndex::builder("bench", dims)
            .max_bytes(usize::MAX)
            .build();
        for (chunk, start) in vectors.chunks(10_000).zip((0..).step_by(10_000)) {
            memory
                .upsert(records(start, chunk))
                .now_or_never()
                .expect("an in-memory upsert is ready at once")
                .expect("upsert");
        }
        let hnsw = RedisIndex::builder(client.clone(), "bench", dims)
            .prefix(format!("bench-{rows}"))
            .degrade(degrade.clone())
            .write_timeout(Duration::from_secs(60))
            .build();
        let exact = RedisIndex::builder(client.clone(), "bench", dims)
            .prefix(format!("bench-{rows}"))
            .degrade(degrade.clone())
            .exact(true)
            .build();
        let with_redis = rows <= REDIS_MAX_ROWS;
        let started = Instant::now();
        runtime.block_on(async {
            if !with_redis {
                return;
            }
            for (chunk, start) in vectors.chunks(REDIS_BATCH).zip((0..).step_by(REDIS_BATCH)) {
                hnsw.upsert(records(start, chunk))
                    .await
                    .expect("Redis upsert");
            }
        });
        if with_redis {
            notes.push(format!(
                "Redis: {rows} × {dims} written in {:.1} s ({:.0} records/s)",
                started.elapsed().as_secs_f64(),
                rows as f64 / started.elapsed().as_secs_f64()
            ));
        }
        let mut results = vec![
            Row {
                backend: "memory",
                times: Vec::new(),
                recall: 0.0,
            },
            Row {
                backend: "redis hnsw",
                times: Vec::new(),
                recall: 0.0,
            },
            Row {
                backend: "redis exact",
                times: Vec::new(),
                recall: 0.0,
            },
        ];
        let mut plain = Vec::with_capacity(queries);
        for _ in 0..queries {
            let query = rng.vector(dims);
            let started = Instant::now();
            let found = black_box(plain_scan(&vectors, &query, 5));
            plain.push(started.elapsed());
            let indexes: [&dyn VectorIndex; 3] = [&memory, &hnsw, &exact];
            let backends = if with_redis { 3 } else { 1 };
            for (index, row) in indexes.into_iter().zip(&mut results).take(backends) {
                let started = Instant::now();
                let hits = runtime
                    .block_on(index.search(Query::new(&query, &["tenant"]).k(5)))
                    .expect("search");
                row.times.push(started.elapsed());
                row.recall += recall(&hits, &found) / queries as f64;
            }
        }
        // The exact backends find the same nearest records.
        assert!(results[0].recall > 0.999);
        assert!(!with_redis || results[2].recall > 0.999);
        let plain = median(plain);
        for row in results.into_iter().filter(|row| !row.times.is_empty()) {
            let max = row.times.iter().max().copied().unwrap_or_default();
            let p50 = median(row.times);
            println!(
                "| {} | {rows} | {dims} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1}× | {:.2} |",
                row.backend,
                p50.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
                plain.as_secs_f64() * 1e3,
                plain.as_secs_f64() / p50.as_secs_f64(),
                row.recall,
            );
        }
    }
    println!();
    for note in notes {
        println!("{note}");
    }
}
