//! The Redis backend against real `redis-server` processes, standalone and
//! Cluster, including a server that dies and comes back.
//!
//! The tests that only count keep apart by key prefix, and share one server
//! and one Cluster per test binary (`test_support::shared`); those that stop
//! a server, or time windows on it, start their own.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::{
    admitted, admitted_concurrently, every_algorithm, from, json, scripts, send, service,
};
use fred::prelude::ClientLike;
use http::StatusCode;
use test_support::{RedisServer, shared};
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
use tower_ai_ratelimit::headers::{RateLimitInfo, retry_after};
use tower_ai_ratelimit::{FailMode, Policy, Rate, RateLimitLayer, RedisStore};

/// A prefix no other test uses, so tests sharing a server don't meet.
fn prefix() -> String {
    shared::prefix("t")
}

async fn client(urls: &[String]) -> fred::clients::Client {
    connect(urls, &ConnectOptions::default())
        .await
        .expect("connected to the test Redis")
}

/// A store with a generous timeout: these tests are about counting, and a
/// loaded CI machine must not push them onto the fallback.
fn store(client: fred::clients::Client, prefix: &str) -> RedisStore {
    RedisStore::builder(client)
        .prefix(prefix)
        .degrade(Degrade::new(
            "ratelimit",
            DegradeConfig::default().timeout(Duration::from_secs(5)),
        ))
        .build()
}

/// Sleeps until just after the next multiple of `window` on the server's
/// clock (`TIME`), so window scripts start at a known place.
async fn align(client: &fred::clients::Client, window: Duration) {
    let time: Vec<u64> = client
        .custom(fred::cmd!("TIME"), Vec::<String>::new())
        .await
        .expect("TIME");
    let (secs, micros) = (time[0], time[1]);
    let now = Duration::from_secs(secs) + Duration::from_micros(micros);
    let into = now.as_nanos() % window.as_nanos();
    let wait = window - Duration::from_nanos(into as u64) + Duration::from_millis(50);
    tokio::time::sleep(wait).await;
}

#[tokio::test]
async fn every_algorithm_follows_its_script_on_redis() {
    let server = RedisServer::start();
    let client = client(&[server.url()]).await;
    for (policy, script, window) in scripts() {
        let layer = RateLimitLayer::builder()
            .policy(policy.clone())
            .redis(store(client.clone(), &prefix()))
            .build()
            .expect("valid");
        let mut svc = service(layer);
        if let Some(window) = window {
            align(&client, window).await;
        }
        for (step, &(wait, expected)) in script.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            assert_eq!(
                admitted(&mut svc, 1).await,
                expected,
                "{policy:?}, step {step}"
            );
        }
    }
}

/// Three independent service instances (own client, own layer) sharing
/// `urls`, 1,000 concurrent requests from one client against capacity 100:
/// exactly 100 are admitted, for every algorithm.
async fn three_instances_admit_exactly_the_capacity(urls: Vec<String>) {
    for policy in every_algorithm(100) {
        let prefix = prefix();
        let mut instances = Vec::new();
        for _ in 0..3 {
            let layer = RateLimitLayer::builder()
                .policy(policy.clone())
                .redis(store(client(&urls).await, &prefix))
                .build()
                .expect("valid");
            instances.push(service(layer));
        }
        let n = admitted_concurrently(&instances, 1_000).await;
        assert_eq!(n, 100, "{policy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_are_exact_on_standalone_redis() {
    three_instances_admit_exactly_the_capacity(vec![shared::redis().url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_are_exact_on_a_redis_cluster() {
    three_instances_admit_exactly_the_capacity(shared::cluster().urls()).await;
}

#[tokio::test]
async fn several_policies_share_a_slot_on_a_cluster() {
    let cluster = shared::cluster();
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(5, Rate::per_minute(1.0)).named("minute"))
        .policy(Policy::fixed_window(3, Duration::from_secs(86_400)).named("daily"))
        .policy(Policy::sliding_log(4, Duration::from_secs(3_600)).named("hourly"))
        .redis(store(client(&cluster.urls()).await, &prefix()))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    for client_id in 1..=10 {
        let mut admitted_n = 0;
        for _ in 0..6 {
            let res = send(&mut svc, from(client_id)).await;
            match res.status() {
                StatusCode::OK => admitted_n += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(json(res).await["policy"], "daily");
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(admitted_n, 3, "client {client_id}");
    }
}

#[tokio::test]
async fn headers_are_consistent_on_redis() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(4, Rate::per_second(0.5)).named("chat"))
        .cost(|head| if head.uri.path() == "/heavy" { 2 } else { 1 })
        .redis(store(client(&[server.url()]).await, &prefix()))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    let res = send(&mut svc, from(1)).await;
    let info = RateLimitInfo::read(res.headers()).expect("fields");
    assert_eq!((info.limit, info.remaining), (4, 3));
    assert!(info.reset <= Duration::from_secs(2), "{:?}", info.reset);

    let mut heavy = from(1);
    *heavy.uri_mut() = "/heavy".parse().expect("a path");
    let res = send(&mut svc, heavy).await;
    let info = RateLimitInfo::read(res.headers()).expect("fields");
    assert_eq!(info.remaining, 1, "Remaining falls by the cost");
    // Three used tokens take 6 s to come back, within 1 s.
    assert!(info.reset >= Duration::from_secs(5) && info.reset <= Duration::from_secs(6));

    let _ = send(&mut svc, from(1)).await;
    let res = send(&mut svc, from(1)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(res.headers()).expect("Retry-After");
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    let doc = json(res).await;
    assert_eq!(doc["status"], 429);
    assert_eq!(doc["policy"], "chat");
}

#[tokio::test]
async fn fail_open_keeps_serving_while_redis_is_down_then_shares_again() {
    let mut server = RedisServer::start();
    let prefix = prefix();
    let policy = Policy::token_bucket(3, Rate::per_minute(1.0));
    let build = |client| {
        let layer = RateLimitLayer::builder()
            .policy(policy.clone())
            .redis(
                RedisStore::builder(client)
                    .prefix(&prefix)
                    .degrade(Degrade::new(
                        "ratelimit",
                        DegradeConfig::default()
                            .timeout(Duration::from_millis(100))
                            .backoff(Duration::from_millis(100), Duration::from_millis(400)),
                    ))
                    .fail_mode(FailMode::Open)
                    .build(),
            )
            .build()
            .expect("valid");
        (service(layer.clone()), layer)
    };
    let (mut a, layer_a) = build(client(&[server.url()]).await);
    let (mut b, layer_b) = build(client(&[server.url()]).await);
    assert!(admitted(&mut a, 1).await);
    assert!(admitted(&mut b, 1).await);

    server.stop();
    // Every request is answered, none with a 5xx, none stalled past the
    // timeout by much; each instance limits on its own memory.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        statuses.push(send(&mut a, from(1)).await.status());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "the local fallback applies the same policy, with no 5xx"
    );
    assert!(layer_a.redis_health().is_some_and(|h| !h.is_up()));

    server.restart();
    // Requests from throwaway clients drive the probes until both
    // instances are back on Redis.
    let deadline = Instant::now() + Duration::from_secs(15);
    for (svc, layer) in [(&mut a, &layer_a), (&mut b, &layer_b)] {
        let mut probe = 100;
        while !layer.redis_health().is_some_and(|h| h.is_up()) {
            assert!(Instant::now() < deadline, "never went back to Redis");
            let _ = send(svc, from(probe)).await;
            probe += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Shared again: a fresh client gets 3 across both instances together.
    let got = [
        admitted(&mut a, 3).await,
        admitted(&mut b, 3).await,
        admitted(&mut a, 3).await,
        admitted(&mut b, 3).await,
        admitted(&mut a, 3).await,
    ];
    assert_eq!(got, [true, true, true, false, false]);
}

#[tokio::test]
async fn fail_closed_refuses_with_503_while_redis_is_down() {
    let mut server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(3, Rate::per_minute(1.0)))
        .redis(
            RedisStore::builder(client(&[server.url()]).await)
                .prefix(prefix())
                .degrade(Degrade::new(
                    "ratelimit",
                    DegradeConfig::default().timeout(Duration::from_millis(100)),
                ))
                .fail_mode(FailMode::Closed)
                .build(),
        )
        .build()
        .expect("valid");
    let mut svc = service(layer);
    assert!(admitted(&mut svc, 1).await);
    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let res = send(&mut svc, from(1)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(retry_after(res.headers()).is_some());
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while send(&mut svc, from(1)).await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "never went back to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 3 replicas × 1,000 concurrent requests against a capacity of 100, with
/// leases of 10, twenty times over: never past the limit, and never more
/// than a lease per replica lost (a burst must borrow one lease at a time,
/// not the whole quota at once).
async fn leases_admit_the_quota_under_a_burst(urls: &[String]) {
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(client(urls).await);
    }
    for round in 0..20 {
        let prefix = prefix();
        let instances: Vec<_> = clients
            .iter()
            .map(|c| {
                let store = RedisStore::builder(c.clone())
                    .prefix(&prefix)
                    .degrade(Degrade::new(
                        "ratelimit",
                        DegradeConfig::default().timeout(Duration::from_secs(5)),
                    ))
                    .lease(10, Duration::from_secs(60))
                    .build();
                service(
                    RateLimitLayer::builder()
                        .policy(Policy::token_bucket(
                            100,
                            Rate::every(Duration::from_secs(3_600)),
                        ))
                        .redis(store)
                        .build()
                        .expect("valid"),
                )
            })
            .collect();
        let n = admitted_concurrently(&instances, 1_000).await;
        assert!(n <= 100, "round {round}: admitted {n}, past the limit");
        assert!(
            n >= 100 - 3 * 10,
            "round {round}: admitted {n}, more than a lease per replica lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_never_admit_past_the_limit_and_lose_at_most_a_lease_per_replica() {
    leases_admit_the_quota_under_a_burst(&[shared::redis().url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_admit_the_quota_under_a_burst_on_a_cluster() {
    leases_admit_the_quota_under_a_burst(&shared::cluster().urls()).await;
}

#[tokio::test]
async fn a_lease_is_spent_while_redis_is_down() {
    let mut server = RedisServer::start();
    let store = RedisStore::builder(client(&[server.url()]).await)
        .prefix(prefix())
        .degrade(Degrade::new(
            "ratelimit",
            DegradeConfig::default().timeout(Duration::from_millis(100)),
        ))
        .fail_mode(FailMode::Closed)
        .lease(5, Duration::from_secs(60))
        .build();
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(100, Rate::per_minute(1.0)))
        .redis(store)
        .build()
        .expect("valid");
    let mut svc = service(layer);
    let res = send(&mut svc, from(1)).await;
    assert_eq!(res.status(), StatusCode::OK);
    // 95 left in Redis, 4 in the lease.
    assert_eq!(
        RateLimitInfo::read(res.headers()).map(|i| i.remaining),
        Some(99)
    );
    server.stop();
    for left in (0..4).rev() {
        let res = send(&mut svc, from(1)).await;
        assert_eq!(res.status(), StatusCode::OK, "served from the lease");
        assert_eq!(
            RateLimitInfo::read(res.headers()).map(|i| i.remaining),
            Some(95 + left)
        );
    }
    assert_eq!(
        send(&mut svc, from(1)).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the lease is spent; fail-closed"
    );
}

#[tokio::test]
async fn stores_share_the_health_they_are_given() {
    let server = RedisServer::start();
    let client = client(&[server.url()]).await;
    let health = Degrade::new("redis", DegradeConfig::default());
    let a = RedisStore::builder(client.clone())
        .prefix(prefix())
        .degrade(health.clone())
        .build();
    let b = RedisStore::builder(client.clone())
        .prefix(prefix())
        .degrade(health.clone())
        .build();
    let own = RedisStore::new(client);
    assert_eq!(a.health().component(), "redis");
    assert_eq!(own.health().component(), "ratelimit");
    health.mark_down(&"test");
    assert!(!a.health().is_up());
    assert!(!b.health().is_up());
    assert!(own.health().is_up());
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(1, Rate::per_second(1.0)))
        .redis(b)
        .build()
        .expect("valid");
    assert!(layer.redis_health().is_some_and(|h| !h.is_up()));
}
