//! Over real sockets, in one process (L1 only): an axum app with the cache
//! in front of a proxy to the mock LLM.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Replica, ask, chat, client};
use futures_util::StreamExt;
use mock_llm::Fault;
use rand_like::Lcg;
use test_support::{eventually, mock_llm};
use tower_ai_cache::{CacheLayer, Route};

fn layer() -> CacheLayer {
    CacheLayer::builder()
        .route(Route::post("/v1/chat/completions").name("chat"))
        .build()
        .expect("a valid configuration")
}

const PATH: &str = "/v1/chat/completions";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_prompt_twice_is_one_upstream_call() {
    let mock = mock_llm(Duration::from_millis(1)).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);

    let first = ask(&http, &url, "tenant-a", chat("Say hello", false)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status, "tower-ai; fwd=miss; ttl=3600");
    let second = ask(&http, &url, "tenant-a", chat("Say hello", false)).await;
    assert!(second.is_hit(), "{}", second.cache_status);
    assert_eq!(second.age.as_deref(), Some("0"));
    assert_eq!(second.body, first.body);
    assert_eq!(mock.stats().requests, 1);

    // Key order and whitespace don't matter; model and temperature do.
    let reordered = r#"{ "messages" : [ { "content" : "Say hello", "role" : "user" } ], "stream": false, "model" : "mock-1" }"#;
    assert!(
        ask(&http, &url, "tenant-a", reordered.to_owned())
            .await
            .is_hit()
    );
    let other_model = chat("Say hello", false).replace("mock-1", "mock-2");
    assert!(!ask(&http, &url, "tenant-a", other_model).await.is_hit());
    let warmer = r#"{"model":"mock-1","stream":false,"temperature":0.9,"messages":[{"role":"user","content":"Say hello"}]}"#;
    assert!(
        !ask(&http, &url, "tenant-a", warmer.to_owned())
            .await
            .is_hit()
    );
    assert_eq!(mock.stats().requests, 3);

    // Another tenant with the same prompt misses.
    let b = ask(&http, &url, "tenant-b", chat("Say hello", false)).await;
    assert!(b.cache_status.contains("fwd=miss"));
    assert_eq!(mock.stats().requests, 4);
}

/// A tiny deterministic generator (no extra crate for randomness).
mod rand_like {
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }
}

/// 1,000 random tenant/prompt pairs: a request is a hit exactly when that
/// tenant asked that prompt before, and the answer it gets is the one that
/// tenant got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_tenant_prompt_pairs_never_cross() {
    let mock = mock_llm(Duration::ZERO).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    let mut rng = Lcg(0x5eed);
    let mut seen: HashMap<(u64, u64), bytes::Bytes> = HashMap::new();
    let mut cross = 0;
    for _ in 0..1_000 {
        let (tenant, prompt) = (rng.next(25), rng.next(40));
        let got = ask(
            &http,
            &url,
            &format!("tenant-{tenant}"),
            chat(&format!("prompt {prompt}"), false),
        )
        .await;
        assert_eq!(got.status, 200);
        match seen.get(&(tenant, prompt)) {
            Some(before) => {
                assert!(got.is_hit(), "{}", got.cache_status);
                assert_eq!(&got.body, before);
            }
            None => {
                if got.is_hit() {
                    cross += 1;
                }
                seen.insert((tenant, prompt), got.body.clone());
            }
        }
    }
    assert_eq!(cross, 0, "a tenant was served another tenant's answer");
    assert_eq!(mock.stats().requests, seen.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_requests_make_one_upstream_call() {
    let mock = mock_llm(Duration::from_millis(50)).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    let answers = futures_util::future::join_all(
        (0..100).map(|_| ask(&http, &url, "tenant-a", chat("Count to three", false))),
    )
    .await;
    assert_eq!(mock.stats().requests, 1);
    let bodies: HashSet<_> = answers.iter().map(|a| a.body.clone()).collect();
    assert_eq!(bodies.len(), 1);
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.cache_status.contains("fwd=miss; ttl="))
            .count(),
        1
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.collapsed() || a.is_hit())
            .count(),
        99
    );
}

/// Streamed: one upstream stream; the followers receive it while it is
/// still being generated, and the same events as the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_share_one_upstream_stream_live() {
    let mock = mock_llm(Duration::from_millis(20)).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    let answers = futures_util::future::join_all(
        (0..100).map(|_| ask(&http, &url, "tenant-a", chat("Tell a story", true))),
    )
    .await;
    assert_eq!(mock.stats().requests, 1);
    let leader = answers
        .iter()
        .find(|a| a.cache_status.contains("fwd=miss; ttl="))
        .expect("one leader");
    let events = leader.events();
    assert!(events.len() > 3 && events.last().map(String::as_str) == Some("[DONE]"));
    let followers: Vec<_> = answers.iter().filter(|a| a.collapsed()).collect();
    assert_eq!(followers.len(), 99);
    for f in &followers {
        assert_eq!(f.events(), events);
        let first = f.first_chunk_at.expect("a first chunk");
        assert!(
            first < leader.end_at,
            "a follower's first event arrived before the leader's stream ended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_replays_with_identical_event_data() {
    let mock = mock_llm(Duration::from_millis(2)).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    let body = test_support::chat::streamed("Stream me");
    let live = ask(&http, &url, "tenant-a", body.clone()).await;
    assert_eq!(live.cache_status, "tower-ai; fwd=miss; ttl=3600");
    let replay = ask(&http, &url, "tenant-a", body).await;
    assert!(replay.is_hit());
    assert_eq!(replay.events(), live.events());
    assert_eq!(replay.body, live.body, "byte for byte");
    assert_eq!(mock.stats().requests, 1);
    assert_eq!(mock.stats().streams_completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_off_midway_is_not_stored() {
    let mock = mock_llm(Duration::from_millis(2)).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    mock.set_fault(Fault {
        break_after_tokens: Some(3),
        ..Fault::default()
    });
    let cut = ask(&http, &url, "tenant-a", chat("Break me", true)).await;
    assert!(cut.broken, "the client saw the stream break");
    mock.set_fault(Fault::default());
    let again = ask(&http, &url, "tenant-a", chat("Break me", true)).await;
    assert!(
        again.cache_status.contains("fwd=miss"),
        "{}",
        again.cache_status
    );
    assert!(!again.broken);
    assert_eq!(mock.stats().requests, 2);

    // An in-band error event: delivered as it came, not stored.
    mock.set_fault(Fault {
        error_event: true,
        ..Fault::default()
    });
    let errored = ask(&http, &url, "tenant-a", chat("Fail me", true)).await;
    assert!(errored.events().iter().any(|e| e.contains("\"error\"")));
    mock.set_fault(Fault::default());
    assert!(
        ask(&http, &url, "tenant-a", chat("Fail me", true))
            .await
            .cache_status
            .contains("fwd=miss")
    );

    // `length` at the request's own `max_tokens` (part of the key): what
    // the same request gets again, so stored and replayed.
    let short = r#"{"model":"mock-1","stream":true,"max_tokens":2,"messages":[{"role":"user","content":"Cut me"}]}"#;
    let cut = ask(&http, &url, "tenant-a", short.to_owned()).await;
    assert!(
        cut.events()
            .iter()
            .any(|e| e.contains(r#""finish_reason":"length""#))
    );
    // The store is decided when the body ends, as the flight finishes.
    eventually(Duration::from_secs(5), || replica.handle.in_flight() == 0)
        .await
        .expect("the flight finishes");
    let again = ask(&http, &url, "tenant-a", short.to_owned()).await;
    assert!(again.is_hit(), "{}", again.cache_status);
    assert_eq!(again.events(), cut.events());
}

/// A client that leaves mid-stream leaves nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_midway_leaves_nothing_stored() {
    let mock = mock_llm(Duration::from_millis(20)).await;
    let replica = Replica::start(layer(), &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    let res = http
        .post(&url)
        .header("authorization", "Bearer tenant-a")
        .body(chat("Leave me", true))
        .send()
        .await
        .expect("a head");
    let mut stream = res.bytes_stream();
    let _ = stream.next().await;
    drop(stream);
    // Wait until the mock saw the stream cancelled.
    eventually(Duration::from_secs(3), || {
        mock.stats().streams_cancelled == 1
    })
    .await
    .expect("the mock sees the stream cancelled");
    let again = ask(&http, &url, "tenant-a", chat("Leave me", true)).await;
    assert!(
        again.cache_status.contains("fwd=miss"),
        "{}",
        again.cache_status
    );
    assert_eq!(mock.stats().requests, 2);
}

/// An answer larger than `max_body` streams through, not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_passes_through() {
    let mock = mock_llm(Duration::ZERO).await;
    let layer = CacheLayer::builder()
        .max_body(64)
        .build()
        .expect("a valid configuration");
    let replica = Replica::start(layer, &mock.base_url()).await;
    let http = client();
    let url = replica.url(PATH);
    for _ in 0..2 {
        let got = ask(&http, &url, "tenant-a", chat("Big", true)).await;
        assert_eq!(got.status, 200);
        assert!(!got.broken);
        assert!(got.body.len() > 64);
        assert!(got.cache_status.contains("fwd=miss"));
    }
    assert_eq!(mock.stats().requests, 2);
}
