//! Streams judged at the end of the body, over a real socket, against the
//! mock LLM upstream: a stream that breaks after its `200` or carries an
//! in-band error is a failure, one the client abandons counts as neither,
//! and an open circuit stops the calls from reaching the upstream.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mock_llm::{Fault, MockHandle};
use test_support::{chat, mock_llm};
use tower::{Layer, ServiceExt, service_fn};
use tower_circuit::{CircuitBreakerLayer, CircuitHandle, CircuitSnapshot, State, Window};

async fn mock() -> MockHandle {
    mock_llm(Duration::from_millis(5)).await
}

fn request(base: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = chat::request("Tell me about circuit breakers")
        .model("mock-small")
        .stream(stream);
    Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn totals(handle: &CircuitHandle) -> (u64, u64, u64, u64) {
    let s: CircuitSnapshot = handle.get("llm").unwrap();
    (
        s.totals.successes,
        s.totals.failures,
        s.totals.ignored,
        s.totals.refused,
    )
}

#[tokio::test]
async fn streams_are_judged_at_their_end() {
    let mock = mock().await;
    let base = mock.base_url();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let layer = CircuitBreakerLayer::builder()
        .name("llm")
        .window(Window::count(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(move |req| client.request(req)));

    // A complete stream, ending with `data: [DONE]`: a success.
    let res = svc.clone().oneshot(request(&base, true)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(totals(&handle), (0, 0, 0, 0), "not judged at the head");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(totals(&handle), (1, 0, 0, 0));

    // A stream that breaks after its 200: a failure.
    mock.set_fault(Fault {
        break_after_tokens: Some(3),
        ..Fault::default()
    });
    let res = svc.clone().oneshot(request(&base, true)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.into_body().collect().await.is_err());
    assert_eq!(totals(&handle), (1, 1, 0, 0));

    // An in-band error event after a 200, and a clean end: a failure.
    mock.set_fault(Fault {
        error_event: true,
        ..Fault::default()
    });
    let res = svc.clone().oneshot(request(&base, true)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    assert_eq!(totals(&handle), (1, 2, 0, 0));

    // The client hangs up after the first chunk: neither.
    mock.set_fault(Fault::none());
    let res = svc.clone().oneshot(request(&base, true)).await.unwrap();
    let mut body = res.into_body();
    assert!(body.frame().await.is_some());
    drop(body);
    assert_eq!(totals(&handle), (1, 2, 1, 0));

    // A plain JSON answer: a success at its end.
    let res = svc.clone().oneshot(request(&base, false)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap();
    assert_eq!(totals(&handle), (2, 2, 1, 0));

    // The mock saw the abandoned stream as cancelled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = mock.stats();
    assert_eq!(stats.streams_cancelled, 1);
    assert_eq!(stats.streams_broken, 1);
    assert_eq!(stats.streams_errored, 1);
}

#[tokio::test]
async fn an_open_circuit_stops_calling_the_upstream_and_recovers() {
    let mock = mock().await;
    let base = mock.base_url();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let layer = CircuitBreakerLayer::builder()
        .name("llm")
        .window(Window::count(20))
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .open_wait(Duration::from_millis(300))
        .half_open_trials(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(move |req| client.request(req)));

    mock.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    for _ in 0..10 {
        let res = svc.clone().oneshot(request(&base, false)).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(handle.state("llm"), Some(State::Open));
    let reached = mock.stats().requests;
    assert_eq!(reached, 10);
    let mut times = Vec::new();
    for _ in 0..51 {
        let started = std::time::Instant::now();
        let res = svc.clone().oneshot(request(&base, true)).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        times.push(started.elapsed());
    }
    times.sort();
    assert!(
        times[25] < Duration::from_millis(5),
        "median {:?}",
        times[25]
    );
    assert_eq!(
        mock.stats().requests,
        reached,
        "the upstream saw none of them"
    );

    // Fault cleared, wait over: three good trials close it.
    mock.set_fault(Fault::none());
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..3 {
        let res = svc.clone().oneshot(request(&base, true)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(handle.state("llm"), Some(State::Closed));
}
