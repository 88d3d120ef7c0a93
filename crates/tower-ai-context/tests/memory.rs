//! The embedded index: the backend suite (exact answers against a plain
//! scan, across the threaded path too; scopes that never leak; ties;
//! replacing and deleting; bad vectors refused with nothing written), then
//! what only `MemoryIndex` does: TTLs on a paused clock, bounds.

mod suite;

use std::time::Duration;

use tower_ai_context::{IndexError, MemoryIndex, Query, Record, VectorIndex};

fn make(model: &str, dims: usize) -> Box<dyn VectorIndex> {
    Box::new(MemoryIndex::builder(model, dims).build())
}

#[tokio::test]
async fn search_finds_what_a_plain_scan_finds_on_both_paths() {
    // 40,000 records in one scope take the threaded path (past 16,384).
    for rows in [500, 40_000] {
        suite::search_finds_what_a_plain_scan_finds(&make, rows).await;
    }
}

#[tokio::test]
async fn no_query_ever_sees_another_scope() {
    suite::no_query_ever_sees_another_scope(&make).await;
}

#[tokio::test]
async fn min_score_k_and_ties() {
    suite::min_score_k_and_ties(&make).await;
}

#[tokio::test]
async fn upsert_replaces_and_delete_removes() {
    suite::upsert_replaces_and_delete_removes(&make).await;
}

#[tokio::test]
async fn bad_vectors_are_refused_and_nothing_is_written() {
    suite::bad_vectors_are_refused_and_nothing_is_written(&make).await;
}

#[tokio::test]
async fn lengths_count_records_and_a_record_past_the_byte_bound_is_refused() {
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
    assert_eq!(index.len(), 3, "a replaced record counts once");
    assert_eq!(index.delete("s", &["a"]).await, Ok(1));
    assert_eq!(index.len(), 2);
    let refused = index
        .upsert(vec![
            Record::new("s", "good", vec![1.0, 0.0], ""),
            Record::new("s", "bad", vec![0.0, 0.0], ""),
        ])
        .await;
    assert_eq!(refused, Err(IndexError::InvalidVector));
    assert_eq!(index.len(), 2, "a refused batch writes nothing");

    let small = MemoryIndex::builder("m", 3).max_bytes(100).build();
    assert!(matches!(
        small
            .upsert(vec![Record::new("s", "big", vec![1.0; 3], vec![0u8; 200])])
            .await,
        Err(IndexError::TooLarge { .. })
    ));
    assert!(small.is_empty());
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
