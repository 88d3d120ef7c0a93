//! Replicas sharing a pool through real Redis, standalone and Cluster: the
//! fleet's load (and a replica's load lapsing with its lease when it dies),
//! and one prefix index.
#![cfg(feature = "redis")]

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fred::interfaces::HashesInterface;
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ai_balance::{BalanceLayer, Endpoint, Pool, RedisStore, Strategy};

type Body = Channel<Bytes, Infallible>;

/// A replica's balancer: its own store (and Redis health), the same pool.
async fn replica(
    client: &fred::clients::Client,
    prefix: &str,
    strategy: Strategy,
    endpoints: &[&'static str],
    permits: u32,
) -> Pool<&'static str> {
    let store = RedisStore::builder(client.clone())
        .prefix(prefix)
        .sync_interval(Duration::from_millis(20))
        .lease(Duration::from_secs(1))
        .build();
    Pool::builder("model")
        .strategy(strategy)
        .endpoints(
            endpoints
                .iter()
                .map(|name| Endpoint::new(*name, *name).max_concurrency(permits)),
        )
        .redis(&store)
        .build()
        .expect("a pool")
}

/// Answers with the picked endpoint's name, in a body that stays open until
/// its sender is dropped (the senders go to `held`).
fn endpoints(
    held: tokio::sync::mpsc::UnboundedSender<http_body_util::channel::Sender<Bytes, Infallible>>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Request<Full<Bytes>>| {
        let held = held.clone();
        async move {
            let name = req
                .extensions()
                .get::<Endpoint<&'static str>>()
                .map_or("none", |e| *e.target());
            let (mut tx, body) = Channel::new(2);
            let _ = tx.try_send(http_body::Frame::data(Bytes::from(name)));
            let _ = held.send(tx);
            Ok(Response::new(body))
        }
    })
}

fn chat(messages: &[String]) -> Request<Full<Bytes>> {
    let messages: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": text})
        })
        .collect();
    let body = serde_json::json!({"model": "m", "messages": messages});
    Request::new(Full::new(Bytes::from(body.to_string())))
}

/// The first frame of a held body: the endpoint's name.
async fn served(res: Response<tower_ai_balance::BalanceBody<Body>>) -> (String, impl Drop) {
    let mut body = res.into_body();
    let frame = body.frame().await.expect("a frame").expect("no error");
    let name = String::from_utf8(frame.into_data().expect("data").to_vec()).expect("utf-8");
    (name, Holder(Some(body)))
}

/// Keeps a body (and its permit) alive until dropped.
struct Holder<B>(Option<B>);

impl<B> Drop for Holder<B> {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Polls until `check` holds, for at most 10 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn in_flight(pool: &Pool<&'static str>) -> Vec<u32> {
    pool.status().iter().map(|e| e.in_flight).collect()
}

async fn the_fleet_load_is_shared_and_a_dead_replica_lapses(client: fred::clients::Client) {
    let prefix = test_support::shared::prefix("balance-load");
    let a = replica(&client, &prefix, Strategy::RoundRobin, &["x", "y"], 2).await;
    let b = replica(&client, &prefix, Strategy::RoundRobin, &["x", "y"], 2).await;
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let mut on_a = BalanceLayer::new(a.clone()).layer(endpoints(held_tx.clone()));

    // Two streams open on one endpoint through replica a, one on the other
    // (round robin, from wherever this replica's turn starts).
    let mut open = Vec::new();
    for _ in 0..3 {
        let res = on_a
            .ready()
            .await
            .unwrap()
            .call(chat(&["hi".into()]))
            .await
            .unwrap();
        open.push(served(res).await);
    }
    let names: Vec<String> = open.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names[0], names[2]);
    assert_ne!(names[0], names[1]);
    let (full, other) = (names[0].clone(), names[1].clone());
    let expected = if full == "x" { [2, 1] } else { [1, 2] };
    until("b sees a's load", || in_flight(&b) == expected).await;

    // The lease is renewed while a lives: three leases later, still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(in_flight(&b), expected);

    // One endpoint is full fleet-wide (2 of 2): b sends its request to the
    // other, wherever its own turn starts.
    let mut on_b = BalanceLayer::new(b.clone()).layer(endpoints(held_tx));
    let res = on_b
        .ready()
        .await
        .unwrap()
        .call(chat(&["hi".into()]))
        .await
        .unwrap();
    let (name, b_held) = served(res).await;
    assert_eq!(name, other, "{full} is full");
    drop(b_held);

    // Replica a dies mid-stream: its permits are never released, its pool
    // is gone. Its load lapses with its lease.
    std::mem::forget(open);
    while held.try_recv().is_ok() {}
    drop(on_a);
    drop(a);
    until("a's load lapses", || in_flight(&b) == [0, 0]).await;
}

async fn one_prefix_index_serves_every_replica(client: fred::clients::Client) {
    let prefix = test_support::shared::prefix("balance-prefix");
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let pool = replica(
            &client,
            &prefix,
            Strategy::cache_aware(),
            &["a", "b", "c"],
            64,
        )
        .await;
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        replicas.push((
            pool.clone(),
            BalanceLayer::new(pool).layer(endpoints(tx)),
            _rx,
        ));
    }
    let window = |offset: u64| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        format!(
            "{prefix}:balance:{{model}}:prefix:{}",
            now / 600_000 - offset
        )
    };
    let fields = || async {
        let mut n = 0u64;
        for key in [window(0), window(1)] {
            n += client.hlen::<u64, _>(key).await.unwrap_or(0);
        }
        n
    };

    // Three conversations, each turn sent to the next replica: every turn
    // lands where the conversation began, though that replica never saw it.
    let mut homes: Vec<Option<String>> = vec![None; 3];
    let mut conversations: Vec<Vec<String>> = (0..3)
        .map(|c| vec![format!("Conversation {c}, a long opening message. ").repeat(12)])
        .collect();
    let mut turn_no = 0;
    let mut open = Vec::new();
    for turn in 0..4 {
        for (c, messages) in conversations.iter_mut().enumerate() {
            let before = fields().await;
            let (_, svc, _) = &mut replicas[turn_no % 4];
            turn_no += 1;
            let res = svc
                .ready()
                .await
                .unwrap()
                .call(chat(messages))
                .await
                .unwrap();
            let (name, held) = served(res).await;
            open.push(held);
            match &homes[c] {
                None => homes[c] = Some(name),
                Some(home) => assert_eq!(home, &name, "conversation {c}, turn {turn}"),
            }
            // The pick's blocks reach Redis off the request's path, and its
            // load with the next sync; the next turn starts once every
            // replica can see both.
            let deadline = Instant::now() + Duration::from_secs(10);
            while fields().await <= before {
                assert!(
                    Instant::now() < deadline,
                    "the prefix index was never written"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let held = open.len() as u32;
            until("every replica sees the load", || {
                replicas.iter().all(|(pool, _, _)| {
                    pool.status().iter().map(|e| e.in_flight).sum::<u32>() == held
                })
            })
            .await;
            messages.push(format!("Answer {turn} to conversation {c}. ").repeat(6));
            messages.push(format!("Question {} of conversation {c}. ", turn + 1).repeat(6));
        }
    }
    let mut distinct: Vec<_> = homes.iter().flatten().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "new conversations go to the least loaded: {homes:?}"
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_the_fleet_load_is_shared_and_a_dead_replica_lapses() {
    let client = test_support::shared::redis().client().await;
    the_fleet_load_is_shared_and_a_dead_replica_lapses(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_the_fleet_load_is_shared_and_a_dead_replica_lapses() {
    let client = test_support::shared::cluster().client().await;
    the_fleet_load_is_shared_and_a_dead_replica_lapses(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_one_prefix_index_serves_every_replica() {
    let client = test_support::shared::redis().client().await;
    one_prefix_index_serves_every_replica(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_one_prefix_index_serves_every_replica() {
    let client = test_support::shared::cluster().client().await;
    one_prefix_index_serves_every_replica(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_leaves_each_replica_on_its_own() {
    let mut server = test_support::RedisServer::start();
    let client = server.client().await;
    let pool = replica(&client, "down", Strategy::cache_aware(), &["a", "b"], 8).await;
    server.stop();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut svc = BalanceLayer::new(pool.clone()).layer(endpoints(tx));
    let text = "A prompt long enough for a few blocks of prefix. ".repeat(8);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(chat(std::slice::from_ref(&text)))
        .await
        .unwrap();
    let (first, held) = served(res).await;
    drop(held);
    // The local index still holds the prompt: the same endpoint again.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&[text]))
        .await
        .unwrap();
    let (again, _held) = served(res).await;
    assert_eq!(first, again);
}
