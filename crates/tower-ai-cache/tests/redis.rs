//! Two replicas sharing Redis (a real `redis-server`, standalone and
//! Cluster), over real sockets with the mock LLM: L2 hits, collapsing across
//! replicas (JSON and live streams), invalidation seen by the other replica,
//! and Redis going away and coming back.

mod common;

use std::time::{Duration, Instant};

use common::{Replica, Seen, ask, chat, client};
use http::Method;
use test_support::{RedisCluster, RedisServer, eventually, mock_llm};
use tower_ai_cache::{CacheKey, CacheLayer, CacheTag, IgnoreList, KeyScope, RedisStore, Route};
use tower_ai_core::key::ClientKey;
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};

const PATH: &str = "/v1/chat/completions";

/// A replica's layer for the tests that count upstream calls and hits: a
/// slow Redis answer on a loaded machine must not put it on its fallback
/// (which leads alone, and flushes L1 when Redis comes back), so its Redis
/// timeout is generous.
async fn layer(urls: &[String]) -> CacheLayer {
    layer_with_timeout(urls, Duration::from_secs(2)).await
}

async fn layer_with_timeout(urls: &[String], timeout: Duration) -> CacheLayer {
    let client = connect(urls, &ConnectOptions::default())
        .await
        .expect("connected to Redis");
    CacheLayer::builder()
        .route(Route::post(PATH).name("chat"))
        .redis(
            RedisStore::builder(client)
                .degrade(Degrade::new(
                    "cache",
                    DegradeConfig::default()
                        .timeout(timeout)
                        .backoff(Duration::from_millis(100), Duration::from_millis(400)),
                ))
                .build(),
        )
        .build()
        .expect("a valid configuration")
}

async fn two_replicas(urls: &[String], upstream: &str) -> (Replica, Replica) {
    (
        Replica::start(layer(urls).await, upstream).await,
        Replica::start(layer(urls).await, upstream).await,
    )
}

fn key_of(tenant: &str, body: &str) -> CacheKey {
    CacheKey::for_request(
        &Method::POST,
        PATH,
        body.as_bytes(),
        &KeyScope::Caller(ClientKey::digest("api-key", tenant)),
        &IgnoreList::default(),
    )
}

async fn l2_is_shared(urls: Vec<String>, keys: impl Fn() -> String) {
    let mock = mock_llm(Duration::from_millis(1)).await;
    let (a, b) = two_replicas(&urls, &mock.base_url()).await;
    let http = client();
    let body = chat("secret prompt 1234", false);
    let first = ask(&http, &a.url(PATH), "sk-live-tenant", body.clone()).await;
    assert!(first.cache_status.contains("fwd=miss; ttl="));
    // The store to L2 happens off the client's path.
    let mut on_b = ask(&http, &b.url(PATH), "sk-live-tenant", body.clone()).await;
    for _ in 0..50 {
        if on_b.is_hit() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        on_b = ask(&http, &b.url(PATH), "sk-live-tenant", body.clone()).await;
    }
    assert!(on_b.is_hit(), "{}", on_b.cache_status);
    assert_eq!(on_b.body, first.body);
    assert_eq!(mock.stats().requests, 1);
    let other = ask(&http, &b.url(PATH), "sk-other-tenant", body).await;
    assert!(!other.is_hit());

    // No prompt, API key or tenant in any key name.
    let names = keys();
    assert!(names.contains(":cache:{"), "{names}");
    for secret in ["secret", "1234", "sk-live", "tenant", "prompt"] {
        assert!(!names.contains(secret), "{secret} appears in {names}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_is_shared_standalone() {
    let redis = RedisServer::start();
    l2_is_shared(vec![redis.url()], || redis.command(&["KEYS", "*"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_is_shared_cluster() {
    let cluster = RedisCluster::start();
    l2_is_shared(cluster.urls(), || {
        cluster
            .nodes()
            .iter()
            .map(|n| n.command(&["KEYS", "*"]))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
}

/// 100 identical requests spread over two replicas: one upstream call.
async fn collapse_across_replicas(urls: Vec<String>, stream: bool) {
    let mock = mock_llm(Duration::from_millis(20)).await;
    let (a, b) = two_replicas(&urls, &mock.base_url()).await;
    let http = client();
    let (url_a, url_b) = (a.url(PATH), b.url(PATH));
    let answers: Vec<(bool, Seen)> = futures_util::future::join_all((0..100).map(|i| {
        let http = http.clone();
        let url = if i % 2 == 0 {
            url_a.clone()
        } else {
            url_b.clone()
        };
        async move {
            (
                i % 2 == 0,
                ask(&http, &url, "tenant-a", chat("One story for all", stream)).await,
            )
        }
    }))
    .await;
    assert_eq!(mock.stats().requests, 1, "exactly one upstream call");
    let leader = answers
        .iter()
        .find(|(_, a)| a.cache_status.contains("fwd=miss; ttl="))
        .map(|(on_a, a)| (*on_a, a.clone()))
        .expect("one leader");
    assert_eq!(
        answers
            .iter()
            .filter(|(_, a)| a.cache_status.contains("fwd=miss; ttl="))
            .count(),
        1
    );
    for (_, got) in &answers {
        assert_eq!(got.status, 200);
        assert!(!got.broken);
        assert_eq!(got.body, leader.1.body, "{}", got.cache_status);
    }
    if stream {
        // The other replica's requests received the stream while it was
        // still being generated.
        let remote: Vec<_> = answers
            .iter()
            .filter(|(on_a, a)| *on_a != leader.0 && a.collapsed())
            .collect();
        assert!(remote.len() >= 40, "{} followed live", remote.len());
        for (_, f) in remote {
            let first = f.first_chunk_at.expect("a first chunk");
            assert!(
                first < leader.1.end_at,
                "first event before the leader's end"
            );
        }
        assert!(leader.1.events().last().map(String::as_str) == Some("[DONE]"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapse_across_replicas_standalone() {
    let redis = RedisServer::start();
    collapse_across_replicas(vec![redis.url()], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapse_streams_across_replicas_standalone() {
    let redis = RedisServer::start();
    collapse_across_replicas(vec![redis.url()], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapse_across_replicas_cluster() {
    let cluster = RedisCluster::start();
    collapse_across_replicas(cluster.urls(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapse_streams_across_replicas_cluster() {
    let cluster = RedisCluster::start();
    collapse_across_replicas(cluster.urls(), true).await;
}

/// An invalidation on replica A evicts replica B's L1 copy within 100 ms.
async fn invalidation_reaches_the_other_replica(urls: Vec<String>) {
    let mock = mock_llm(Duration::ZERO).await;
    let (a, b) = two_replicas(&urls, &mock.base_url()).await;
    let http = client();
    let fill = |prompt: &'static str| {
        let http = http.clone();
        let (url_a, url_b) = (a.url(PATH), b.url(PATH));
        async move {
            let _ = ask(&http, &url_a, "tenant-a", chat(prompt, false)).await;
            let key = key_of("tenant-a", &chat(prompt, false));
            // B reads it from L2 into its L1.
            let mut got = ask(&http, &url_b, "tenant-a", chat(prompt, false)).await;
            for _ in 0..50 {
                if got.is_hit() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                got = ask(&http, &url_b, "tenant-a", chat(prompt, false)).await;
            }
            assert!(got.is_hit());
            key
        }
    };
    a.handle.invalidations_ready().await;
    b.handle.invalidations_ready().await;

    let key = fill("invalidate me by key").await;
    assert!(b.handle.l1_contains(&key));
    let done = a.handle.invalidate_key(&key).await;
    assert!(done.replicated && done.removed == 1);
    eventually(Duration::from_millis(100), || !b.handle.l1_contains(&key))
        .await
        .expect("B still holds the entry after 100 ms");
    assert!(
        !ask(
            &http,
            &b.url(PATH),
            "tenant-a",
            chat("invalidate me by key", false)
        )
        .await
        .is_hit()
    );

    let key = fill("invalidate me by model").await;
    let kept = fill("keep me").await;
    let before = mock.stats().requests;
    let done = a.handle.invalidate_tag(&CacheTag::model("mock-1")).await;
    assert!(done.replicated && done.removed >= 2, "{done:?}");
    eventually(Duration::from_millis(100), || !b.handle.l1_contains(&key))
        .await
        .expect("B still holds the tagged entry after 100 ms");
    assert!(!b.handle.l1_contains(&kept), "same model, same tag");
    let again = ask(
        &http,
        &b.url(PATH),
        "tenant-a",
        chat("invalidate me by model", false),
    )
    .await;
    assert!(!again.is_hit());
    assert_eq!(mock.stats().requests, before + 1);

    // By tenant: only that tenant's entries go.
    let _ = ask(&http, &a.url(PATH), "tenant-b", chat("mine", false)).await;
    let key_b = key_of("tenant-b", &chat("mine", false));
    // The store to L2 happens off the client's path: B (which never saw it)
    // finds it there once it has landed.
    let mut landed = false;
    for _ in 0..500 {
        if b.handle.lookup_key(&key_b).await.is_some() {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(landed, "A's answer never reached L2");
    let key_a = fill("still here").await;
    let done = a
        .handle
        .invalidate_tag(&CacheTag::tenant(&ClientKey::digest("api-key", "tenant-b")))
        .await;
    assert!(done.replicated);
    assert!(a.handle.lookup_key(&key_b).await.is_none());
    assert!(b.handle.lookup_key(&key_a).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_the_other_replica_standalone() {
    let redis = RedisServer::start();
    invalidation_reaches_the_other_replica(vec![redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_the_other_replica_cluster() {
    let cluster = RedisCluster::start();
    invalidation_reaches_the_other_replica(cluster.urls()).await;
}

/// Redis stopped: every request is still answered (from L1 or the
/// upstream), no 5xx, without waiting on Redis each time; restarted: L2 is
/// used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_back() {
    let mut redis = RedisServer::start();
    let mock = mock_llm(Duration::ZERO).await;
    // The outage test times its requests against the Redis timeout.
    let a = Replica::start(
        layer_with_timeout(&[redis.url()], Duration::from_millis(250)).await,
        &mock.base_url(),
    )
    .await;
    let http = client();
    let url = a.url(PATH);
    let stored = ask(&http, &url, "tenant-a", chat("before the outage", false)).await;
    assert!(stored.cache_status.contains("fwd=miss; ttl="));

    redis.stop();
    let mut slowest = Duration::ZERO;
    let mut timed = |seen: Duration| slowest = slowest.max(seen);
    for i in 0..30 {
        let start = Instant::now();
        let hit = ask(&http, &url, "tenant-a", chat("before the outage", false)).await;
        timed(start.elapsed());
        assert!(hit.is_hit(), "L1 answers");
        let start = Instant::now();
        let fresh = ask(&http, &url, "tenant-a", chat(&format!("during {i}"), false)).await;
        timed(start.elapsed());
        assert_eq!(fresh.status, 200, "no 5xx while Redis is down");
        assert!(fresh.cache_status.contains("fwd=miss"));
    }
    // No request waits longer than the Redis call timeout (250 ms here),
    // plus the upstream and some slack for a loaded machine.
    assert!(slowest < Duration::from_millis(600), "{slowest:?}");
    let health = a.handle.redis_health().map(|h| h.is_up());
    assert_eq!(health, Some(false));

    redis.restart();
    // The next probe finds it back; new answers go to L2 again.
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.handle.redis_health().is_some_and(|h| h.is_up()) && Instant::now() < deadline {
        n += 1;
        let _ = ask(&http, &url, "tenant-a", chat(&format!("probe {n}"), false)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.handle.redis_health().is_some_and(|h| h.is_up()),
        "Redis is used again"
    );
    let after = ask(&http, &url, "tenant-a", chat("after the outage", false)).await;
    assert!(after.cache_status.contains("fwd=miss; ttl="));
    // L1 was flushed on the way back: invalidations may have been missed.
    let before = key_of("tenant-a", &chat("before the outage", false));
    assert!(!a.handle.l1_contains(&before));
    // A fresh replica finds it in L2.
    let b = Replica::start(layer(&[redis.url()]).await, &mock.base_url()).await;
    let mut on_b = ask(
        &http,
        &b.url(PATH),
        "tenant-a",
        chat("after the outage", false),
    )
    .await;
    for _ in 0..50 {
        if on_b.is_hit() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        on_b = ask(
            &http,
            &b.url(PATH),
            "tenant-a",
            chat("after the outage", false),
        )
        .await;
    }
    assert!(on_b.is_hit(), "{}", on_b.cache_status);
}

/// A stream cut off midway is stored nowhere: not in L1, not in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_is_not_stored_in_l2() {
    let redis = RedisServer::start();
    let mock = mock_llm(Duration::from_millis(2)).await;
    let (a, b) = two_replicas(&[redis.url()], &mock.base_url()).await;
    let http = client();
    mock.set_fault(mock_llm::Fault {
        break_after_tokens: Some(2),
        ..mock_llm::Fault::default()
    });
    let cut = ask(&http, &a.url(PATH), "tenant-a", chat("break", true)).await;
    assert!(cut.broken);
    mock.set_fault(mock_llm::Fault::default());
    // The recording is given up (or stored) when A drops the body: once A
    // holds no flight, the decision is taken.
    eventually(Duration::from_secs(10), || a.handle.in_flight() == 0)
        .await
        .expect("A still records the broken stream");
    let key = key_of("tenant-a", &chat("break", true));
    assert!(b.handle.lookup_key(&key).await.is_none());
    let again = ask(&http, &b.url(PATH), "tenant-a", chat("break", true)).await;
    assert!(
        again.cache_status.contains("fwd=miss; ttl="),
        "{}",
        again.cache_status
    );
    assert_eq!(mock.stats().requests, 2);
}

/// A stale entry in L2 answers a replica whose upstream fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_from_l2_when_the_upstream_fails() {
    let redis = RedisServer::start();
    let mock = mock_llm(Duration::ZERO).await;
    let short = |client| {
        CacheLayer::builder()
            .route(
                Route::post(PATH)
                    .ttl(Duration::from_millis(300))
                    .stale_if_error(Duration::from_secs(60)),
            )
            .redis(RedisStore::new(client))
            .build()
            .expect("valid")
    };
    let urls = [redis.url()];
    let options = ConnectOptions::default();
    let conn = || connect(&urls, &options);
    let a = Replica::start(short(conn().await.expect("connected")), &mock.base_url()).await;
    let http = client();
    let first = ask(&http, &a.url(PATH), "tenant-a", chat("keep me", false)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    mock.set_fault(mock_llm::Fault {
        fail_rate: 1.0,
        ..mock_llm::Fault::default()
    });
    let b = Replica::start(short(conn().await.expect("connected")), &mock.base_url()).await;
    let stale = ask(&http, &b.url(PATH), "tenant-a", chat("keep me", false)).await;
    assert_eq!(stale.status, 200);
    assert!(
        stale.cache_status.contains("fwd=stale; fwd-status=500"),
        "{}",
        stale.cache_status
    );
    assert_eq!(stale.body, first.body);
}
