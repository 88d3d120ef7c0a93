//! The embedded index: exact answers (against a plain scan, across the
//! threaded path too), scopes that never leak, TTLs on a paused clock,
//! bounds, and bad vectors refused with nothing written.

use std::time::Duration;

use tower_ai_context::{IndexError, MemoryIndex, Query, Record, VectorIndex};

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn vector(&mut self, dims: usize) -> Vec<f32> {
        (0..dims)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }
}

fn unit(v: &[f32]) -> Vec<f64> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|x| f64::from(*x) / norm).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    unit(a).iter().zip(unit(b)).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn search_finds_what_a_plain_scan_finds_on_both_paths() {
    // 40,000 records in one scope take the threaded path (past 16,384).
    for rows in [500usize, 40_000] {
        let dims = 24;
        let mut rng = Rng(rows as u64);
        let index = MemoryIndex::builder("m", dims).build();
        let vectors: Vec<Vec<f32>> = (0..rows).map(|_| rng.vector(dims)).collect();
        let records = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| Record::new("s", i.to_string(), v.clone(), i.to_string()))
            .collect();
        index.upsert(records).await.expect("upsert");
        assert_eq!(index.len(), rows);
        for _ in 0..20 {
            let query = rng.vector(dims);
            let hits = index
                .search(Query::new(&query, &["s"]).k(7))
                .await
                .expect("search");
            let mut plain: Vec<(f64, usize)> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| (cosine(&query, v), i))
                .collect();
            plain.sort_by(|a, b| b.0.total_cmp(&a.0));
            assert_eq!(hits.len(), 7);
            for (hit, (score, i)) in hits.iter().zip(&plain) {
                assert_eq!(&*hit.id, i.to_string(), "{rows} rows");
                assert!((f64::from(hit.score) - score).abs() < 1e-4);
                assert_eq!(hit.payload, i.to_string());
            }
        }
    }
}

#[tokio::test]
async fn no_query_ever_sees_another_scope() {
    let dims = 16;
    let tenants = 25;
    let mut rng = Rng(7);
    let index = MemoryIndex::builder("m", dims).build();
    // Every tenant holds the same questions (identical vectors): the
    // nearest record of all is always in another tenant too.
    let questions: Vec<Vec<f32>> = (0..40).map(|_| rng.vector(dims)).collect();
    for t in 0..tenants {
        let records = questions
            .iter()
            .enumerate()
            .map(|(q, v)| {
                Record::new(
                    format!("tenant:{t}"),
                    format!("q{q}"),
                    v.clone(),
                    format!("{t}"),
                )
            })
            .collect();
        index.upsert(records).await.expect("upsert");
    }
    index
        .upsert(vec![Record::new(
            "public",
            "faq",
            questions[0].clone(),
            "public",
        )])
        .await
        .expect("upsert");
    let mut public_hits = 0;
    for _ in 0..1_000 {
        let t = rng.below(tenants);
        let q = rng.below(questions.len() as u64) as usize;
        let scope = format!("tenant:{t}");
        let with_public = rng.below(2) == 0;
        let scopes: Vec<&str> = if with_public {
            vec![&scope, "public"]
        } else {
            vec![&scope]
        };
        let hits = index
            .search(Query::new(&questions[q], &scopes).k(5))
            .await
            .expect("search");
        assert_eq!(hits.len(), 5);
        for hit in &hits {
            if &*hit.scope == "public" {
                assert!(with_public);
                public_hits += 1;
            } else {
                assert_eq!(&*hit.scope, scope);
                assert_eq!(hit.payload, t.to_string());
            }
        }
        assert!(hits[0].score > 0.9999, "the question itself first");
    }
    assert!(public_hits > 0, "public records are found when asked for");
}

#[tokio::test]
async fn min_score_k_and_ties() {
    let index = MemoryIndex::builder("m", 2).build();
    index
        .upsert(vec![
            Record::new("s", "first", vec![1.0, 0.0], "a"),
            Record::new("s", "second", vec![2.0, 0.0], "b"),
            Record::new("s", "diagonal", vec![1.0, 1.0], "c"),
            Record::new("s", "opposite", vec![-1.0, 0.0], "d"),
        ])
        .await
        .expect("upsert");
    let ids = |hits: Vec<tower_ai_context::Hit>| {
        hits.iter().map(|h| h.id.to_string()).collect::<Vec<_>>()
    };
    let all = index
        .search(Query::new(&[3.0, 0.0], &["s"]))
        .await
        .expect("search");
    // Equal scores: the record written first comes first.
    assert_eq!(ids(all), ["first", "second", "diagonal", "opposite"]);
    let above = index
        .search(Query::new(&[3.0, 0.0], &["s"]).min_score(0.7))
        .await
        .expect("search");
    assert_eq!(ids(above), ["first", "second", "diagonal"]);
    let one = index
        .search(Query::new(&[0.0, 1.0], &["s", "s"]).k(1))
        .await
        .expect("search");
    assert_eq!(ids(one), ["diagonal"]);
    let none = index
        .search(Query::new(&[0.0, 1.0], &["s"]).k(0))
        .await
        .expect("search");
    assert!(none.is_empty());
}

#[tokio::test]
async fn upsert_replaces_and_delete_removes() {
    let index = MemoryIndex::builder("m", 2).build();
    index
        .upsert(vec![
            Record::new("s", "a", vec![1.0, 0.0], "old"),
            Record::new("s", "b", vec![0.0, 1.0], "b"),
            Record::new("t", "a", vec![1.0, 0.0], "other scope"),
        ])
        .await
        .expect("upsert");
    index
        .upsert(vec![Record::new("s", "a", vec![1.0, 0.1], "new")])
        .await
        .expect("upsert");
    assert_eq!(index.len(), 3);
    let hits = index
        .search(Query::new(&[1.0, 0.0], &["s"]).k(1))
        .await
        .expect("search");
    assert_eq!(hits[0].payload, "new");

    assert_eq!(index.delete("s", &["a", "missing"]).await, Ok(1));
    assert_eq!(index.len(), 2);
    let hits = index
        .search(Query::new(&[1.0, 0.0], &["s"]))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(&*hits[0].id, "b", "the moved row is still found by its id");
    assert_eq!(index.delete("s", &["b"]).await, Ok(1));
    let hits = index
        .search(Query::new(&[1.0, 0.0], &["t"]))
        .await
        .expect("search");
    assert_eq!(hits[0].payload, "other scope");
}

#[tokio::test]
async fn bad_vectors_are_refused_and_nothing_is_written() {
    let index = MemoryIndex::builder("embed-small", 3).build();
    assert_eq!(index.name(), "embed-small:3");
    let batch = |bad: Vec<f32>| {
        vec![
            Record::new("s", "good", vec![1.0, 0.0, 0.0], ""),
            Record::new("s", "bad", bad, ""),
        ]
    };
    assert_eq!(
        index.upsert(batch(vec![1.0, 0.0])).await,
        Err(IndexError::Dimensions {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        index.upsert(batch(vec![0.0; 3])).await,
        Err(IndexError::InvalidVector)
    );
    assert_eq!(
        index.upsert(batch(vec![f32::NAN, 1.0, 0.0])).await,
        Err(IndexError::InvalidVector)
    );
    assert!(index.is_empty(), "a refused batch writes nothing");
    let refused = index.search(Query::new(&[1.0; 4], &["s"])).await;
    assert_eq!(
        refused,
        Err(IndexError::Dimensions {
            expected: 3,
            got: 4
        })
    );
    let small = MemoryIndex::builder("m", 3).max_bytes(100).build();
    assert!(matches!(
        small
            .upsert(vec![Record::new("s", "big", vec![1.0; 3], vec![0u8; 200])])
            .await,
        Err(IndexError::TooLarge { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn records_expire_after_their_ttl() {
    let index = MemoryIndex::builder("m", 2).build();
    index
        .upsert(vec![
            Record::new("s", "short", vec![1.0, 0.0], "").ttl(Duration::from_secs(10)),
            Record::new("s", "long", vec![1.0, 0.1], "").ttl(Duration::from_secs(60)),
            Record::new("s", "forever", vec![1.0, 0.2], ""),
        ])
        .await
        .expect("upsert");
    let ids = || async {
        index
            .search(Query::new(&[1.0, 0.0], &["s"]))
            .await
            .expect("search")
            .iter()
            .map(|h| h.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids().await, ["short", "long", "forever"]);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(ids().await, ["long", "forever"]);
    assert_eq!(index.len(), 3, "expired records stay until purged");
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(ids().await, ["forever"]);
    assert_eq!(index.purge_expired(), 2);
    assert_eq!(index.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn past_a_bound_expired_records_go_first_then_the_oldest() {
    let index = MemoryIndex::builder("m", 2).max_records(3).build();
    index
        .upsert(vec![
            Record::new("s", "oldest", vec![1.0, 0.0], ""),
            Record::new("s", "expiring", vec![1.0, 0.0], "").ttl(Duration::from_secs(1)),
            Record::new("t", "middle", vec![1.0, 0.0], ""),
        ])
        .await
        .expect("upsert");
    tokio::time::advance(Duration::from_secs(2)).await;
    index
        .upsert(vec![Record::new("s", "newer", vec![1.0, 0.0], "")])
        .await
        .expect("upsert");
    let ids = |scope: &'static str| {
        let index = &index;
        async move {
            let mut ids: Vec<String> = index
                .search(Query::new(&[1.0, 0.0], &[scope]))
                .await
                .expect("search")
                .iter()
                .map(|h| h.id.to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids("s").await, ["newer", "oldest"], "the expired one went");
    index
        .upsert(vec![Record::new("t", "newest", vec![1.0, 0.0], "")])
        .await
        .expect("upsert");
    assert_eq!(ids("s").await, ["newer"], "then the oldest");
    assert_eq!(ids("t").await, ["middle", "newest"]);
    assert_eq!(index.len(), 3);

    let bytes = MemoryIndex::builder("m", 2).max_bytes(400).build();
    for i in 0..10 {
        bytes
            .upsert(vec![Record::new(
                "s",
                i.to_string(),
                vec![1.0, 0.0],
                vec![0u8; 50],
            )])
            .await
            .expect("upsert");
        assert!(bytes.bytes() <= 400);
    }
    assert!(bytes.len() < 10 && !bytes.is_empty());
}
