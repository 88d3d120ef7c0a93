//! Shared breaker state on a real Redis (standalone and Cluster): when one
//! replica trips the others refuse too; only the configured number of trial
//! calls run across the fleet; with Redis stopped each replica keeps its own
//! breaker, and nothing panics.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::{Plan, Seen, Upstream, call};
use test_support::{RedisCluster, RedisServer, eventually};
use tower::Layer;
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
use tower_circuit::{CircuitBreakerLayer, CircuitHandle, RedisStore, State, Window};

const SYNC: Duration = Duration::from_millis(50);

/// A Redis timeout long enough that a loaded test machine doesn't send a
/// replica to its local breaker by accident.
const PATIENT: Duration = Duration::from_millis(1_000);
/// A short one, to notice a stopped Redis quickly.
const QUICK: Duration = Duration::from_millis(100);

fn degrade(timeout: Duration) -> Degrade {
    Degrade::new(
        "circuit",
        DegradeConfig::default()
            .timeout(timeout)
            .backoff(Duration::from_millis(100), Duration::from_millis(400)),
    )
}

async fn replica(urls: &[String], prefix: &str) -> CircuitBreakerLayer {
    replica_with(urls, prefix, PATIENT).await
}

async fn replica_with(urls: &[String], prefix: &str, timeout: Duration) -> CircuitBreakerLayer {
    let client = connect(urls, &ConnectOptions::default()).await.unwrap();
    let degrade = degrade(timeout);
    CircuitBreakerLayer::builder()
        .name("shared")
        .window(Window::consecutive(2))
        .open_wait(Duration::from_millis(800))
        .half_open_trials(1)
        .redis(
            RedisStore::builder(client)
                .prefix(prefix)
                .sync_interval(SYNC)
                .degrade(degrade)
                .build(),
        )
        .build()
        .unwrap()
}

fn state(handle: &CircuitHandle) -> State {
    handle.state("shared").unwrap_or(State::Disabled)
}

/// The shared generation of breaker `name`, once it is synced with Redis.
fn synced_generation(handle: &CircuitHandle, name: &str) -> Option<u64> {
    let shared = handle.get(name)?.shared?;
    shared.synced.then_some(shared.generation)
}

/// Trips replica A; B must refuse too, without calling its upstream. Then
/// exactly one trial call runs across both, and its success closes both.
async fn trip_one_refuse_both(urls: Vec<String>) {
    let a = replica(&urls, "t1").await;
    let b = replica(&urls, "t1").await;
    let (ha, hb) = (a.handle(), b.handle());
    let (ua, ub) = (Upstream::default(), Upstream::default());
    let (mut sa, mut sb) = (a.layer(ua.clone()), b.layer(ub.clone()));
    // Both replicas have seen the shared state once.
    tokio::time::sleep(SYNC * 3).await;

    call(&mut sa, Plan::status(500)).await;
    call(&mut sa, Plan::status(500)).await;
    assert_eq!(state(&ha), State::Open);
    eventually(Duration::from_secs(2), || state(&hb) == State::Open)
        .await
        .expect("timed out waiting until B sees the circuit open");
    assert!(matches!(
        call(&mut sb, Plan::ok()).await,
        Seen::Refused(503, _)
    ));
    assert_eq!(ub.calls(), 0, "B never called its upstream");
    let shared = hb.get("shared").unwrap().shared.unwrap();
    assert_eq!(shared.redis, "up");
    assert!(shared.generation >= 1);

    // After the wait, the fleet's single trial slot goes to one replica.
    tokio::time::sleep(Duration::from_millis(850)).await;
    let mut trials = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while state(&ha) != State::Closed || state(&hb) != State::Closed {
        assert!(Instant::now() < deadline, "the fleet did not close");
        // Only replicas not closed yet make trial calls; a trial holds its
        // slot until its end, so run both at once.
        let (open_a, open_b) = (state(&ha) != State::Closed, state(&hb) != State::Closed);
        let before = ua.calls() + ub.calls();
        let slow = || Plan::slow(Duration::from_millis(30));
        let (ra, rb) = tokio::join!(
            async {
                if open_a {
                    Some(call(&mut sa, slow()).await)
                } else {
                    None
                }
            },
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if open_b {
                    Some(call(&mut sb, slow()).await)
                } else {
                    None
                }
            }
        );
        let after = ua.calls() + ub.calls();
        assert!(after - before <= 1, "two trials at once: {ra:?} {rb:?}");
        trials += after - before;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(trials, 1, "exactly one trial closed the fleet's circuit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_tripping_one_replica_makes_the_other_refuse() {
    let server = RedisServer::start();
    trip_one_refuse_both(vec![server.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_tripping_one_replica_makes_the_other_refuse() {
    let cluster = RedisCluster::start();
    trip_one_refuse_both(cluster.urls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_control_reaches_every_replica() {
    let server = RedisServer::start();
    let urls = vec![server.url()];
    let a = replica(&urls, "t2").await;
    let b = replica(&urls, "t2").await;
    let hb = b.handle();
    tokio::time::sleep(SYNC * 3).await;
    a.handle().force_open("shared").unwrap();
    eventually(Duration::from_secs(2), || state(&hb) == State::ForcedOpen)
        .await
        .expect("timed out waiting until B is forced open");
    a.handle().reset("shared").unwrap();
    eventually(Duration::from_secs(2), || state(&hb) == State::Closed)
        .await
        .expect("timed out waiting until B is closed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_each_replica_keeps_its_own_breaker() {
    let mut server = RedisServer::start();
    let urls = vec![server.url()];
    let a = replica_with(&urls, "t3", QUICK).await;
    let b = replica_with(&urls, "t3", QUICK).await;
    let (ha, hb) = (a.handle(), b.handle());
    let (ua, ub) = (Upstream::default(), Upstream::default());
    let (mut sa, mut sb) = (a.layer(ua.clone()), b.layer(ub.clone()));
    tokio::time::sleep(SYNC * 3).await;

    server.stop();
    // A trips on its own; B keeps serving.
    call(&mut sa, Plan::status(500)).await;
    call(&mut sa, Plan::status(500)).await;
    assert_eq!(state(&ha), State::Open);
    tokio::time::sleep(SYNC * 6).await;
    for _ in 0..5 {
        assert_eq!(call(&mut sb, Plan::ok()).await, Seen::Upstream(200, true));
    }
    assert_eq!(state(&hb), State::Closed);
    assert_eq!(ha.get("shared").unwrap().shared.unwrap().redis, "down");
    // B trips on its own too, and both recover locally: the open wait, the
    // trial and the close all happen without Redis.
    call(&mut sb, Plan::status(500)).await;
    call(&mut sb, Plan::status(500)).await;
    assert_eq!(state(&hb), State::Open);
    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(call(&mut sb, Plan::ok()).await, Seen::Upstream(200, true));
    assert_eq!(state(&hb), State::Closed);
    assert!(matches!(
        call(&mut sa, Plan::ok()).await,
        Seen::Upstream(200, true)
    ));
    assert_eq!(state(&ha), State::Closed);

    // A trips again while Redis is down, then Redis comes back (empty): the
    // trip A decided alone reaches B.
    call(&mut sa, Plan::status(500)).await;
    call(&mut sa, Plan::status(500)).await;
    assert_eq!(state(&ha), State::Open);
    server.restart();
    eventually(Duration::from_secs(15), || state(&hb) == State::Open)
        .await
        .expect("timed out waiting until B learns of A's trip");
    eventually(Duration::from_secs(2), || {
        ha.get("shared").unwrap().shared.unwrap().synced
    })
    .await
    .expect("timed out waiting until A knows Redis has its trip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_keyed_breaker_shares_its_trip_before_its_first_sync() {
    use tower_circuit::ByHeader;
    let server = RedisServer::start();
    let urls = vec![server.url()];
    let keyed = |sync: Duration| {
        let urls = urls.clone();
        async move {
            let client = connect(&urls, &ConnectOptions::default()).await.unwrap();
            CircuitBreakerLayer::builder()
                .name("models")
                .keyed_by(ByHeader::new(http::HeaderName::from_static("x-model")))
                .window(Window::consecutive(2))
                .open_wait(Duration::from_secs(60))
                .redis(
                    RedisStore::builder(client)
                        .prefix("t4")
                        .sync_interval(sync)
                        .degrade(degrade(PATIENT))
                        .build(),
                )
                .build()
                .unwrap()
        }
    };
    // A syncs rarely: its breaker for "m" trips before it read Redis (if
    // that trip got lost, A's next sync would send it again).
    let a = keyed(Duration::from_secs(2)).await;
    let b = keyed(SYNC).await;
    let hb = b.handle();
    let (mut sa, mut sb) = (a.layer(Upstream::default()), b.layer(Upstream::default()));
    let request = |plan: Plan| {
        let mut req = http::Request::new(plan);
        req.headers_mut()
            .insert("x-model", http::HeaderValue::from_static("m"));
        req
    };
    // B knows the breaker, and moves its shared generation on (to 2).
    let _ = tower::ServiceExt::oneshot(&mut sb, request(Plan::ok())).await;
    hb.force_open("m").unwrap();
    hb.reset("m").unwrap();
    eventually(Duration::from_secs(2), || {
        synced_generation(&hb, "m") == Some(2)
    })
    .await
    .expect("timed out waiting until Redis holds generation 2");
    for _ in 0..2 {
        let res = tower::ServiceExt::oneshot(&mut sa, request(Plan::status(500))).await;
        drop(res);
    }
    assert_eq!(a.handle().state("m"), Some(State::Open));
    eventually(Duration::from_secs(5), || {
        hb.state("m") == Some(State::Open)
    })
    .await
    .expect("timed out waiting until B sees model m open");
    // A took on the generation its trip created, and stayed open.
    let ha = a.handle();
    eventually(Duration::from_secs(5), || {
        synced_generation(&ha, "m") == Some(3)
    })
    .await
    .expect("timed out waiting until A took on generation 3");
    assert_eq!(a.handle().state("m"), Some(State::Open));
}
