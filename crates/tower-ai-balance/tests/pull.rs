//! Pull mode over real Redis, standalone and Cluster: pullers claim only
//! what their slots (and starting budget) allow, a request whose puller dies is finished by
//! another with the client seeing one answer, a heartbeating puller keeps
//! its request, and failures end a body with an error, never a clean end.
#![cfg(feature = "redis")]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::StreamsInterface;
use fred::types::Value;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::{Service, service_fn};
use tower_ai_balance::pull::{PullError, PullQueue, Puller};
use tower_ai_core::redis::{Degrade, DegradeConfig};

const MODEL: &str = "model";

/// A queue for `MODEL` under `prefix`, recovering requests idle for
/// `claim_idle`, with a Redis timeout generous enough for a loaded test
/// machine.
fn queue(client: &Client, prefix: &str, claim_idle: Duration) -> PullQueue {
    PullQueue::builder(client.clone(), MODEL)
        .prefix(prefix)
        .degrade(Degrade::new(
            "pull-test",
            DegradeConfig::default().timeout(Duration::from_millis(500)),
        ))
        .claim_idle(claim_idle)
        .heartbeat(Duration::from_millis(50))
        .reply_ttl(Duration::from_secs(30))
        .build()
}

fn queue_key(prefix: &str) -> String {
    format!("{prefix}:balance:{{{MODEL}}}:queue")
}

fn request(body: impl Into<Bytes>) -> Request<Bytes> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.into())
        .expect("a request")
}

/// Counts a service's calls and the answers it has in flight (from the
/// call until its body is dropped), with the most at once.
#[derive(Clone, Default)]
struct Meter {
    calls: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Meter {
    fn enter(&self) -> InFlight {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(&self.now))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A channel body that counts as in flight until dropped.
struct Counted {
    inner: Channel<Bytes, std::io::Error>,
    _in_flight: InFlight,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// The request's body cut in three.
fn thirds(body: &Bytes) -> [Bytes; 3] {
    let third = body.len().div_ceil(3);
    let a = third.min(body.len());
    let b = (2 * third).min(body.len());
    [body.slice(..a), body.slice(a..b), body.slice(b..)]
}

/// A counted answer whose chunks `feed` sends.
fn answer<F, Fut>(meter: &Meter, feed: F) -> Response<Counted>
where
    F: FnOnce(Sender<Bytes, std::io::Error>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let in_flight = meter.enter();
    let (tx, body) = Channel::new(1);
    tokio::spawn(feed(tx));
    Response::builder()
        .header("x-served", "yes")
        .body(Counted {
            inner: body,
            _in_flight: in_flight,
        })
        .expect("a response")
}

/// Echoes the request's body in three chunks, a few milliseconds apart.
fn echo(
    meter: Meter,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Counted>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Request<Full<Bytes>>| {
        let meter = meter.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            Ok(answer(&meter, move |mut tx| async move {
                for piece in thirds(&body) {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    if tx.send_data(piece).await.is_err() {
                        return;
                    }
                }
            }))
        }
    })
}

/// The whole answer: status, `x-served`, body (or the body's error).
/// What [`read`] gets: the status, the `x-served` header and the body.
type Read = Result<(u16, String, Result<Bytes, PullError>), PullError>;

/// [`read`] in a task of its own.
fn spawn_read(queue: &PullQueue, body: impl Into<String>) -> tokio::task::JoinHandle<Read> {
    let queue = queue.clone();
    let body = body.into();
    tokio::spawn(async move { read(&queue, body).await })
}

async fn read(queue: &PullQueue, body: String) -> Read {
    let ticket = queue.submit(request(body)).await?;
    let res = ticket.response().await?;
    let served = res
        .headers()
        .get("x-served")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map(|c| c.to_bytes());
    Ok((status, served, body))
}

async fn xlen(client: &Client, key: &str) -> u64 {
    client.xlen::<u64, _>(key).await.expect("XLEN")
}

/// How many entries the group has delivered and not acknowledged (none
/// before the puller made the group).
async fn pending(client: &Client, key: &str) -> u64 {
    let summary: Value = match client.xpending(key, "pullers", ()).await {
        Err(e) if e.details().starts_with("NOGROUP") => return 0,
        summary => summary.expect("XPENDING"),
    };
    summary
        .into_array()
        .first()
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

async fn many_requests_get_their_own_answers(client: Client, prefix: &str) {
    let queue = queue(&client, prefix, Duration::from_secs(10));
    let meters = [Meter::default(), Meter::default()];
    let _pullers: Vec<_> = meters
        .iter()
        .enumerate()
        .map(|(i, meter)| {
            Puller::new(queue.clone(), format!("p{i}"), 2, echo(meter.clone())).spawn()
        })
        .collect();

    let mut readers = tokio::task::JoinSet::new();
    for i in 0..40 {
        let queue = queue.clone();
        readers.spawn(async move {
            let body =
                format!("{{\"request\":{i},\"text\":\"answer number {i}, in three parts\"}}");
            (body.clone(), read(&queue, body).await)
        });
    }
    let answers = tokio::time::timeout(Duration::from_secs(10), readers.join_all())
        .await
        .expect("every answer within 10 s");
    for (sent, got) in answers {
        let (status, served, body) = got.expect("an answer");
        assert_eq!((status, served.as_str()), (200, "yes"));
        assert_eq!(body.expect("a complete body"), sent);
    }
    let most: Vec<usize> = meters
        .iter()
        .map(|m| m.max.load(Ordering::SeqCst))
        .collect();
    assert!(
        most.iter().all(|&m| m <= 2),
        "a puller ran more requests at once than its 2 slots: {most:?}"
    );
    assert!(most.contains(&2), "the slots were used: {most:?}");
    assert_eq!(
        meters[0].calls() + meters[1].calls(),
        40,
        "one call per request"
    );
    // Every request was acknowledged and deleted.
    let key = queue_key(prefix);
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            xlen(&client, &key).await == 0
        })
        .await
        .is_some(),
        "the queue empties"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_two_pullers_standalone() {
    let client = test_support::shared::redis().client().await;
    many_requests_get_their_own_answers(client, &test_support::shared::prefix("pull-many")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_two_pullers_cluster() {
    let client = test_support::shared::cluster().client().await;
    many_requests_get_their_own_answers(client, &test_support::shared::prefix("pull-many-c")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_claims_only_with_a_free_slot() {
    let client = test_support::shared::redis().client().await;
    let prefix = test_support::shared::prefix("pull-slots");
    let queue = queue(&client, &prefix, Duration::from_millis(300));
    let meter = Meter::default();
    let release = Arc::new(Notify::new());
    let service = {
        let (meter, release) = (meter.clone(), Arc::clone(&release));
        service_fn(move |req: Request<Full<Bytes>>| {
            let (meter, release) = (meter.clone(), Arc::clone(&release));
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                if body == "first" {
                    release.notified().await;
                }
                Ok::<_, Infallible>(answer(&meter, move |mut tx| async move {
                    let _ = tx.send_data(body).await;
                }))
            }
        })
    };
    let _puller = Puller::new(queue.clone(), "only", 1, service).spawn();

    let first = spawn_read(&queue, "first");
    // The service holds the first request before the second is submitted.
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            pending(&client, &queue_key(&prefix)).await == 1
        })
        .await
        .is_some(),
        "the first request is claimed"
    );
    let second = spawn_read(&queue, "second");
    let key = queue_key(&prefix);
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            xlen(&client, &key).await == 2
        })
        .await
        .is_some(),
        "the second request is enqueued"
    );
    // Several of the puller's read and recovery rounds (every 150 ms): it
    // must not take the second request without a free slot.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pending(&client, &key).await, 1, "one request claimed");
    assert_eq!(xlen(&client, &key).await, 2, "both still in the stream");
    assert_eq!(
        meter.calls(),
        0,
        "the first is still held before its answer"
    );

    release.notify_one();
    let first = first.await.expect("the task").expect("an answer");
    assert_eq!(first.2.expect("a body"), "first");
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second answer once the slot is free")
        .expect("the task")
        .expect("an answer");
    assert_eq!(second.2.expect("a body"), "second");
    assert_eq!(meter.calls(), 2);
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            xlen(&client, &key).await == 0
        })
        .await
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_with_a_starting_budget_waits_for_a_first_byte_not_for_a_slot() {
    let client = test_support::shared::redis().client().await;
    let prefix = test_support::shared::prefix("pull-starting");
    let queue = queue(&client, &prefix, Duration::from_millis(300));
    let meter = Meter::default();
    let (first_byte, finish) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let service = {
        let meter = meter.clone();
        let (first_byte, finish) = (Arc::clone(&first_byte), Arc::clone(&finish));
        service_fn(move |req: Request<Full<Bytes>>| {
            let meter = meter.clone();
            let (first_byte, finish) = (Arc::clone(&first_byte), Arc::clone(&finish));
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                // The head at once; the body when told (the first request).
                Ok::<_, Infallible>(answer(&meter, move |mut tx| async move {
                    if body == "first" {
                        first_byte.notified().await;
                        let _ = tx.send_data(Bytes::from_static(b"fir")).await;
                        finish.notified().await;
                        let _ = tx.send_data(Bytes::from_static(b"st")).await;
                    } else {
                        let _ = tx.send_data(body).await;
                    }
                }))
            }
        })
    };
    // Four slots, and a budget of one token: one request starting at once.
    let _puller = Puller::new(queue.clone(), "only", 4, service)
        .max_starting_tokens(1)
        .spawn();

    let first = spawn_read(&queue, "first");
    let key = queue_key(&prefix);
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async { meter.calls() == 1 })
            .await
            .is_some(),
        "the first request is called"
    );
    let second = spawn_read(&queue, "second");
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            xlen(&client, &key).await == 2
        })
        .await
        .is_some(),
        "the second request is enqueued"
    );
    // Several of the puller's read rounds: with free slots, it must still
    // leave the second request while the first has no byte of its answer.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pending(&client, &key).await, 1, "one request claimed");
    assert_eq!(meter.calls(), 1, "the second isn't called");

    // The first byte: the second is taken while the first still runs.
    first_byte.notify_one();
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second answer once the first one answers")
        .expect("the task")
        .expect("an answer");
    assert_eq!(second.2.expect("a body"), "second");
    assert!(!first.is_finished(), "the first still runs");

    finish.notify_one();
    let first = first.await.expect("the task").expect("an answer");
    assert_eq!(first.2.expect("a body"), "first");
    assert_eq!(meter.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_taken_beside_a_starting_one_is_sent_once_that_one_has_started() {
    let client = test_support::shared::redis().client().await;
    let prefix = test_support::shared::prefix("pull-fit");
    // Heartbeats far apart: the hold isn't cut short by its time limit.
    let queue = PullQueue::builder(client.clone(), MODEL)
        .prefix(&prefix)
        .claim_idle(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(10))
        .reply_ttl(Duration::from_secs(30))
        .build();
    let meter = Meter::default();
    let first_byte = Arc::new(Notify::new());
    let service = {
        let meter = meter.clone();
        let first_byte = Arc::clone(&first_byte);
        service_fn(move |req: Request<Full<Bytes>>| {
            let meter = meter.clone();
            let first_byte = Arc::clone(&first_byte);
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, Infallible>(answer(&meter, move |mut tx| async move {
                    if body == "short" {
                        first_byte.notified().await;
                    }
                    let _ = tx.send_data(body).await;
                }))
            }
        })
    };
    // A budget of 100 tokens: "short" (2 tokens) leaves room to take the
    // next request, whose 200 tokens don't fit beside it.
    let _puller = Puller::new(queue.clone(), "only", 4, service)
        .max_starting_tokens(100)
        .spawn();

    let short = spawn_read(&queue, "short");
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async { meter.calls() == 1 })
            .await
            .is_some(),
        "the short request is called"
    );
    let long_prompt = "x".repeat(800);
    let long = spawn_read(&queue, long_prompt.clone());
    let key = queue_key(&prefix);
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            pending(&client, &key).await == 2
        })
        .await
        .is_some(),
        "the long request is taken"
    );
    // Taken, but not sent while the short one has no first byte.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        meter.calls(),
        1,
        "the long request waits for the short one to start"
    );

    first_byte.notify_one();
    let long = tokio::time::timeout(Duration::from_secs(5), long)
        .await
        .expect("the long answer once the short one has started")
        .expect("the task")
        .expect("an answer");
    assert_eq!(long.2.expect("a body"), long_prompt.as_bytes());
    let short = short.await.expect("the task").expect("an answer");
    assert_eq!(short.2.expect("a body"), "short");
    assert_eq!(meter.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pullers_request_is_finished_by_another_without_a_duplicated_prefix() {
    let client = test_support::shared::redis().client().await;
    let prefix = test_support::shared::prefix("pull-kill");
    let queue = queue(&client, &prefix, Duration::from_millis(300));
    let meter = Meter::default();
    // The first call sends its first chunk and hangs; later calls answer
    // in full, the same way.
    let service = {
        let meter = meter.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            let meter = meter.clone();
            async move {
                let first_call = meter.calls() == 0;
                Ok::<_, Infallible>(answer(&meter, move |mut tx| async move {
                    for piece in ["alpha ", "beta ", "gamma"] {
                        if tx.send_data(Bytes::from(piece)).await.is_err() {
                            return;
                        }
                        if first_call {
                            std::future::pending::<()>().await;
                        }
                    }
                }))
            }
        })
    };
    let doomed = Puller::new(queue.clone(), "doomed", 2, service.clone()).spawn();

    let ticket = queue.submit(request("hello")).await.expect("submitted");
    let res = ticket.response().await.expect("the head");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = body
        .frame()
        .await
        .expect("a frame")
        .expect("data")
        .into_data()
        .expect("data");
    assert_eq!(first, "alpha ");

    // Killed mid-answer: another puller takes the request over once it has
    // been idle for claim_idle.
    doomed.abort();
    let started = Instant::now();
    let _rescuer = Puller::new(queue.clone(), "rescuer", 2, service).spawn();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the rest within 5 s")
        .expect("a complete body")
        .to_bytes();
    assert_eq!(rest, "beta gamma", "the client gets each byte once");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "taken over only after the claim idle time ({:?})",
        started.elapsed()
    );
    assert_eq!(meter.calls(), 2, "called once by each puller");
    let key = queue_key(&prefix);
    assert!(
        test_support::eventually_async(Duration::from_secs(5), || async {
            xlen(&client, &key).await == 0
        })
        .await
        .is_some(),
        "the request is acknowledged and deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_puller_keeps_its_long_request() {
    let client = test_support::shared::redis().client().await;
    let prefix = test_support::shared::prefix("pull-heartbeat");
    let queue = queue(&client, &prefix, Duration::from_millis(300));
    let meter = Meter::default();
    // Silent for five claim idle times, then the answer.
    let service = {
        let meter = meter.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            let meter = meter.clone();
            async move {
                let in_flight = meter.enter();
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                drop(in_flight);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
            }
        })
    };
    let _a = Puller::new(queue.clone(), "a", 2, service.clone()).spawn();
    let _b = Puller::new(queue.clone(), "b", 2, service).spawn();

    let started = Instant::now();
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), read(&queue, "x".into()))
        .await
        .expect("an answer within 5 s")
        .expect("an answer");
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    assert_eq!(status, 200);
    assert_eq!(body.expect("a complete body"), "done");
    assert_eq!(meter.calls(), 1, "never taken over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_failures_reach_the_client_as_errors() {
    let client = test_support::shared::redis().client().await;
    let prefix = test_support::shared::prefix("pull-errors");
    let queue = queue(&client, &prefix, Duration::from_secs(10));
    let meter = Meter::default();
    let service = {
        let meter = meter.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let meter = meter.clone();
            async move {
                let Ok(body) = req.into_body().collect().await;
                if body.to_bytes() == "refuse" {
                    return Err(std::io::Error::other("no capacity"));
                }
                Ok(answer(&meter, move |mut tx| async move {
                    let _ = tx.send_data(Bytes::from("partial")).await;
                    tx.abort(std::io::Error::other("stream cut"));
                }))
            }
        })
    };
    let _puller = Puller::new(queue.clone(), "p", 1, service).spawn();

    match read(&queue, "refuse".into()).await {
        Err(PullError::Upstream(reason)) => assert!(reason.contains("no capacity"), "{reason}"),
        other => panic!("expected the service's error, got {other:?}"),
    }

    let ticket = queue.submit(request("cut")).await.expect("submitted");
    let mut body = ticket.response().await.expect("the head").into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "partial");
    match body.frame().await {
        Some(Err(PullError::Upstream(reason))) => {
            assert!(reason.contains("stream cut"), "{reason}")
        }
        other => panic!("expected the body's error, got {other:?}"),
    }
    assert!(body.frame().await.is_none());
    assert_eq!(xlen(&client, &queue_key(&prefix)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_ends_the_body_with_an_error() {
    let mut server = test_support::RedisServer::start();
    let client = server.client().await;
    let queue = queue(&client, "pull-lost", Duration::from_millis(300));
    let meter = Meter::default();
    let service = {
        let meter = meter.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            let meter = meter.clone();
            async move {
                Ok::<_, Infallible>(answer(&meter, |mut tx| async move {
                    let _ = tx.send_data(Bytes::from("first")).await;
                    std::future::pending::<()>().await;
                }))
            }
        })
    };
    let _puller = Puller::new(queue.clone(), "p", 1, service).spawn();
    let ticket = queue.submit(request("x")).await.expect("submitted");
    let mut body = ticket.response().await.expect("the head").into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "first");

    server.stop();
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the body ends within 10 s");
    assert!(
        matches!(end, Some(Err(PullError::Redis(_)))),
        "an error, not a clean end: {end:?}"
    );
}
