//! What the cache's socket-level suites share: replicas (the cache in front
//! of `test_support`'s proxy to the mock LLM), a client, and what a client
//! saw of one answer.
#![allow(dead_code, unreachable_pub)]

use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
pub use test_support::chat::body as chat;
use test_support::proxy::{self, Server};
use test_support::sse;
use tower_ai_cache::{CacheHandle, CacheLayer};

/// One replica: the cache in front of the proxy, served on a port.
pub struct Replica {
    pub handle: CacheHandle,
    server: Server,
}

impl Replica {
    pub async fn start(layer: CacheLayer, upstream: &str) -> Self {
        let handle = layer.handle();
        let server = proxy::start(layer, upstream).await;
        Self { handle, server }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("a client")
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

    /// The data of each event, when the body is an event stream.
    pub fn events(&self) -> Vec<String> {
        sse::data(&self.body)
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
    let mut reader = sse::SseReader::new(res);
    reader.read_to_end().await;
    Seen {
        status,
        cache_status,
        age,
        body: Bytes::copy_from_slice(reader.raw()),
        head_at,
        first_chunk_at: reader.first_chunk_at(),
        end_at: Instant::now(),
        broken: reader.broken(),
    }
}
