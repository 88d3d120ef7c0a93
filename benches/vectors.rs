//! The embedded vector index's search beside a plain linear scan, in the
//! same run: 10,000 and 100,000 records of 384 and 1,536 dimensions (the
//! sizes of common small and large embedding models), all in the searched
//! scope, the 5 nearest of each query.
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
//! Reported per size: the search's median and slowest time for each, and
//! the plain scan's median over the index's.

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tower_ai::context::{MemoryIndex, Query, Record, VectorIndex};

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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let queries = if quick { 11 } else { 41 };
    println!(
        "{} threads; the 5 nearest, {queries} queries a size\n",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!("| records | dims | index p50 | index max | plain scan p50 | plain ÷ index |");
    println!("|---|---|---|---|---|---|");
    for (rows, dims) in [
        (10_000, 384),
        (100_000, 384),
        (10_000, 1_536),
        (100_000, 1_536),
    ] {
        let mut rng = Rng(rows as u64 ^ dims as u64);
        let vectors: Vec<Vec<f32>> = (0..rows).map(|_| rng.vector(dims)).collect();
        let index = MemoryIndex::builder("bench", dims)
            .max_bytes(usize::MAX)
            .build();
        for (chunk, start) in vectors.chunks(10_000).zip((0..).step_by(10_000)) {
            let records = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| Record::new("tenant", (start + i).to_string(), v.clone(), ""))
                .collect();
            index
                .upsert(records)
                .now_or_never()
                .expect("an in-memory upsert is ready at once")
                .expect("upsert");
        }
        let mut ours = Vec::with_capacity(queries);
        let mut plain = Vec::with_capacity(queries);
        for _ in 0..queries {
            let query = rng.vector(dims);
            let started = Instant::now();
            let hits = index
                .search(Query::new(&query, &["tenant"]).k(5))
                .now_or_never()
                .expect("an in-memory search is ready at once")
                .expect("search");
            ours.push(started.elapsed());
            let started = Instant::now();
            let found = black_box(plain_scan(&vectors, &query, 5));
            plain.push(started.elapsed());
            // Both find the same nearest record.
            assert_eq!(hits[0].id.parse::<usize>().ok(), Some(found[0].1));
        }
        let max = ours.iter().max().copied().unwrap_or_default();
        let (ours, plain) = (median(ours), median(plain));
        println!(
            "| {rows} | {dims} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1}× |",
            ours.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            plain.as_secs_f64() * 1e3,
            plain.as_secs_f64() / ours.as_secs_f64(),
        );
    }
}
