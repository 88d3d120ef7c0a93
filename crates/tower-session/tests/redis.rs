//! What only a real Redis can show: key TTLs, the commands a request sends,
//! a server dying in the middle of a request, key names, pools.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::{Client, app};
use fred::interfaces::{ClientLike, KeysInterface};
use http::StatusCode;
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
use tower_session::{Id, OutagePolicy, RedisStore, Session, SessionLayer, SessionStore};

fn degrade() -> Degrade {
    Degrade::new(
        "session",
        DegradeConfig::default()
            .timeout(Duration::from_secs(1))
            .backoff(Duration::from_millis(100), Duration::from_millis(200)),
    )
}

async fn store(urls: &[String]) -> RedisStore<fred::clients::Client> {
    let client = connect(urls, &ConnectOptions::default())
        .await
        .expect("connected");
    RedisStore::builder(client).degrade(degrade()).build()
}

/// Calls per command since the last `CONFIG RESETSTAT`.
fn command_stats(server: &test_support::RedisServer) -> HashMap<String, u64> {
    server
        .command(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

async fn pttl(client: &fred::clients::Client, key: &str) -> i64 {
    client.pttl(key).await.expect("PTTL")
}

fn id_of(c: &Client) -> Id {
    Id::parse(c.cookie.as_deref().unwrap_or_default().as_bytes()).expect("a session id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_key_ttl_slides_with_activity_and_expires_without() {
    let server = test_support::RedisServer::start();
    let store = store(&[server.url()]).await;
    let raw = server.client().await;
    let layer = SessionLayer::builder()
        .redis(store.clone())
        .ttl(Duration::from_secs(3))
        .touch_interval(Duration::from_millis(500))
        .build()
        .expect("valid");
    let mut c = Client::new(app(layer));
    c.post("/set/a/1").await;
    c.send("POST", "/history/user/1", "hi".into()).await;
    let [hash, history, _] = store.keys_of(&id_of(&c));
    assert!(pttl(&raw, &hash).await > 2_500);
    assert!(pttl(&raw, &history).await > 2_500);

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(pttl(&raw, &hash).await < 2_200);
    // A read-only request: the TTL of every key of the session is back
    // near the configured TTL.
    assert_eq!(c.get("/get/a").await.body, "\"1\"");
    assert!(pttl(&raw, &hash).await > 2_500, "the hash TTL slid");
    assert!(pttl(&raw, &history).await > 2_500, "the history TTL slid");

    // Inactivity: Redis expires every key; no sweeper involved.
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let left: i64 = raw
        .exists(store.keys_of(&id_of(&c)).to_vec())
        .await
        .expect("EXISTS");
    assert_eq!(left, 0);
    assert_eq!(c.get("/get/a").await.body, "null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_send_one_hgetall_and_no_write_and_untouched_routes_send_nothing() {
    let server = test_support::RedisServer::start();
    let store = store(&[server.url()]).await;
    let mut c = Client::new(app(SessionLayer::new(store)));
    c.post("/set/a/1").await;

    server.command(&["CONFIG", "RESETSTAT"]);
    for _ in 0..3 {
        assert_eq!(c.get("/untouched").await.status, StatusCode::OK);
    }
    assert_eq!(command_stats(&server), HashMap::new());

    for _ in 0..3 {
        assert_eq!(c.get("/get/a").await.body, "\"1\"");
    }
    let stats = command_stats(&server);
    assert_eq!(stats, HashMap::from([("hgetall".to_owned(), 3)]));

    // A read and a write: one HGETALL and one script writing one field
    // (after a first write, so the server has the script cached).
    c.post("/bump/warm-up").await;
    server.command(&["CONFIG", "RESETSTAT"]);
    assert_eq!(c.post("/bump/n").await.body, "1");
    let stats = command_stats(&server);
    assert_eq!(stats.get("hgetall"), Some(&1));
    assert_eq!(stats.get("hset"), Some(&1));
    assert_eq!(
        stats.get("evalsha").copied().unwrap_or(0) + stats.get("eval").copied().unwrap_or(0),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.get("hdel"), None);
}

/// A route that reads the session, kills Redis, then writes.
fn dying_app(
    layer: SessionLayer,
    server: Arc<parking_lot::Mutex<test_support::RedisServer>>,
) -> Router {
    let kill = post(move |session: Session| {
        let server = Arc::clone(&server);
        async move {
            let seen: Option<String> = session.get("a").await.ok().flatten();
            tokio::task::spawn_blocking(move || server.lock().stop())
                .await
                .ok();
            session.insert("b", "2").ok();
            seen.unwrap_or_default()
        }
    });
    common::routes()
        .route("/read-kill-write", kill)
        .layer(layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_request_answers_503_or_continues_as_configured() {
    for policy in [OutagePolicy::Refuse, OutagePolicy::Continue] {
        let server = test_support::RedisServer::start();
        let url = server.url();
        let server = Arc::new(parking_lot::Mutex::new(server));
        let store = store(&[url]).await;
        let layer = SessionLayer::builder()
            .redis(store)
            .on_outage(policy)
            .build()
            .expect("valid");
        let mut c = Client::new(dying_app(layer, Arc::clone(&server)));
        c.post("/set/a/1").await;
        let cookie = c.cookie.clone();

        let r = c.post("/read-kill-write").await;
        match policy {
            OutagePolicy::Refuse => {
                assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(r.headers["content-type"], "application/problem+json");
                let doc: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
                assert_eq!(doc["status"], 503);
                assert_eq!(r.headers["retry-after"], "1");
            }
            _ => {
                assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "1"));
            }
        }
        assert!(r.set_cookie().is_none());
        assert_eq!(c.cookie, cookie, "the client keeps its cookie");

        // While Redis is down: reads are refused (or empty), never a panic
        // nor an empty 500; untouched routes work.
        let r = c.get("/get/a").await;
        match policy {
            OutagePolicy::Refuse => assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE),
            _ => assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "null")),
        }
        assert_eq!(c.get("/untouched").await.status, StatusCode::OK);

        // Redis comes back (empty): sessions work again.
        tokio::task::spawn_blocking({
            let server = Arc::clone(&server);
            move || server.lock().restart()
        })
        .await
        .expect("restarted");
        let mut ok = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if c.post("/set/c/3").await.status == StatusCode::OK {
                ok = true;
                break;
            }
        }
        assert!(ok, "sessions work again after Redis returns");
        assert_eq!(c.get("/get/c").await.body, "\"3\"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_never_appear_in_key_names() {
    let server = test_support::RedisServer::start();
    let store = store(&[server.url()]).await;
    let mut c = Client::new(app(SessionLayer::new(store)));
    c.post("/login/ada").await;
    c.send("POST", "/history/user/1", "hi".into()).await;
    let id = c.cookie.clone().expect("a session");
    let keys = server.command(&["KEYS", "*"]);
    assert!(keys.contains("tower-ai:session:{"), "{keys}");
    assert!(!keys.contains(&id), "the id leaked into a key: {keys}");
    assert!(
        !keys.contains("ada"),
        "the user name leaked into a key: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_works_like_a_client() {
    let server = test_support::RedisServer::start();
    let config = fred::types::config::Config::from_url(&server.url()).expect("URL");
    let pool = fred::clients::Pool::new(config, None, None, None, 4).expect("pool");
    pool.init().await.expect("connected");
    let store = RedisStore::builder(pool).degrade(degrade()).build();
    let mut c = Client::new(app(SessionLayer::new(store)));
    c.post("/login/ada").await;
    assert_eq!(c.post("/bump/n").await.body, "1");
    assert_eq!(c.post("/bump/n").await.body, "2");
    assert_eq!(
        c.send("POST", "/history/user/1", "hi".into()).await.body,
        "1"
    );
    assert_eq!(c.post("/logout-everywhere").await.body, "1");
    assert_eq!(c.get("/get/n").await.body, "null");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_set_nx_and_large_updates_are_batched() {
    let server = test_support::RedisServer::start();
    let store = store(&[server.url()]).await;
    let id = Id::random().expect("entropy");
    let ttl = Duration::from_secs(60);
    let fields: Vec<(String, String)> = (0..2_500)
        .map(|i| (format!("f{i}"), i.to_string()))
        .collect();
    assert!(store.create(&id, &fields, ttl).await.expect("create"));
    // The same id again: refused, nothing merged.
    let other = vec![("f0".to_owned(), "other".to_owned())];
    assert!(!store.create(&id, &other, ttl).await.expect("create"));
    let loaded = store.load(&id).await.expect("load").expect("a session");
    assert_eq!(loaded.len(), 2_500);
    assert!(loaded.contains(&("f0".to_owned(), "0".to_owned())));

    let removed: Vec<String> = (0..2_000).map(|i| format!("f{i}")).collect();
    let set = vec![("new".to_owned(), "1".to_owned())];
    let changes = tower_session::store::Changes::new(set, removed);
    assert!(store.update(&id, &changes, ttl).await.expect("update"));
    assert_eq!(
        store.load(&id).await.expect("load").map(|f| f.len()),
        Some(501)
    );

    // An update never brings a deleted session back.
    store.delete(&id).await.expect("delete");
    assert!(!store.update(&id, &changes, ttl).await.expect("update"));
    assert_eq!(store.load(&id).await.expect("load"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_keep_every_session_apart() {
    let server = test_support::RedisServer::start();
    let store = store(&[server.url()]).await;
    let ttl = Duration::from_secs(60);
    // Half the sessions exist; updates of all of them at once go out in
    // shared script calls, and each answer goes to its own caller.
    let ids: Vec<Id> = (0..40).map(|_| Id::random().expect("entropy")).collect();
    for id in ids.iter().step_by(2) {
        let fields = vec![("n".to_owned(), "0".to_owned())];
        assert!(store.create(id, &fields, ttl).await.expect("create"));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (store, id) = (store.clone(), *id);
        tasks.spawn(async move {
            let changes = tower_session::store::Changes::new(
                vec![("n".to_owned(), i.to_string())],
                Vec::new(),
            );
            let updated = store.update(&id, &changes, ttl).await.expect("update");
            let loaded = store.load(&id).await.expect("load");
            (i, updated, loaded)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, updated, loaded) = done.expect("task");
        if i % 2 == 0 {
            assert!(updated, "session {i} exists");
            let loaded = loaded.expect("a session");
            assert!(
                loaded.contains(&("n".to_owned(), i.to_string())),
                "{i}: {loaded:?}"
            );
        } else {
            assert!(!updated, "session {i} doesn't exist");
            assert_eq!(loaded, None, "no session {i} was made");
        }
    }

    // Through the layer: many visitors bumping their own counters at once.
    let app = app(SessionLayer::new(store));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut c = Client::new(app.clone());
        c.post("/set/seed/1").await;
        clients.push(c);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move {
            for _ in 0..10 {
                c.post("/bump/n").await;
            }
            c.get("/get/n").await.body
        });
    }
    while let Some(body) = tasks.join_next().await {
        assert_eq!(body.expect("task"), "10");
    }
}
