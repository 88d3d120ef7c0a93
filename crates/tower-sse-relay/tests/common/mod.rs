//! What the integration tests share: an axum app with the relay in front of
//! `test_support`'s proxy to the upstream, a client, and the store suite.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod suite;

use axum::Router;
use axum::routing::post_service;
pub use test_support::proxy::Server as App;
use test_support::proxy::{self, Forward};
use test_support::sse::SseEvent;
use tower::Layer;
use tower_sse_relay::{SseRelayLayer, StreamStore};

/// An axum app on a loopback port: the relay in front of a proxy to
/// `upstream` on the chat route, and the streams endpoint.
pub async fn serve<St: StreamStore>(layer: &SseRelayLayer<St>, upstream: &str) -> App {
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post_service(layer.layer(Forward::new(upstream))),
        )
        .route_service("/v1/streams/{id}", layer.streams());
    proxy::serve(router).await
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client")
}

pub async fn post_chat(client: &reqwest::Client, app: &App, prompt: &str) -> reqwest::Response {
    client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(test_support::chat::streamed(prompt))
        .send()
        .await
        .expect("the relay answers")
}

/// Asserts that `events` are exactly events `first..` of one stream, each
/// once, in order, ending with `[DONE]`.
pub fn assert_exact(events: &[SseEvent], stream: &str, first: u64) {
    for (i, event) in events.iter().enumerate() {
        let seq = first + i as u64;
        assert_eq!(
            event.id,
            format!("{stream}-{seq}"),
            "event {i} of {events:?}"
        );
    }
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
}

pub fn stream_id(res: &reqwest::Response) -> String {
    res.headers()["x-stream-id"]
        .to_str()
        .expect("a stream id")
        .to_owned()
}
