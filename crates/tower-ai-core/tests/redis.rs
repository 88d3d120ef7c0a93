//! The Redis plumbing against real `redis-server` processes.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, KeysInterface, LuaInterface};
use test_support::{RedisCluster, RedisServer};
use tower_ai_core::redis::{
    ConnectOptions, Degrade, DegradeConfig, Health, KeySpace, Script, Tag, Unavailable, connect,
};

const INCR_BY: &str = "return redis.call('INCRBY', KEYS[1], ARGV[1])";

#[tokio::test]
async fn scripts_reload_after_noscript() {
    let server = RedisServer::start();
    let client = connect(&[server.url()], &ConnectOptions::default())
        .await
        .expect("connected");
    let script = Script::new(INCR_BY);
    let n: i64 = script
        .call(&client, "counter", 2)
        .await
        .expect("first call");
    assert_eq!(n, 2);
    // Forget every cached script, as a restart or a failover would.
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]), "+OK\r\n");
    let n: i64 = script
        .call(&client, "counter", 3)
        .await
        .expect("after NOSCRIPT");
    assert_eq!(n, 5);
    // And the script is cached again: EVALSHA works directly.
    let n: i64 = client
        .evalsha(script.sha(), "counter", 1)
        .await
        .expect("cached again");
    assert_eq!(n, 6);
}

#[tokio::test]
async fn degrade_follows_a_server_that_dies_and_comes_back() {
    let mut server = RedisServer::start();
    let client = connect(&[server.url()], &ConnectOptions::default())
        .await
        .expect("connected");
    let degrade = Degrade::new(
        "test",
        DegradeConfig::default()
            .timeout(Duration::from_millis(50))
            .backoff(Duration::from_millis(100), Duration::from_millis(400)),
    );
    let ping = || async { client.ping::<String>(None).await };
    assert_eq!(degrade.call(ping()).await.expect("up"), "PONG");

    server.stop();
    let started = Instant::now();
    let result = degrade.call(ping()).await;
    assert!(
        matches!(result, Err(Unavailable::Timeout | Unavailable::Failed(_))),
        "{result:?}"
    );
    // The timeout bounds the wait, with room for a loaded machine.
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(degrade.health().as_str(), "down");
    // While backing off, callers are refused at once.
    let started = Instant::now();
    assert!(matches!(
        degrade.call(ping()).await,
        Err(Unavailable::Degraded { .. })
    ));
    assert!(started.elapsed() < Duration::from_millis(20));

    server.restart();
    // Probes run after each backoff; the client reconnects on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    while degrade.health() != Health::Up {
        assert!(Instant::now() < deadline, "Redis never came back");
        let _ = degrade.call(ping()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(degrade.recoveries(), 1);
    assert_eq!(degrade.call(ping()).await.expect("up again"), "PONG");
}

#[tokio::test]
async fn cluster_scripts_run_on_the_slot_of_their_hash_tag() {
    let cluster = RedisCluster::start();
    let client = connect(&cluster.urls(), &ConnectOptions::default())
        .await
        .expect("connected to the cluster");
    let keys = KeySpace::new("test", "core");
    let script = Script::new(
        "redis.call('INCRBY', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[1])",
    );
    // Tags spread over the three masters; both keys of a call share a slot.
    for i in 0..30 {
        let tag = Tag::digest(format!("tenant-{i}"));
        let n: i64 = script
            .call(&client, vec![keys.key(&tag, "a"), keys.key(&tag, "b")], i)
            .await
            .expect("cross-key script in one slot");
        assert_eq!(n, i);
        let a: i64 = client.get(keys.key(&tag, "a")).await.expect("read back");
        assert_eq!(a, i);
    }
    client.quit().await.expect("quit");
}
