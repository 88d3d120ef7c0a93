//! `RedisIndex` on a real Redis with vector search (redis-server 8 and the
//! RediSearch module, started by test-support): the backend suite on a
//! standalone server and on a 3-master Cluster, then TTLs, hostile scopes,
//! and Redis stopped and restarted.

#![cfg(feature = "redis")]

mod suite;

use std::time::{Duration, Instant};

use fred::clients::Client;
use test_support::{eventually_async, search, shared};
use tower_ai_context::redis::RedisIndex;
use tower_ai_context::{IndexError, Query, Record, VectorIndex};
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};

/// A health state whose timeout only a real fault exceeds on a loaded test
/// machine.
fn patient() -> Degrade {
    Degrade::new(
        "context-test",
        DegradeConfig::default().timeout(Duration::from_secs(5)),
    )
}

/// An index under a prefix no other test uses.
fn index(client: &Client, model: &str, dims: usize, exact: bool) -> RedisIndex {
    RedisIndex::builder(client.clone(), model, dims)
        .prefix(shared::prefix("ctx"))
        .degrade(patient())
        .write_timeout(Duration::from_secs(20))
        .exact(exact)
        .build()
}

async fn standalone() -> Client {
    search::shared().client().await
}

async fn cluster() -> Client {
    search::shared_cluster().client().await
}

/// The backend suite on one deployment.
macro_rules! suite_on {
    ($name:ident, $client:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn search_finds_what_a_plain_scan_finds_exact() {
                let client = $client().await;
                let make = |model: &str, dims| -> Box<dyn VectorIndex> {
                    Box::new(index(&client, model, dims, true))
                };
                for rows in [500, 3_000] {
                    suite::search_finds_what_a_plain_scan_finds(&make, rows).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_query_ever_sees_another_scope() {
                let client = $client().await;
                let make = |model: &str, dims| -> Box<dyn VectorIndex> {
                    Box::new(index(&client, model, dims, false))
                };
                suite::no_query_ever_sees_another_scope(&make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn min_score_k_and_ties() {
                let client = $client().await;
                let make = |model: &str, dims| -> Box<dyn VectorIndex> {
                    Box::new(index(&client, model, dims, false))
                };
                suite::min_score_k_and_ties(&make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn upsert_replaces_and_delete_removes() {
                let client = $client().await;
                let make = |model: &str, dims| -> Box<dyn VectorIndex> {
                    Box::new(index(&client, model, dims, false))
                };
                suite::upsert_replaces_and_delete_removes(&make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_vectors_are_refused_and_nothing_is_written() {
                let client = $client().await;
                let make = |model: &str, dims| -> Box<dyn VectorIndex> {
                    Box::new(index(&client, model, dims, false))
                };
                suite::bad_vectors_are_refused_and_nothing_is_written(&make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hostile_scopes_match_only_themselves() {
                hostile_scopes(&$client().await).await;
            }
        }
    };
}

suite_on!(standalone_server, standalone);
suite_on!(cluster_nodes, cluster);

/// Scopes with query syntax, separators, case variants and unicode: each
/// finds its own record and nothing else.
async fn hostile_scopes(client: &Client) {
    let scopes = [
        "tenant a",
        "tenant  a",
        "a|b",
        "a | b",
        "a}b",
        "a{b",
        "a-b",
        "a:b",
        "a,b",
        "a",
        "b",
        "A",
        "Tenant",
        "tenant",
        "ünïcødé 🙂",
        "x} | @scope:{*",
        "*",
        "-@scope:{a}",
        "\\",
        "",
        "a\0b",
    ];
    let index = index(client, "m", 3, false);
    let records = scopes
        .iter()
        .map(|s| Record::new(*s, "doc", vec![1.0, 0.0, 0.0], s.to_string()))
        .collect();
    index.upsert(records).await.expect("upsert");
    for scope in scopes {
        let hits = index
            .search(Query::new(&[1.0, 0.0, 0.0], &[scope]).k(50))
            .await
            .expect("search");
        assert_eq!(hits.len(), 1, "scope {scope:?}: {hits:?}");
        assert_eq!(&*hits[0].scope, scope);
        assert_eq!(hits[0].payload, scope);
    }
    let two = index
        .search(Query::new(&[1.0, 0.0, 0.0], &["a", "b"]).k(50))
        .await
        .expect("search");
    let mut found: Vec<&str> = two.iter().map(|h| &*h.scope).collect();
    found.sort_unstable();
    assert_eq!(found, ["a", "b"]);
    assert_eq!(index.delete("a|b", &["doc"]).await, Ok(1));
    assert_eq!(index.delete("a", &["doc"]).await, Ok(1));
    let left = index
        .search(Query::new(&[1.0, 0.0, 0.0], &["b", "a | b"]).k(50))
        .await
        .expect("search");
    assert_eq!(left.len(), 2, "deleting one scope's record left the others");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_after_their_ttl() {
    let client = standalone().await;
    let index = index(&client, "m", 2, false);
    let ids = || async {
        suite::ids(
            &index
                .search(Query::new(&[1.0, 0.0], &["s"]))
                .await
                .expect("search"),
        )
    };
    index
        .upsert(vec![
            Record::new("s", "short", vec![1.0, 0.0], "").ttl(Duration::from_secs(600)),
            Record::new("s", "kept", vec![1.0, 0.1], "").ttl(Duration::from_millis(100)),
            Record::new("s", "forever", vec![1.0, 0.2], ""),
        ])
        .await
        .expect("upsert");
    // Replaced: "kept" loses its TTL, "short" gets a short one.
    index
        .upsert(vec![
            Record::new("s", "kept", vec![1.0, 0.1], ""),
            Record::new("s", "short", vec![1.0, 0.0], "").ttl(Duration::from_millis(100)),
        ])
        .await
        .expect("upsert");
    let gone = eventually_async(Duration::from_secs(10), || async {
        ids().await == ["kept", "forever"]
    })
    .await;
    assert!(
        gone.is_some(),
        "the short-lived record expired: {:?}",
        ids().await
    );
    assert_eq!(index.delete("s", &["short"]).await, Ok(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_is_unavailable_at_once_and_comes_back() {
    let mut server = search::start();
    let client = connect(&[server.url()], &ConnectOptions::default())
        .await
        .expect("connected");
    let timeout = Duration::from_millis(300);
    let index = RedisIndex::builder(client, "m", 2)
        .degrade(Degrade::new(
            "context-test",
            DegradeConfig::default()
                .timeout(timeout)
                .backoff(Duration::from_millis(50), Duration::from_millis(200)),
        ))
        .write_timeout(timeout)
        .build();
    index.ensure().await.expect("the index is created");
    let record = || vec![Record::new("s", "a", vec![1.0, 0.0], "here")];
    index.upsert(record()).await.expect("upsert");
    let found = index
        .search(Query::new(&[1.0, 0.0], &["s"]))
        .await
        .expect("search");
    assert_eq!(found.len(), 1);

    tokio::task::block_in_place(|| server.stop());
    for _ in 0..3 {
        let started = Instant::now();
        let refused = index.search(Query::new(&[1.0, 0.0], &["s"])).await;
        assert!(
            matches!(refused, Err(IndexError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "refused within the timeout: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let refused = index.upsert(record()).await;
        assert!(
            matches!(refused, Err(IndexError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
    }
    assert!(!index.health().is_up());

    // Back, empty: the index is created again and works.
    tokio::task::block_in_place(|| server.restart());
    let back = eventually_async(Duration::from_secs(30), || async {
        index.upsert(record()).await.is_ok()
            && index
                .search(Query::new(&[1.0, 0.0], &["s"]))
                .await
                .is_ok_and(|hits| hits.len() == 1 && hits[0].payload == "here")
    })
    .await;
    assert!(back.is_some(), "the index works again after the restart");
    assert!(index.health().is_up());
}
