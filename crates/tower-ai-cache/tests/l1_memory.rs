//! The L1 bound is memory: what the stored answers hold on the heap is
//! close to what the L1 counts for them (`l1_bytes`), for small answers
//! with many headers and for large ones. The process's heap is measured by
//! the allocator, so this test binary holds nothing else.

use std::alloc::System;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::{Service, ServiceExt};
use tower_ai_cache::CacheLayer;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The headers a provider sends with an answer.
const PROVIDER_HEADERS: [(&str, &str); 12] = [
    ("content-type", "application/json"),
    ("date", "Wed, 02 Dec 2026 10:00:00 GMT"),
    ("x-request-id", "req_0123456789abcdef0123456789abcdef"),
    ("openai-organization", "org-example"),
    ("openai-processing-ms", "412"),
    ("openai-version", "2020-10-01"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("server", "cloudflare"),
    ("cf-ray", "8f0a1b2c3d4e5f60-AMS"),
];

/// An answer with `content`, sent with the first `headers` of
/// [`PROVIDER_HEADERS`].
fn answer(content: &str, headers: usize) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "id": "chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
        "system_fingerprint": "fp_0123456789"
    });
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    for (name, value) in PROVIDER_HEADERS.into_iter().take(headers) {
        res.headers_mut()
            .insert(name, value.parse().expect("a value"));
    }
    res
}

/// The bytes in use on the heap.
fn heap() -> isize {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Fills an L1 of `capacity` with answers of `content_len` bytes of text
/// and `headers` headers, and returns (what the L1 counted, what the layer
/// took on the heap).
async fn held(capacity: u64, content_len: usize, headers: usize) -> (u64, isize) {
    let text = "x".repeat(content_len);
    let start = heap();
    let layer = CacheLayer::builder()
        .l1_capacity(capacity)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(move |_req: Request<Full<Bytes>>| {
            let res = answer(&text, headers);
            async move { Ok::<_, Infallible>(res) }
        }));
    let mut n = 0;
    // Past the capacity, twice over: the L1 evicts as it goes.
    while n < 16 || handle.l1_entries() * 2 > n {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{n}"}}]}}"#);
        let req = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-tenant")
            .body(Full::new(Bytes::from(body)))
            .expect("a request");
        let res = svc.ready().await.expect("ready").call(req).await;
        let res = res.expect("answered");
        assert_eq!(res.status(), 200);
        let _ = res.into_body().collect().await.expect("a body");
        n += 1;
    }
    let counted = handle.l1_bytes();
    let full = heap();
    // What the answers hold is freed with them.
    let _ = handle.flush_l1().await;
    assert_eq!(handle.l1_entries(), 0);
    assert!(
        heap() < start + (full - start) / 4,
        "a flushed L1 still holds its answers"
    );
    (counted, full - start)
}

#[tokio::test]
async fn the_l1_counts_the_memory_its_answers_hold() {
    for (content_len, headers, what) in [
        (300, PROVIDER_HEADERS.len(), "small answers"),
        (300, 1, "small answers with one header"),
        (16_000, PROVIDER_HEADERS.len(), "large answers"),
    ] {
        let (counted, held) = held(2 << 20, content_len, headers).await;
        let ratio = held as f64 / counted as f64;
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{what}: the L1 counted {counted} bytes, the layer took {held} ({ratio:.2}×)"
        );
    }
}
