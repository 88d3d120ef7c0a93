//! What the rate limiter's test suites share: a service behind the layer,
//! and requests from chosen clients.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_ratelimit::{Policy, Rate, RateLimitBody, RateLimitLayer};

pub type Svc = BoxCloneService<Request<()>, Response<RateLimitBody<Full<Bytes>>>, Infallible>;

/// A hello-world service behind `layer`.
pub fn service(layer: RateLimitLayer<impl tower_ai_core::key::KeyExtractor>) -> Svc {
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }),
    )
}

/// A request from the peer `192.0.2.<client>`.
pub fn from(client: u8) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(SocketAddr::from(([192, 0, 2, client], 40_000)));
    req
}

/// Sends `req` and returns the response.
pub async fn send(svc: &mut Svc, req: Request<()>) -> Response<RateLimitBody<Full<Bytes>>> {
    match svc.ready().await {
        Ok(svc) => match svc.call(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        },
        Err(never) => match never {},
    }
}

/// Sends a request from `client` and says whether it was admitted.
pub async fn admitted(svc: &mut Svc, client: u8) -> bool {
    let res = send(svc, from(client)).await;
    match res.status() {
        StatusCode::OK => true,
        StatusCode::TOO_MANY_REQUESTS => false,
        other => panic!("unexpected status {other}"),
    }
}

/// Sends `requests` requests from client 1 at once, spread round-robin over
/// `instances`, and counts the admitted ones.
pub async fn admitted_concurrently(instances: &[Svc], requests: usize) -> usize {
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let mut svc = instances[i % instances.len()].clone();
            tokio::spawn(async move { admitted(&mut svc, 1).await })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += usize::from(t.await.expect("task"));
    }
    n
}

/// The body of a response as JSON.
pub async fn json(res: Response<RateLimitBody<Full<Bytes>>>) -> serde_json::Value {
    let bytes = match res.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// One policy of each algorithm, with capacity `capacity`, a refill too
/// slow to matter within a test (one per hour), or a one-hour window.
pub fn every_algorithm(capacity: u64) -> Vec<Policy> {
    let hour = Duration::from_secs(3_600);
    vec![
        Policy::token_bucket(capacity, Rate::every(hour)).named("tb"),
        Policy::leaky_bucket(capacity, Rate::every(hour)).named("lb"),
        Policy::fixed_window(capacity, hour).named("fw"),
        Policy::sliding_log(capacity, hour).named("sl"),
        Policy::sliding_window(capacity, hour).named("sw"),
    ]
}

/// A scripted sequence: wait this long, then expect the request from
/// client 1 to be admitted or not.
pub type Script = &'static [(u64, bool)];

/// Scripts every backend must follow. Timings leave at least 100 ms of
/// slack around every boundary, so a Redis backend on real time follows
/// them too. Window scripts start just after a window boundary.
pub fn scripts() -> Vec<(Policy, Script, Option<Duration>)> {
    let ms = Duration::from_millis;
    vec![
        (
            Policy::token_bucket(3, Rate::per_second(2.0)).named("tb"),
            &[
                (0, true),
                (0, true),
                (0, true),
                (0, false),
                (600, true),
                (0, false),
                (1100, true),
                (0, true),
                (0, false),
            ],
            None,
        ),
        (
            Policy::leaky_bucket(3, Rate::per_second(2.0)).named("lb"),
            &[
                (0, true),
                (0, true),
                (0, true),
                (0, false),
                (600, true),
                (0, false),
                (1100, true),
                (0, true),
                (0, false),
            ],
            None,
        ),
        (
            Policy::fixed_window(3, ms(2_000)).named("fw"),
            &[
                (0, true),
                (0, true),
                (0, true),
                (0, false),
                (1_000, false),
                (1_000, true),
                (0, true),
                (0, true),
                (0, false),
            ],
            Some(ms(2_000)),
        ),
        (
            Policy::sliding_log(3, ms(1_000)).named("sl"),
            &[
                (0, true),
                (300, true),
                (300, true),
                (100, false),
                (400, true),
                (0, false),
                (300, true),
            ],
            None,
        ),
        (
            // Four in the first window; 1.7 s into the next one the first
            // weighs 15%: three more fit.
            Policy::sliding_window(4, ms(2_000)).named("sw"),
            &[
                (0, true),
                (0, true),
                (0, true),
                (0, true),
                (0, false),
                (3_700, true),
                (0, true),
                (0, true),
                (0, false),
            ],
            Some(ms(2_000)),
        ),
    ]
}
