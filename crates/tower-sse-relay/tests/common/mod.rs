//! What the integration tests share: a proxy to the mock LLM, an axum app
//! with the relay in front of it, an SSE client, and the store suite.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod suite;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::post_service;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service};
use tower_sse_relay::sse::Decoder;
use tower_sse_relay::{SseRelayLayer, StreamStore};

/// Proxies requests to an upstream, body frame by body frame, as the
/// gateway does (hyper-util's pooled client).
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    base: String,
}

impl Proxy {
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: base.trim_end_matches('/').to_owned(),
        }
    }
}

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{}{}", self.base, path)
            .parse::<Uri>()
            .expect("a valid upstream URI");
        parts.headers.remove(http::header::HOST);
        let req = Request::from_parts(parts, body);
        Box::pin(async move {
            match client.request(req).await {
                Ok(res) => Ok(res.map(Body::new)),
                Err(error) => {
                    let mut res = Response::new(Body::from(format!("upstream error: {error}")));
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok(res)
                }
            }
        })
    }
}

/// An axum app on a loopback port: the relay in front of a proxy to
/// `upstream` on the chat route, and the streams endpoint.
pub struct App {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve<St: StreamStore>(layer: &SseRelayLayer<St>, upstream: &str) -> App {
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post_service(layer.layer(Proxy::new(upstream))),
        )
        .route_service("/v1/streams/{id}", layer.streams());
    serve_router(router).await
}

pub async fn serve_router(router: Router) -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    App { addr, task }
}

/// A streamed chat request's body.
pub fn chat(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "mock-1",
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "stream_options": {"include_usage": true},
    }))
    .expect("JSON")
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
        .body(chat(prompt))
        .send()
        .await
        .expect("the relay answers")
}

/// One event as a client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub id: String,
    pub seq: u64,
    pub data: String,
    pub at: Instant,
}

/// Reads a `text/event-stream` response event by event, and counts the
/// heartbeat comments it passes.
pub struct SseReader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: Decoder,
    /// The raw text read so far (for the comment count).
    raw: Vec<u8>,
    pub ended: bool,
}

impl SseReader {
    pub fn new(res: reqwest::Response) -> Self {
        Self {
            body: Box::pin(res.bytes_stream()),
            decoder: Decoder::new(),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// The next event; `None` at the end of the body (or on a body error).
    pub async fn next(&mut self) -> Option<Got> {
        loop {
            if let Some(event) = self.decoder.next_event() {
                let event = event.expect("a decodable event");
                let id = event.id().unwrap_or_default().to_owned();
                let seq = id
                    .rsplit_once('-')
                    .and_then(|(_, s)| s.parse().ok())
                    .unwrap_or(0);
                return Some(Got {
                    id,
                    seq,
                    data: event.data().to_owned(),
                    at: Instant::now(),
                });
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(Duration::from_secs(20), self.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.decoder.push(chunk);
                }
                Ok(Some(Err(_)) | None) => {
                    self.ended = true;
                    self.decoder.finish();
                }
                Err(_) => panic!("no event for 20 s"),
            }
        }
    }

    /// Every event up to the end.
    pub async fn rest(&mut self) -> Vec<Got> {
        let mut all = Vec::new();
        while let Some(got) = self.next().await {
            all.push(got);
        }
        all
    }

    /// How many comment lines with this text were read.
    pub fn comments(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.raw)
            .lines()
            .filter(|l| *l == format!(": {text}"))
            .count()
    }
}

/// The text tokens of an OpenAI chunk stream, concatenated.
pub fn content(events: &[Got]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Asserts that `events` are exactly events `first..` of one stream, each
/// once, in order, ending with `[DONE]`.
pub fn assert_exact(events: &[Got], stream: &str, first: u64) {
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

/// Polls `check` every 10 ms until it holds, for at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

pub fn stream_id(res: &reqwest::Response) -> String {
    res.headers()["x-stream-id"]
        .to_str()
        .expect("a stream id")
        .to_owned()
}
