//! The Redis store, against a real `redis-server` (and a real Cluster):
//! the store suite, and clients resuming on another replica over sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{App, assert_exact, http, post_chat, serve, stream_id, suite};
use http::StatusCode;
use test_support::sse::SseReader;
use test_support::{RedisCluster, RedisServer, chat, eventually, mock_llm};
use tower_ai_core::redis::{Degrade, DegradeConfig};
use tower_sse_relay::store::{MemoryStore, RedisStore};
use tower_sse_relay::{SseRelayLayer, StreamStore};

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.client().await)
        .prefix("test")
        .build()
}

fn relay(store: RedisStore) -> SseRelayLayer<RedisStore> {
    SseRelayLayer::builder().redis(store).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_reads_what_was_appended() {
    let server = RedisServer::start();
    suite::reads_what_was_appended(store(&server).await).await;
    // A second replica reads the same from Redis alone.
    let other = store(&server).await;
    suite::reads_what_was_appended(other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_live_readers_get_each_event_once_on_this_and_another_replica() {
    let server = RedisServer::start();
    let writer = store(&server).await;
    suite::live_readers_get_each_event_once(writer.clone(), writer.clone()).await;
    suite::live_readers_get_each_event_once(writer, store(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_trimmed_events_are_expired() {
    let server = RedisServer::start();
    let bounded = || MemoryStore::builder().max_events(8).build().unwrap();
    let writer = RedisStore::builder(server.client().await)
        .max_events(8)
        .local(bounded())
        .build();
    suite::trimmed_events_are_expired(writer, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_appends_are_idempotent() {
    let server = RedisServer::start();
    suite::appends_are_idempotent(store(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_the_stream_id_as_hash_tag_and_expire() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.client().await)
        .prefix("app")
        .ttl(Duration::from_secs(30))
        .build();
    let id = tower_sse_relay::StreamId::random().unwrap();
    store.create(&id).await.unwrap();
    let key = store.key(&id);
    assert_eq!(key, format!("app:sse:{{{id}}}:events"));
    let ttl: i64 = server
        .command(&["PTTL", &key])
        .trim_start_matches(':')
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 25_000 && ttl <= 30_000, "{ttl}");
}

/// Two replicas of an app sharing one Redis.
async fn replicas(server: &RedisServer, upstream: &str) -> (App, App, RedisStore, RedisStore) {
    let (a, b) = (store(server).await, store(server).await);
    let app_a = serve(&relay(a.clone()), upstream).await;
    let app_b = serve(&relay(b.clone()), upstream).await;
    (app_a, app_b, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_replica_with_exactly_the_rest() {
    let server = RedisServer::start();
    let mock = mock_llm(Duration::from_millis(25)).await;
    let (a, b, _, store_b) = replicas(&server, &mock.base_url()).await;
    let client = http();
    for (k, how) in [(3, "get"), (5, "post")] {
        let res = post_chat(&client, &a, &format!("switch replicas after {k}")).await;
        let stream = stream_id(&res);
        let mut reader = SseReader::new(res);
        let mut events = reader.take(k as usize).await;
        drop(reader);
        assert_eq!(
            mock.stats().streams_completed,
            0,
            "still generating on replica A"
        );
        let last = format!("{stream}-{k}");
        let res = if how == "get" {
            client
                .get(b.url(&format!("/v1/streams/{stream}")))
                .header("last-event-id", &last)
                .send()
                .await
                .unwrap()
        } else {
            client
                .post(b.url("/v1/chat/completions"))
                .header("last-event-id", &last)
                .body(chat::streamed("ignored"))
                .send()
                .await
                .unwrap()
        };
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["last-event-id"], last.as_str());
        let rest = SseReader::new(res).rest().await;
        assert_exact(&rest, &stream, k + 1);
        events.extend(rest);

        // Every event the store kept, read on replica B after the end.
        let res = client
            .get(b.url(&format!("/v1/streams/{stream}")))
            .header("last-event-id", "earliest")
            .send()
            .await
            .unwrap();
        let all = SseReader::new(res).rest().await;
        assert_eq!(
            events.iter().map(|e| (&e.id, &e.data)).collect::<Vec<_>>(),
            all.iter().map(|e| (&e.id, &e.data)).collect::<Vec<_>>()
        );
        mock.reset_stats();
    }
    // Only the generating replica called the upstream.
    assert_eq!(mock.stats().requests, 0);
    // Replica B let go of its copies once nobody read them.
    eventually(Duration::from_secs(5), || store_b.local().len() <= 2)
        .await
        .expect("replica B lets go of its copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_switching_replicas_at_once_lose_nothing() {
    let server = RedisServer::start();
    let mock = mock_llm(Duration::from_millis(10)).await;
    // A hundred streams at once on two shared cores, in a debug build: a
    // Redis call can take longer than the 50 ms of production. Past its
    // timeout the store keeps streams locally only for a while, and another
    // replica answers 503: correct, but not what this test is about.
    let tolerant = |client| {
        RedisStore::builder(client)
            .prefix("test")
            .degrade(Degrade::new(
                "sse-relay",
                DegradeConfig::default().timeout(Duration::from_secs(2)),
            ))
            .build()
    };
    let a = serve(&relay(tolerant(server.client().await)), &mock.base_url()).await;
    let b = serve(&relay(tolerant(server.client().await)), &mock.base_url()).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut clients = Vec::new();
    for i in 0..100u64 {
        let (first, second) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        clients.push(tokio::spawn(async move {
            let client = http();
            let res = post_chat(&client, &first, &format!("client {i} switches")).await;
            let stream = stream_id(&res);
            let mut reader = SseReader::new(res);
            let k = 1 + i % 7;
            let mut events = reader.take(k as usize).await;
            drop(reader);
            let res = client
                .get(second.url(&format!("/v1/streams/{stream}?lastEventID={stream}-{k}")))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            events.extend(SseReader::new(res).rest().await);
            assert_exact(&events, &stream, 1);
            events.len()
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    assert!(total >= 100 * 10);
    assert_eq!(mock.stats().streams_completed, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_replica_of_a_cluster() {
    let cluster = RedisCluster::start();
    let mock = mock_llm(Duration::from_millis(20)).await;
    let store_a = RedisStore::new(cluster.client().await);
    let store_b = RedisStore::new(cluster.client().await);
    let a = serve(&relay(store_a), &mock.base_url()).await;
    let b = serve(&relay(store_b), &mock.base_url()).await;
    let client = http();
    for i in 0..4 {
        let res = post_chat(&client, &a, &format!("cluster {i}")).await;
        let stream = stream_id(&res);
        let mut reader = SseReader::new(res);
        let first = reader.next().await.unwrap();
        drop(reader);
        let res = client
            .get(b.url(&format!("/v1/streams/{stream}")))
            .header("last-event-id", &first.id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_exact(&SseReader::new(res).rest().await, &stream, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_trimmed_in_redis_are_gone_on_another_replica() {
    let server = RedisServer::start();
    let mock = mock_llm(Duration::from_millis(1)).await;
    let a = RedisStore::builder(server.client().await)
        .prefix("test")
        .max_events(4)
        .build();
    let app_a = serve(&relay(a), &mock.base_url()).await;
    let app_b = serve(&relay(store(&server).await), &mock.base_url()).await;
    let client = http();
    let res = post_chat(&client, &app_a, "trim me").await;
    let stream = stream_id(&res);
    let n = SseReader::new(res).rest().await.len() as u64;
    let get = |last: String| {
        client
            .get(app_b.url(&format!("/v1/streams/{stream}")))
            .header("last-event-id", last)
            .send()
    };
    assert_eq!(
        get(format!("{stream}-1")).await.unwrap().status(),
        StatusCode::GONE
    );
    assert_eq!(
        get(format!("{stream}-{}", n + 1)).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(format!("{stream}-{n}")).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let res = get(format!("{stream}-{}", n - 2)).await.unwrap();
    assert_exact(&SseReader::new(res).rest().await, &stream, n - 1);
    // The generating replica kept more locally and still serves them.
    let res = client
        .get(app_a.url(&format!("/v1/streams/{stream}")))
        .header("last-event-id", format!("{stream}-1"))
        .send()
        .await
        .unwrap();
    assert_exact(&SseReader::new(res).rest().await, &stream, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_streams_stay_resumable_on_their_replica() {
    let mut server = RedisServer::start();
    let mock = mock_llm(Duration::from_millis(5)).await;
    let degrade = DegradeConfig::default()
        .timeout(Duration::from_millis(50))
        .backoff(Duration::from_millis(100), Duration::from_millis(200));
    // One health state per replica: each is a process of its own.
    let make = |client| {
        RedisStore::builder(client)
            .degrade(Degrade::new("sse-relay", degrade.clone()))
            .build()
    };
    let store_a = make(server.client().await);
    let store_b = make(server.client().await);
    let a = serve(&relay(store_a.clone()), &mock.base_url()).await;
    let b = serve(&relay(store_b), &mock.base_url()).await;
    server.stop();
    let client = http();
    let res = post_chat(&client, &a, "redis is down").await;
    assert_eq!(res.status(), StatusCode::OK);
    let stream = stream_id(&res);
    let events = SseReader::new(res).rest().await;
    assert_exact(&events, &stream, 1);
    assert!(!store_a.health().is_up());
    let res = client
        .get(a.url(&format!("/v1/streams/{stream}")))
        .header("last-event-id", format!("{stream}-2"))
        .send()
        .await
        .unwrap();
    assert_exact(&SseReader::new(res).rest().await, &stream, 3);
    // Another replica can't know; it says so, at once.
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .get(b.url(&format!("/v1/streams/{stream}")))
            .header("last-event-id", format!("{stream}-2"))
            .send(),
    )
    .await
    .expect("an answer, not a hang")
    .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));

    // Redis back: the stream made meanwhile reaches it (its end is retried),
    // and another replica can resume it.
    server.restart();
    let mut caught_up = false;
    for _ in 0..100 {
        let res = client
            .get(b.url(&format!("/v1/streams/{stream}")))
            .header("last-event-id", format!("{stream}-2"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            assert_exact(&SseReader::new(res).rest().await, &stream, 3);
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        caught_up,
        "the stream made while Redis was down reached it later"
    );
    // New streams are shared again.
    let mut resumed = false;
    for _ in 0..50 {
        let res = post_chat(&client, &a, "redis is back").await;
        let stream = stream_id(&res);
        let events = SseReader::new(res).rest().await;
        let res = client
            .get(b.url(&format!("/v1/streams/{stream}")))
            .header("last-event-id", format!("{stream}-1"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            let rest = SseReader::new(res).rest().await;
            assert_eq!(rest.len() + 1, events.len());
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "streams are shared again once Redis is back");
}
