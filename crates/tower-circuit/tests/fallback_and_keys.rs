//! Refusals, fallbacks and keyed breakers.

mod common;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{BoxError, Plan, Seen, Upstream, call, secs};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt, service_fn};
use tower_ai_core::body::ResponseBody;
use tower_circuit::key::RequestHead;
use tower_circuit::{
    ByExtension, CircuitBreakerLayer, FallbackContext, FallbackReason, State, Window, key_fn,
};

type Answer = ResponseBody<common::TestBody>;

fn cache(
    hits: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Plan>,
    Response = Response<Answer>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<Plan>| {
        let hits = Arc::clone(&hits);
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let ctx = req.extensions().get::<FallbackContext>().cloned();
            let Some(ctx) = ctx else {
                return Ok::<_, BoxError>(Response::new(Answer::full("no context")));
            };
            let text = match ctx.reason() {
                FallbackReason::Refused => format!(
                    "cached ({}, retry in {} s)",
                    ctx.state(),
                    ctx.retry_after().map_or(0, |d| d.as_secs())
                ),
                FallbackReason::CallFailed => "cached after a failure".to_owned(),
                _ => "cached".to_owned(),
            };
            Ok(Response::new(Answer::full(text)))
        }
    })
}

async fn text<B: http_body::Body>(res: Response<B>) -> String {
    match res.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => "<error>".to_owned(),
    }
}

#[tokio::test(start_paused = true)]
async fn refusal_is_problem_json_with_retry_after() {
    let layer = CircuitBreakerLayer::builder()
        .name("refusal")
        .window(Window::consecutive(1))
        .open_wait(secs(30))
        .build()
        .unwrap();
    let svc = layer.layer(Upstream::default());
    call(&mut svc.clone(), Plan::status(500)).await;
    let res = svc.clone().oneshot(Request::new(Plan::ok())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "30");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(doc["status"], 503);
    assert_eq!(doc["circuit"], "refusal");
    assert_eq!(doc["state"], "open");

    // A gRPC caller gets a trailers-only UNAVAILABLE.
    let mut req = Request::new(Plan::ok());
    req.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["retry-after"], "30");
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_refused_calls() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder()
        .name("fallback")
        .window(Window::consecutive(1))
        .open_wait(secs(30))
        .fallback(cache(Arc::clone(&hits)))
        .build()
        .unwrap();
    let upstream = Upstream::default();
    let svc = layer.layer(upstream.clone());

    // A failure while closed goes back to the client as it is.
    let res = svc
        .clone()
        .oneshot(Request::new(Plan::status(500)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!res.body().is_fallback());
    drop(res);
    // Open: the fallback answers, the upstream is not called.
    let res = svc.clone().oneshot(Request::new(Plan::ok())).await.unwrap();
    assert!(res.body().is_fallback());
    assert_eq!(text(res).await, "cached (open, retry in 30 s)");
    assert_eq!((upstream.calls(), hits.load(Ordering::SeqCst)), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_failure_fallback_answers_failed_calls_too() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder()
        .name("on-failure")
        .window(Window::consecutive(3))
        .fallback_on_failure(cache(Arc::clone(&hits)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let svc = layer.layer(upstream.clone());

    let res = svc.clone().oneshot(Request::new(Plan::ok())).await.unwrap();
    assert_eq!(text(res).await, "ok");
    let res = svc
        .clone()
        .oneshot(Request::new(Plan::status(502)))
        .await
        .unwrap();
    assert_eq!(text(res).await, "cached after a failure");
    let res = svc
        .clone()
        .oneshot(Request::new(Plan::error()))
        .await
        .unwrap();
    assert_eq!(text(res).await, "cached after a failure");
    // The failures still count.
    assert_eq!(handle.get("on-failure").unwrap().totals.failures, 2);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let _ = svc.oneshot(Request::new(Plan::status(500))).await.unwrap();
    assert_eq!(handle.state("on-failure"), Some(State::Open));
}

#[derive(Clone)]
struct Model(&'static str);

impl AsRef<str> for Model {
    fn as_ref(&self) -> &str {
        self.0
    }
}

fn for_model(model: &'static str, plan: Plan) -> Request<Plan> {
    let mut req = Request::new(plan);
    req.extensions_mut().insert(Model(model));
    req
}

#[tokio::test(start_paused = true)]
async fn one_breaker_per_key() {
    let layer = CircuitBreakerLayer::builder()
        .name("models")
        .keyed_by(ByExtension::<Model>::new())
        .window(Window::consecutive(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let svc = layer.layer(upstream.clone());

    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(for_model("a", Plan::status(500)))
            .await
            .unwrap();
        drop(res);
    }
    assert_eq!(handle.state("a"), Some(State::Open));
    let res = svc
        .clone()
        .oneshot(for_model("a", Plan::ok()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Another model is unaffected.
    let res = svc
        .clone()
        .oneshot(for_model("b", Plan::ok()))
        .await
        .unwrap();
    assert_eq!(text(res).await, "ok");
    assert_eq!(handle.state("b"), Some(State::Closed));
    // No key: no breaker.
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(Plan::status(500)))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let snapshot = handle.snapshot();
    let keys: Vec<_> = snapshot.iter().map(|s| s.key.clone()).collect();
    assert_eq!(keys, [Some("a".to_owned()), Some("b".to_owned())]);
    // A model can be forced open before its first call.
    handle.force_open("c").unwrap();
    let res = svc.oneshot(for_model("c", Plan::ok())).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let json = serde_json::to_value(handle.snapshot()).unwrap();
    assert_eq!(json[0]["state"], "open");
    assert_eq!(json[2]["state"], "forced_open");
    assert_eq!(json[2]["key"], "c");
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_bounded() {
    let layer = CircuitBreakerLayer::builder()
        .name("bounded")
        .keyed_by(key_fn(|req: &RequestHead<'_>| {
            req.headers()
                .get("x-key")
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed)
        }))
        .max_breakers(8)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Upstream::default());
    for i in 0..1_000 {
        let mut req = Request::new(Plan::ok());
        req.headers_mut().insert("x-key", i.into());
        let res = svc.clone().oneshot(req).await.unwrap();
        drop(res.into_body().collect().await);
    }
    assert_eq!(handle.snapshot().len(), 8);
}

#[tokio::test]
async fn infallible_services_compose() {
    // An axum-style infallible service keeps its error type.
    let svc = CircuitBreakerLayer::new().layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("hi"))))
    }));
    let res: Result<_, Infallible> = svc.oneshot(Request::new(())).await;
    let res = res.unwrap();
    assert_eq!(text(res).await, "hi");
    let _ = Seen::Error;
}
