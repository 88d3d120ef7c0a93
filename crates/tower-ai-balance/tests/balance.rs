//! The balancer driven directly: picks, permits held to the end of the
//! body, retries before the first byte, `Retry-After`, cooldowns. Time logic
//! runs on paused time; the concurrency test on a multi-threaded runtime.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_ai_balance::{BalanceLayer, CacheAware, Endpoint, Pool, Strategy};

type Body = Channel<Bytes, io::Error>;

/// What an endpoint answers next.
enum Reply {
    /// This status with this `Retry-After`, and a one-chunk body.
    Status(u16, Option<&'static str>),
    /// `200` whose body the test writes through the sender.
    Stream(tokio::sync::oneshot::Sender<Sender<Bytes, io::Error>>),
    /// A connection error.
    Refused,
}

/// Endpoints scripted by name; unscripted calls answer `200 ok`. Every call
/// is recorded with its endpoint and time.
#[derive(Clone, Default)]
struct Fleet {
    script: Arc<Mutex<HashMap<&'static str, VecDeque<Reply>>>>,
    calls: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

impl Fleet {
    fn next(&self, endpoint: &'static str, reply: Reply) {
        self.script
            .lock()
            .entry(endpoint)
            .or_default()
            .push_back(reply);
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().iter().map(|(name, _)| *name).collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.calls.lock().iter().map(|(_, at)| *at).collect()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Body>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let fleet = self.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let fleet = fleet.clone();
            async move {
                let endpoint = req
                    .extensions()
                    .get::<Endpoint<&'static str>>()
                    .map(|e| *e.target())
                    .ok_or("no endpoint picked")?;
                fleet.calls.lock().push((endpoint, Instant::now()));
                let reply = fleet
                    .script
                    .lock()
                    .get_mut(endpoint)
                    .and_then(VecDeque::pop_front);
                let (mut tx, body) = Channel::new(4);
                let mut res = Response::new(body);
                match reply {
                    None => {
                        let _ = tx.try_send(http_body::Frame::data(Bytes::from(endpoint)));
                    }
                    Some(Reply::Status(status, retry_after)) => {
                        *res.status_mut() = StatusCode::from_u16(status)?;
                        if let Some(value) = retry_after {
                            res.headers_mut().insert("retry-after", value.parse()?);
                        }
                        let _ = tx.try_send(http_body::Frame::data(Bytes::from(endpoint)));
                    }
                    Some(Reply::Stream(give)) => {
                        let _ = give.send(tx);
                    }
                    Some(Reply::Refused) => return Err("connection refused".into()),
                }
                Ok(res)
            }
        })
    }
}

fn pool(strategy: Strategy, names: &[&'static str], permits: u32) -> Pool<&'static str> {
    Pool::builder("model")
        .strategy(strategy)
        .endpoints(
            names
                .iter()
                .map(|name| Endpoint::new(*name, *name).max_concurrency(permits)),
        )
        .build()
        .unwrap()
}

fn chat(text: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]});
    Request::new(Full::new(Bytes::from(body.to_string())))
}

async fn text<B: http_body::Body<Data = Bytes>>(res: Response<B>) -> String
where
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn in_flight(pool: &Pool<&'static str>) -> Vec<u32> {
    pool.status().iter().map(|e| e.in_flight).collect()
}

#[tokio::test(start_paused = true)]
async fn a_permit_is_held_until_the_streamed_body_ends() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::RoundRobin, &["a"], 1);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    let (give, take) = tokio::sync::oneshot::channel();
    fleet.next("a", Reply::Stream(give));

    let res = svc.ready().await.unwrap().call(chat("one")).await.unwrap();
    let mut tx = take.await.unwrap();
    assert_eq!(
        in_flight(&pool),
        [1],
        "the head came back; the stream goes on"
    );

    // The endpoint's only permit is taken: a second request waits.
    let mut second = Box::pin(svc.ready().await.unwrap().call(chat("two")));
    tokio::time::advance(Duration::from_secs(1)).await;
    let pending =
        std::future::poll_fn(|cx| std::task::Poll::Ready(second.as_mut().poll(cx).is_pending()))
            .await;
    assert!(pending);
    assert_eq!(fleet.calls(), ["a"]);

    let mut body = res.into_body();
    tx.send_data(Bytes::from("to")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "to");
    assert_eq!(in_flight(&pool), [1]);
    drop(tx);
    assert!(body.frame().await.is_none(), "the stream ended");
    assert_eq!(
        in_flight(&pool),
        [0],
        "the end of the body released the permit"
    );

    let second = second.await.unwrap();
    assert_eq!(text(second).await, "a");
    assert_eq!(fleet.calls(), ["a", "a"]);
    assert_eq!(in_flight(&pool), [0]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_releases_its_permit_and_a_full_pool_times_out() {
    let fleet = Fleet::default();
    let pool = Pool::builder("model")
        .endpoint(Endpoint::new("a", "a").max_concurrency(1))
        .queue_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    let (give, _take) = tokio::sync::oneshot::channel();
    fleet.next("a", Reply::Stream(give));
    let held = svc.ready().await.unwrap().call(chat("one")).await.unwrap();

    let started = Instant::now();
    let refused = svc.ready().await.unwrap().call(chat("two")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    drop(held);
    assert_eq!(in_flight(&pool), [0]);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(chat("three"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn failures_before_the_first_byte_are_retried_on_another_endpoint() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::RoundRobin, &["a", "b"], 8);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    fleet.next("a", Reply::Status(503, None));
    fleet.next("b", Reply::Refused);
    fleet.next("a", Reply::Status(502, None));
    fleet.next("b", Reply::Status(500, None));

    // a: 503, then b (not yet tried): refused, then a: 502; two retries spent.
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(fleet.calls(), ["a", "b", "a"]);
    drop(res);

    // b: 500, then a: ok.
    let res = svc.ready().await.unwrap().call(chat("y")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "a");
    assert_eq!(fleet.calls(), ["a", "b", "a", "b", "a"]);
    assert_eq!(in_flight(&pool), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_never_happens_after_the_first_byte() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::RoundRobin, &["a", "b"], 8);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    let (give, take) = tokio::sync::oneshot::channel();
    fleet.next("a", Reply::Stream(give));

    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    let mut tx = take.await.unwrap();
    tx.send_data(Bytes::from("first ")).await.unwrap();
    tx.abort(io::Error::other("the endpoint died"));
    let mut body = res.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "first "
    );
    let broken = body.frame().await.unwrap();
    assert!(
        broken.is_err(),
        "the client sees the break, not a clean end"
    );
    assert_eq!(fleet.calls(), ["a"], "no second call once bytes went out");
    let status = pool.status();
    assert_eq!((status[0].failures, status[0].in_flight), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_by_a_lone_endpoint_retry() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::RoundRobin, &["a"], 8);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());

    // One endpoint, busy for 2 s: the retry comes 2 s later, not sooner.
    fleet.next("a", Reply::Status(429, Some("2")));
    let started = Instant::now();
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let times = fleet.times();
    assert_eq!(times.len(), 2);
    assert_eq!(times[0], started);
    assert!(
        times[1] - times[0] >= Duration::from_secs(2),
        "{:?}",
        times[1] - times[0]
    );
    assert!(times[1] - times[0] < Duration::from_millis(2_100));

    // Past the longest retry wait (5 s): the client gets the 429 at once,
    // with its Retry-After. A lone endpoint is never cooled down: the next
    // request reaches it.
    fleet.next("a", Reply::Status(429, Some("30")));
    let started = Instant::now();
    let res = svc.ready().await.unwrap().call(chat("y")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "30");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(fleet.calls().len(), 3);
    drop(res);
    let res = svc.ready().await.unwrap().call(chat("z")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(fleet.calls().len(), 4);
    assert_eq!(pool.status()[0].cooldowns, 0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_keeps_an_endpoint_out_of_the_picks_while_others_serve() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::RoundRobin, &["a", "b"], 8);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    fleet.next("a", Reply::Status(429, Some("30")));
    let started = Instant::now();
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_eq!(
        text(res).await,
        "b",
        "retried on b without waiting a's 30 s"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    for _ in 0..4 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    assert_eq!(fleet.calls(), ["a", "b", "b", "b", "b", "b"]);
    let cooling = pool.status()[0].cooling_for.unwrap();
    assert!(cooling > Duration::from_secs(29) && cooling <= Duration::from_secs(30));

    // When every endpoint is out, a request is refused with the time the
    // first one comes back.
    fleet.next("b", Reply::Status(503, Some("40")));
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "b's own answer: a's wait is past the retry wait"
    );
    drop(res);
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&wait), "{wait}");
    assert_eq!(
        fleet.calls().len(),
        7,
        "no endpoint is called while all cool down"
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_cool_an_endpoint_down_until_it_recovers() {
    let fleet = Fleet::default();
    let pool = Pool::builder("model")
        .strategy(Strategy::RoundRobin)
        .endpoints([Endpoint::new("a", "a"), Endpoint::new("b", "b")])
        .retries(0)
        .cooldown(2, Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    fleet.next("a", Reply::Status(500, None));
    fleet.next("a", Reply::Status(500, None));
    for _ in 0..4 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    // a, b, a (second failure in a row: cooled), b.
    assert_eq!(fleet.calls(), ["a", "b", "a", "b"]);
    let cooled_at = fleet.times()[2];
    assert_eq!(pool.status()[0].cooldowns, 1);

    for _ in 0..3 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    assert_eq!(
        &fleet.calls()[4..],
        ["b", "b", "b"],
        "a is skipped while cooling"
    );

    tokio::time::advance(
        cooled_at + Duration::from_secs(10) - Duration::from_nanos(1) - Instant::now(),
    )
    .await;
    assert!(pool.status()[0].cooling_for.is_some());
    for _ in 0..2 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    assert_eq!(&fleet.calls()[7..], ["b", "b"]);
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert_eq!(pool.status()[0].cooling_for, None);
    for _ in 0..2 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    assert!(
        fleet.calls()[9..].contains(&"a"),
        "a is back: {:?}",
        fleet.calls()
    );
    assert_eq!(
        pool.status()[0].consecutive_failures,
        0,
        "its answer was healthy"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_error_never_cools_an_endpoint_down() {
    let fleet = Fleet::default();
    let pool = Pool::builder("model")
        .strategy(Strategy::RoundRobin)
        .endpoints([Endpoint::new("a", "a"), Endpoint::new("b", "b")])
        .cooldown(1, Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    for status in [400, 401, 404, 413, 422] {
        fleet.next("b", Reply::Status(status, None));
        fleet.next("a", Reply::Status(status, None));
        let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        fleet.script.lock().clear();
    }
    assert_eq!(fleet.calls().len(), 5, "not retried");
    let status = &pool.status()[0];
    assert_eq!(
        (status.failures, status.cooldowns, status.cooling_for),
        (0, 0, None)
    );
}

#[tokio::test(start_paused = true)]
async fn cache_aware_follows_the_prefix_and_spreads_what_is_new() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::cache_aware(), &["a", "b", "c"], 64);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());

    // Three conversations, each a few turns long, interleaved. Each turn
    // repeats the whole conversation so far: it must land where the
    // conversation's earlier turns did.
    let mut conversations: Vec<Vec<serde_json::Value>> = (0..3)
        .map(|c| vec![serde_json::json!({"role": "system", "content": format!("Conversation {c}. ").repeat(30)})])
        .collect();
    let mut homes: Vec<Option<String>> = vec![None; 3];
    for turn in 0..4 {
        for (c, messages) in conversations.iter_mut().enumerate() {
            messages.push(serde_json::json!({"role": "user", "content": format!("Question {turn} ").repeat(8)}));
            let body = serde_json::json!({"model": "m", "messages": messages});
            let res = svc
                .ready()
                .await
                .unwrap()
                .call(Request::new(Full::new(Bytes::from(body.to_string()))))
                .await
                .unwrap();
            let served = text(res).await;
            match &homes[c] {
                None => homes[c] = Some(served),
                Some(home) => assert_eq!(home, &served, "conversation {c}, turn {turn}"),
            }
            messages
                .push(serde_json::json!({"role": "assistant", "content": "An answer. ".repeat(8)}));
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
    for status in pool.status() {
        assert!(status.prefix_hit_rate > 0.5, "{status:?}");
    }
}

/// Calls with a reply held open on whichever of `a` and `b` is picked.
async fn held<S>(
    svc: &mut S,
    fleet: &Fleet,
    req: Request<Full<Bytes>>,
) -> (S::Response, &'static str, Sender<Bytes, io::Error>)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let (give_a, take_a) = tokio::sync::oneshot::channel();
    let (give_b, take_b) = tokio::sync::oneshot::channel();
    fleet.script.lock().clear();
    fleet.next("a", Reply::Stream(give_a));
    fleet.next("b", Reply::Stream(give_b));
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let served = *fleet.calls().last().unwrap();
    fleet.script.lock().clear();
    let tx = if served == "a" {
        take_a.await
    } else {
        take_b.await
    };
    (res, served, tx.unwrap())
}

#[tokio::test(start_paused = true)]
async fn cache_aware_weighs_the_prefix_against_the_load() {
    let prefix = "The same long document. ".repeat(40);
    for (strategy, expected) in [
        // In balance (a few thousand tokens in flight, under the default
        // 131,072 spread): every request follows the prefix to `a`.
        (Strategy::cache_aware(), ["a", "a", "a", "a", "a", "a"]),
        // A spread of 100 tokens is already out of balance: the load wins
        // and the requests alternate.
        (
            Strategy::CacheAware(CacheAware::new().balance(100, 1.5)),
            ["a", "b", "a", "b", "a", "b"],
        ),
    ] {
        let fleet = Fleet::default();
        let pool = pool(strategy, &["a", "b"], 64);
        let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
        let mut open = Vec::new();
        for i in 0..6 {
            open.push(held(&mut svc, &fleet, chat(&format!("{prefix} {i}"))).await);
        }
        let served: Vec<_> = open.iter().map(|(_, served, _)| *served).collect();
        assert_eq!(served, expected, "{strategy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn least_loaded_avoids_the_endpoint_with_tokens_in_flight() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::LeastLoaded, &["a", "b"], 64);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    // A long request held open on whichever endpoint it lands.
    let (give, take) = tokio::sync::oneshot::channel();
    let (give_b, take_b) = tokio::sync::oneshot::channel();
    fleet.next("a", Reply::Stream(give));
    fleet.next("b", Reply::Stream(give_b));
    let long = "many words ".repeat(2_000);
    let held = svc.ready().await.unwrap().call(chat(&long)).await.unwrap();
    let busy = fleet.calls()[0];
    let _sender = if busy == "a" {
        take.await.ok()
    } else {
        take_b.await.ok()
    };
    fleet.script.lock().clear();
    for _ in 0..20 {
        drop(
            svc.ready()
                .await
                .unwrap()
                .call(chat("short"))
                .await
                .unwrap(),
        );
    }
    assert!(
        fleet.calls()[1..].iter().all(|c| *c != busy),
        "{:?}",
        fleet.calls()
    );
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_is_refused_before_any_pick() {
    let fleet = Fleet::default();
    let pool = Pool::builder("model")
        .endpoint(Endpoint::new("a", "a"))
        .max_body(1_000)
        .build()
        .unwrap();
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&"x".repeat(2_000)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(fleet.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_request_carries_its_own_pool_or_passes_through() {
    let fleet = Fleet::default();
    let mut svc = BalanceLayer::<&'static str>::per_request().layer(fleet.service());
    let pool = pool(Strategy::RoundRobin, &["b"], 8);
    let mut req = chat("x");
    req.extensions_mut().insert(pool.clone());
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(text(res).await, "b");
    // Without a pool, nothing is picked: this inner service refuses that.
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(chat("y"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no endpoint picked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_exceed_an_endpoint_permits() {
    let peak: Arc<Mutex<HashMap<usize, (u32, u32)>>> = Arc::default();
    let peak_in = Arc::clone(&peak);
    let inner = service_fn(move |req: Request<Full<Bytes>>| {
        let peak = Arc::clone(&peak_in);
        async move {
            let endpoint = *req.extensions().get::<Endpoint<usize>>().unwrap().target();
            {
                let mut peak = peak.lock();
                let (now, max) = peak.entry(endpoint).or_default();
                *now += 1;
                *max = (*max).max(*now);
            }
            tokio::task::yield_now().await;
            peak.lock().get_mut(&endpoint).unwrap().0 -= 1;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(["a", "b"][endpoint]))))
        }
    });
    let pool = Pool::builder("model")
        .strategy(Strategy::LeastLoaded)
        .endpoints([
            Endpoint::new("a", 0usize).max_concurrency(3),
            Endpoint::new("b", 1usize).max_concurrency(5),
        ])
        .build()
        .unwrap();
    let svc = BalanceLayer::new(pool.clone()).layer(inner);
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let res = svc.oneshot(chat(&format!("request {i}"))).await.unwrap();
                text(res).await
            })
        })
        .collect();
    for task in tasks {
        let served = task.await.unwrap();
        assert!(served == "a" || served == "b");
    }
    let peak = peak.lock();
    assert!(peak[&0].1 <= 3 && peak[&1].1 <= 5, "{peak:?}");
    assert!(pool.status().iter().all(|e| e.in_flight == 0));
    let requests: u64 = pool.status().iter().map(|e| e.requests).sum();
    assert_eq!(requests, 400);
}

#[tokio::test(start_paused = true)]
async fn a_sticky_key_keeps_its_endpoint_while_the_load_allows() {
    let fleet = Fleet::default();
    let pool = Pool::builder("model")
        .strategy(Strategy::RoundRobin)
        .endpoints([
            Endpoint::new("a", "a"),
            Endpoint::new("b", "b"),
            Endpoint::new("c", "c"),
        ])
        .sticky(tower_ai_core::key::Header::new(
            http::HeaderName::from_static("x-session-id"),
        ))
        .build()
        .unwrap();
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    let with = |session: &str| {
        let mut req = chat("x");
        req.headers_mut()
            .insert("x-session-id", session.parse().unwrap());
        req
    };
    let mut served = Vec::new();
    for session in ["s1", "s2", "s1", "s2", "s1", "s3"] {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(with(session))
            .await
            .unwrap();
        served.push(text(res).await);
    }
    // Round robin places each new session; a known one keeps its endpoint.
    assert_eq!(served, ["a", "b", "a", "b", "a", "c"]);
    // Without a key, round robin as usual.
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_ne!(text(res).await, "");

    // An endpoint cooling down loses its sessions to the next pick, and the
    // session follows.
    fleet.next("a", Reply::Status(503, Some("30")));
    let res = svc.ready().await.unwrap().call(with("s1")).await.unwrap();
    let moved = text(res).await;
    assert_ne!(moved, "a");
    let res = svc.ready().await.unwrap().call(with("s1")).await.unwrap();
    assert_eq!(text(res).await, moved);
}

#[tokio::test(start_paused = true)]
async fn what_an_endpoint_reports_of_its_own_load_counts() {
    let fleet = Fleet::default();
    let pool = pool(Strategy::LeastLoaded, &["a", "b"], 64);
    let mut svc = BalanceLayer::new(pool.clone()).layer(fleet.service());
    let signals = |text: &str| tower_ai_balance::signals::Signals::parse(text);

    // `a` has its own queue (other clients'): everything goes to `b`.
    assert!(pool.report("a", signals("vllm:num_requests_waiting 40\n")));
    for _ in 0..10 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    assert!(
        fleet.calls().iter().all(|c| *c == "b"),
        "{:?}",
        fleet.calls()
    );

    // `b`'s KV cache is full: it has no room, whatever `a`'s queue.
    assert!(pool.report("b", signals("vllm:gpu_cache_usage_perc 0.99\n")));
    let res = svc.ready().await.unwrap().call(chat("x")).await.unwrap();
    assert_eq!(text(res).await, "a");
    let status = pool.status();
    assert_eq!(status[0].reported_waiting, 40);
    assert!(status[1].kv_usage.is_some_and(|kv| kv > 0.98));

    // Reports that can't be read any more count for nothing.
    assert!(pool.report("a", None));
    assert!(pool.report("b", None));
    assert!(!pool.report("nope", None));
    for _ in 0..10 {
        drop(svc.ready().await.unwrap().call(chat("x")).await.unwrap());
    }
    let recent = &fleet.calls()[11..];
    assert!(recent.contains(&"a") && recent.contains(&"b"), "{recent:?}");
}
