//! What the cache's socket-level suites share: replicas (an axum app with a
//! `CacheLayer` in front of a small proxy to the mock LLM), a client, and
//! SSE helpers.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mock_llm::{Config, MockHandle, MockLlm};
use tokio::task::JoinHandle;
use tower::Service;
use tower_ai_cache::{CacheHandle, CacheLayer};

/// The mock upstream, answering each token after `token_delay`.
pub async fn mock(token_delay: Duration) -> MockHandle {
    MockLlm::spawn(
        "127.0.0.1:0",
        Config {
            token_delay,
            ..Config::default()
        },
    )
    .await
    .expect("the mock LLM starts")
}

/// Proxies every request to the upstream at `base`, streaming the answer
/// through frame by frame (the gateway's pattern, reduced).
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    authority: http::uri::Authority,
}

impl Proxy {
    pub fn new(base: &str) -> Self {
        let uri: Uri = base.parse().expect("a valid upstream URL");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            authority: uri.authority().cloned().expect("a host"),
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
        let authority = self.authority.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .unwrap_or_default();
            parts.headers.remove(header::HOST);
            parts.version = http::Version::HTTP_11;
            match client.request(Request::from_parts(parts, body)).await {
                Ok(res) => Ok(res.map(Body::new)),
                Err(_) => Ok(Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::from("upstream unreachable"))
                    .unwrap_or_default()),
            }
        })
    }
}

/// One replica: the cache in front of the proxy, served on a port.
pub struct Replica {
    pub addr: SocketAddr,
    pub handle: CacheHandle,
    task: JoinHandle<()>,
}

impl Replica {
    pub async fn start(layer: CacheLayer, upstream: &str) -> Self {
        let handle = layer.handle();
        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service(Proxy::new(upstream));
        let app = axum::Router::new().fallback_service(svc);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, handle, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("a client")
}

/// A chat request body.
pub fn chat(prompt: &str, stream: bool) -> String {
    serde_json::json!({
        "model": "mock-1",
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
}

/// What a client saw of one answer.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: StatusCode,
    pub cache_status: String,
    pub age: Option<String>,
    pub body: Bytes,
    /// When the head arrived, the first body chunk, and the end.
    pub head_at: Instant,
    pub first_chunk_at: Option<Instant>,
    pub end_at: Instant,
    /// Whether the body failed midway.
    pub broken: bool,
}

impl Seen {
    pub fn is_hit(&self) -> bool {
        self.cache_status.contains("; hit")
    }

    pub fn collapsed(&self) -> bool {
        self.cache_status.contains("collapsed")
    }

    pub fn events(&self) -> Vec<String> {
        events(&self.body)
    }
}

/// Posts a chat request as `tenant` and reads the whole answer.
pub async fn ask(client: &reqwest::Client, url: &str, tenant: &str, body: String) -> Seen {
    let res = client
        .post(url)
        .header("authorization", format!("Bearer {tenant}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the request is answered");
    read(res).await
}

pub async fn read(res: reqwest::Response) -> Seen {
    let head_at = Instant::now();
    let status = res.status();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cache_status = header("cache-status").unwrap_or_default();
    let age = header("age");
    let mut stream = res.bytes_stream();
    let mut body = Vec::new();
    let mut first_chunk_at = None;
    let mut broken = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if first_chunk_at.is_none() && !chunk.is_empty() {
                    first_chunk_at = Some(Instant::now());
                }
                body.extend_from_slice(&chunk);
            }
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    Seen {
        status,
        cache_status,
        age,
        body: Bytes::from(body),
        head_at,
        first_chunk_at,
        end_at: Instant::now(),
        broken,
    }
}

/// The data of each event in an SSE body.
pub fn events(body: &[u8]) -> Vec<String> {
    let mut decoder = tower_ai_core::sse::Decoder::new();
    decoder.push_slice(body);
    decoder.finish();
    let mut out = Vec::new();
    while let Some(event) = decoder.next_event() {
        if let Ok(event) = event {
            out.push(event.data().to_owned());
        }
    }
    out
}

/// The content of a JSON chat completion.
pub fn content(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/choices/0/message/content")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Polls `check` until it holds or `within` passes; the time it took.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
