//! The tests every `VectorIndex` backend passes, each an async fn given a
//! way to make a fresh, empty index ([`Make`]): exact answers against a
//! plain scan, scopes that never leak, `min_score`, `k` and ties, upserts
//! that replace, deletes, and bad vectors refused with nothing written.

use tower_ai_context::{Hit, IndexError, Query, Record, VectorIndex};

/// Makes a fresh, empty index for an embedding model and its dimensions;
/// no two calls share records.
pub(crate) type Make<'a> = &'a dyn Fn(&str, usize) -> Box<dyn VectorIndex>;

/// A deterministic generator (xorshift64*).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(crate) fn vector(&mut self, dims: usize) -> Vec<f32> {
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

/// The ids of hits, in order.
pub(crate) fn ids(hits: &[Hit]) -> Vec<String> {
    hits.iter().map(|h| h.id.to_string()).collect()
}

/// Every record of `scopes` (up to 1,000), best first.
async fn all(index: &dyn VectorIndex, scopes: &[&str]) -> Vec<Hit> {
    let probe = vec![1.0; index.dimensions()];
    index
        .search(Query::new(&probe, scopes).k(1_000))
        .await
        .expect("search")
}

/// `rows` records in one scope, written in batches of 5,000; 20 queries,
/// each answered exactly as a plain scan in `f64` answers it.
pub(crate) async fn search_finds_what_a_plain_scan_finds(make: Make<'_>, rows: usize) {
    let dims = 24;
    let mut rng = Rng(rows as u64);
    let index = make("m", dims);
    let vectors: Vec<Vec<f32>> = (0..rows).map(|_| rng.vector(dims)).collect();
    for (start, chunk) in (0..).step_by(5_000).zip(vectors.chunks(5_000)) {
        let records = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let i = start + i;
                Record::new("s", i.to_string(), v.clone(), i.to_string())
            })
            .collect();
        index.upsert(records).await.expect("upsert");
    }
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
            assert_eq!(&*hit.scope, "s");
        }
    }
}

/// 25 tenants holding the same 40 questions and a public record; 1,000
/// random (tenant, question) searches, half with the public scope too:
/// never a hit from another tenant.
pub(crate) async fn no_query_ever_sees_another_scope(make: Make<'_>) {
    let dims = 16;
    let tenants = 25;
    let mut rng = Rng(7);
    let index = make("m", dims);
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

/// `min_score` cuts, `k` bounds, equal scores rank by write order, a
/// scope named twice counts once, `k = 0` finds nothing.
pub(crate) async fn min_score_k_and_ties(make: Make<'_>) {
    let index = make("m", 2);
    index
        .upsert(vec![
            Record::new("s", "first", vec![1.0, 0.0], "a"),
            Record::new("s", "second", vec![2.0, 0.0], "b"),
            Record::new("s", "diagonal", vec![1.0, 1.0], "c"),
            Record::new("s", "opposite", vec![-1.0, 0.0], "d"),
        ])
        .await
        .expect("upsert");
    // A later batch ties with both of the first too.
    index
        .upsert(vec![Record::new("s", "third", vec![0.5, 0.0], "e")])
        .await
        .expect("upsert");
    let all = index
        .search(Query::new(&[3.0, 0.0], &["s"]))
        .await
        .expect("search");
    // Equal scores: the record written first comes first.
    assert_eq!(
        ids(&all),
        ["first", "second", "third", "diagonal", "opposite"]
    );
    assert!((all[0].score - 1.0).abs() < 1e-6);
    assert!((all[4].score + 1.0).abs() < 1e-6);
    // The tie cut at k: the first written are kept.
    let two = index
        .search(Query::new(&[3.0, 0.0], &["s"]).k(2))
        .await
        .expect("search");
    assert_eq!(ids(&two), ["first", "second"]);
    let above = index
        .search(Query::new(&[3.0, 0.0], &["s"]).min_score(0.7))
        .await
        .expect("search");
    assert_eq!(ids(&above), ["first", "second", "third", "diagonal"]);
    let one = index
        .search(Query::new(&[0.0, 1.0], &["s", "s"]).k(1))
        .await
        .expect("search");
    assert_eq!(ids(&one), ["diagonal"]);
    assert_eq!(one[0].payload, "c");
    let none = index
        .search(Query::new(&[0.0, 1.0], &["s"]).k(0))
        .await
        .expect("search");
    assert!(none.is_empty());
    let nowhere = index
        .search(Query::new(&[0.0, 1.0], &["elsewhere"]))
        .await
        .expect("search");
    assert!(nowhere.is_empty());
}

/// An upsert with the same scope and id replaces (payload, vector, and its
/// place in the write order); a delete removes by scope and id only.
pub(crate) async fn upsert_replaces_and_delete_removes(make: Make<'_>) {
    let index = make("m", 2);
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
    assert_eq!(all(&*index, &["s", "t"]).await.len(), 3);
    let hits = index
        .search(Query::new(&[1.0, 0.0], &["s"]).k(1))
        .await
        .expect("search");
    assert_eq!(hits[0].payload, "new");

    assert_eq!(index.delete("s", &["a", "missing"]).await, Ok(1));
    assert_eq!(index.delete("s", &["a"]).await, Ok(0), "already gone");
    assert_eq!(all(&*index, &["s", "t"]).await.len(), 2);
    let hits = index
        .search(Query::new(&[1.0, 0.0], &["s"]))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(
        &*hits[0].id, "b",
        "the other record is still found by its id"
    );
    assert_eq!(index.delete("s", &["b"]).await, Ok(1));
    let hits = index
        .search(Query::new(&[1.0, 0.0], &["t"]))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].payload, "other scope");
    assert_eq!(index.delete("s", &[]).await, Ok(0));
}

/// A batch with one bad vector (wrong length, zero, NaN, infinite) is
/// refused whole; a query with a bad vector is refused.
pub(crate) async fn bad_vectors_are_refused_and_nothing_is_written(make: Make<'_>) {
    let index = make("embed-small", 3);
    assert_eq!(index.name(), "embed-small:3");
    assert_eq!(index.dimensions(), 3);
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
    assert_eq!(
        index.upsert(batch(vec![f32::INFINITY, 1.0, 0.0])).await,
        Err(IndexError::InvalidVector)
    );
    assert!(
        all(&*index, &["s"]).await.is_empty(),
        "a refused batch writes nothing"
    );
    let refused = index.search(Query::new(&[1.0; 4], &["s"])).await;
    assert_eq!(
        refused,
        Err(IndexError::Dimensions {
            expected: 3,
            got: 4
        })
    );
    assert_eq!(
        index.search(Query::new(&[0.0; 3], &["s"])).await,
        Err(IndexError::InvalidVector)
    );
    index.upsert(Vec::new()).await.expect("an empty batch");
}
