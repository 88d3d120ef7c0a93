//! The layer driven directly (no sockets), L1 only: what is stored, what is
//! served, headers, bypasses, stale-if-error, collapsing, invalidation.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_ai_cache::{
    BoxError, CacheBody, CacheKey, CacheLayer, CacheTag, FromCache, IgnoreList, Route,
};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;
type Respond = Arc<dyn Fn(&Req, usize) -> Result<Res, BoxError> + Send + Sync>;

/// An upstream that counts its calls and answers with `respond(request, n)`
/// (n: this call's number, from 0) after `delay`.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    respond: Respond,
    delay: Duration,
}

impl Upstream {
    fn new(respond: impl Fn(&Req, usize) -> Result<Res, BoxError> + Send + Sync + 'static) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            respond: Arc::new(respond),
            delay: Duration::ZERO,
        }
    }

    fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(&self) -> BoxCloneService<Req, Res, BoxError> {
        let this = self.clone();
        BoxCloneService::new(tower::service_fn(move |req: Req| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst);
                if !this.delay.is_zero() {
                    tokio::time::sleep(this.delay).await;
                }
                (this.respond)(&req, n)
            }
        }))
    }
}

type Svc = BoxCloneService<Req, Response<CacheBody<Full<Bytes>>>, BoxError>;

fn cached(layer: CacheLayer, upstream: &Upstream) -> Svc {
    BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(upstream.service()),
    )
}

fn completion(content: &str, finish: &str) -> Res {
    let body = serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

fn ok(content: &str) -> Result<Res, BoxError> {
    Ok(completion(content, "stop"))
}

fn post(tenant: Option<&str>, body: &str) -> Req {
    let mut b = Request::post("/v1/chat/completions").header("content-type", "application/json");
    if let Some(t) = tenant {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}

const PROMPT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    from_cache: Option<FromCache>,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(svc: &mut Svc, req: Req) -> Got {
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("answered");
    let from_cache = res.extensions().get::<FromCache>().copied();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
        from_cache,
    }
}

#[tokio::test]
async fn the_second_identical_request_is_a_hit() {
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n}")));
    let mut svc = cached(CacheLayer::new(), &upstream);

    let first = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    assert_eq!(first.cache_status(), "tower-ai; fwd=miss; ttl=3600");
    assert!(first.headers.get("age").is_none());
    let second = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    assert_eq!(second.status, StatusCode::OK);
    let ttl: u64 = second
        .cache_status()
        .strip_prefix("tower-ai; hit; ttl=")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!((3590..=3600).contains(&ttl), "{}", second.cache_status());
    assert_eq!(second.headers["age"], "0");
    assert_eq!(second.headers["content-type"], "application/json");
    assert_eq!(second.body, first.body);
    assert_eq!(second.from_cache.map(|f| f.is_fresh_hit()), Some(true));
    assert_eq!(upstream.calls(), 1);

    // Key order and whitespace don't matter; the model does.
    let reordered = r#"{ "messages": [{"content":"hi","role":"user"}], "model": "m" }"#;
    assert!(
        send(&mut svc, post(Some("sk-a"), reordered))
            .await
            .cache_status()
            .contains("hit")
    );
    let other_model = r#"{"model":"m2","messages":[{"role":"user","content":"hi"}]}"#;
    assert!(
        send(&mut svc, post(Some("sk-a"), other_model))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn another_tenant_misses_and_no_tenant_is_not_cached() {
    let upstream = Upstream::new(|req, _| {
        let who = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_owned();
        ok(&format!("for {who}"))
    });
    let mut svc = cached(CacheLayer::new(), &upstream);
    let a = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    let b = send(&mut svc, post(Some("sk-b"), PROMPT)).await;
    assert!(b.cache_status().contains("fwd=miss"));
    assert_ne!(a.body, b.body);
    let b2 = send(&mut svc, post(Some("sk-b"), PROMPT)).await;
    assert_eq!(b2.body, b.body);

    for _ in 0..2 {
        let anonymous = send(&mut svc, post(None, PROMPT)).await;
        assert_eq!(
            anonymous.cache_status(),
            "tower-ai; fwd=bypass; detail=no_scope"
        );
    }
    assert_eq!(upstream.calls(), 4);

    // An explicit public scope shares answers.
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n}")));
    let mut svc = cached(
        CacheLayer::builder().public().build().expect("valid"),
        &upstream,
    );
    let a = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    let b = send(&mut svc, post(None, PROMPT)).await;
    assert!(b.cache_status().contains("hit"));
    assert_eq!(a.body, b.body);
}

#[tokio::test]
async fn request_directives() {
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n}")));
    let mut svc = cached(CacheLayer::new(), &upstream);
    let with = |cc: &str| {
        let mut r = post(Some("sk-a"), PROMPT);
        r.headers_mut()
            .insert("cache-control", HeaderValue::from_str(cc).expect("a value"));
        r
    };

    let no_store = send(&mut svc, with("no-store")).await;
    assert_eq!(
        no_store.cache_status(),
        "tower-ai; fwd=request; detail=no_store"
    );
    let first = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    assert!(
        first.cache_status().contains("fwd=miss; ttl="),
        "no-store stored nothing"
    );

    // only-if-cached: answered from the cache, or 504.
    assert!(
        send(&mut svc, with("only-if-cached"))
            .await
            .cache_status()
            .contains("hit")
    );
    let other = send(&mut svc, {
        let mut r = post(Some("sk-zzz"), PROMPT);
        r.headers_mut()
            .insert("cache-control", HeaderValue::from_static("only-if-cached"));
        r
    })
    .await;
    assert_eq!(other.status, StatusCode::GATEWAY_TIMEOUT);

    // no-cache skips the lookup and refreshes the entry.
    let refreshed = send(&mut svc, with("no-cache")).await;
    assert!(
        refreshed
            .cache_status()
            .starts_with("tower-ai; fwd=request; ttl=")
    );
    assert_ne!(refreshed.body, first.body);
    let after = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    assert!(after.cache_status().contains("hit"));
    assert_eq!(after.body, refreshed.body);

    // max-age=0 refuses anything stored (the entry is 0 s old, so it passes).
    assert!(
        send(&mut svc, with("max-age=0"))
            .await
            .cache_status()
            .contains("hit")
    );
    assert_eq!(upstream.calls(), 3);
}

/// An answer cut off at the request's own `max_tokens` is what the same
/// request gets again: stored (unless the route says otherwise). Cut off
/// with no bound in the request (or with the bound ignored by the key), it
/// is not.
#[tokio::test]
async fn a_length_answer_is_stored_when_max_tokens_is_in_the_key() {
    const BOUNDED: &str =
        r#"{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;
    let cases = [
        ("bounded", CacheLayer::new(), BOUNDED, true),
        (
            "max_completion_tokens",
            CacheLayer::new(),
            r#"{"model":"m","max_completion_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#,
            true,
        ),
        ("unbounded", CacheLayer::new(), PROMPT, false),
        (
            "turned off for the route",
            CacheLayer::builder()
                .route(Route::post("/v1/chat/completions").store_length(false))
                .build()
                .expect("valid"),
            BOUNDED,
            false,
        ),
        (
            "max_tokens ignored by the key",
            CacheLayer::builder()
                .ignore_fields(IgnoreList::new(["user", "max_tokens"]))
                .build()
                .expect("valid"),
            BOUNDED,
            false,
        ),
    ];
    for (name, layer, body, stored) in cases {
        let upstream = Upstream::new(|_, n| Ok(completion(&format!("cut {n}"), "length")));
        let mut svc = cached(layer, &upstream);
        let first = send(&mut svc, post(Some("sk-a"), body)).await;
        assert!(!first.cache_status().contains("stored"), "{name}");
        let second = send(&mut svc, post(Some("sk-a"), body)).await;
        assert_eq!(second.cache_status().contains("; hit"), stored, "{name}");
        assert_eq!(second.body == first.body, stored, "{name}");
        assert_eq!(upstream.calls(), if stored { 1 } else { 2 }, "{name}");
    }
}

#[tokio::test]
async fn only_complete_successful_answers_are_stored() {
    let cases: Vec<(&str, Res)> = vec![
        ("length", completion("cut", "length")),
        ("in-band error", {
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"overloaded"}}"#,
                )))
                .unwrap_or_default()
        }),
        ("500", {
            let mut r = completion("x", "stop");
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }),
        ("429", {
            let mut r = completion("x", "stop");
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r
        }),
        ("no-store", {
            let mut r = completion("x", "stop");
            r.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            r
        }),
        ("set-cookie", {
            let mut r = completion("x", "stop");
            r.headers_mut()
                .insert("set-cookie", HeaderValue::from_static("a=b"));
            r
        }),
        ("vary *", {
            let mut r = completion("x", "stop");
            r.headers_mut()
                .insert("vary", HeaderValue::from_static("*"));
            r
        }),
        ("max-age=0", {
            let mut r = completion("x", "stop");
            r.headers_mut()
                .insert("cache-control", HeaderValue::from_static("max-age=0"));
            r
        }),
    ];
    for (name, answer) in cases {
        let answer = Arc::new(answer);
        let upstream = Upstream::new(move |_, _| {
            let mut r = Response::new(answer.body().clone());
            *r.status_mut() = answer.status();
            *r.headers_mut() = answer.headers().clone();
            Ok(r)
        });
        let mut svc = cached(CacheLayer::new(), &upstream);
        let first = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
        assert!(first.cache_status().contains("fwd=miss"), "{name}");
        assert!(
            !first.cache_status().contains("stored"),
            "{name}: `stored` claimed for an answer that isn't: {}",
            first.cache_status()
        );
        let second = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
        assert!(
            second.cache_status().contains("fwd=miss"),
            "{name}: {}",
            second.cache_status()
        );
        assert_eq!(upstream.calls(), 2, "{name} must not be stored");
    }

    // `private` is stored under a caller's scope, not under a public one.
    for (public, stored) in [(false, true), (true, false)] {
        let upstream = Upstream::new(|_, _| {
            let mut r = completion("x", "stop");
            r.headers_mut().insert(
                "cache-control",
                HeaderValue::from_static("private, max-age=60"),
            );
            Ok(r)
        });
        let mut b = CacheLayer::builder();
        if public {
            b = b.public();
        }
        let mut svc = cached(b.build().expect("valid"), &upstream);
        let first = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
        assert_eq!(first.cache_status().contains("ttl=60"), stored);
    }
}

#[tokio::test]
async fn oversized_bodies_pass_through_uncached() {
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n} {}", "x".repeat(100))));
    let layer = CacheLayer::builder()
        .max_request_body(64)
        .build()
        .expect("valid");
    let mut svc = cached(layer, &upstream);
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(100)
    );
    for _ in 0..2 {
        let res = send(&mut svc, post(Some("sk-a"), &big)).await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.cache_status(), "tower-ai; fwd=bypass; detail=too_large");
    }
    assert_eq!(upstream.calls(), 2);

    // An answer larger than max_body passes through, not stored.
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n} {}", "x".repeat(100))));
    let layer = CacheLayer::builder().max_body(64).build().expect("valid");
    let mut svc = cached(layer, &upstream);
    for _ in 0..2 {
        let res = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
        assert_eq!(res.cache_status(), "tower-ai; fwd=miss");
        assert!(res.body.len() > 64);
    }
    assert_eq!(upstream.calls(), 2);

    // A bypass's member comes after those of caches closer to the origin.
    let upstream = Upstream::new(|_, n| {
        let mut res = completion(&format!("answer {n}"), "stop");
        res.headers_mut()
            .insert("cache-status", HeaderValue::from_static("origin; hit"));
        Ok(res)
    });
    let layer = CacheLayer::builder()
        .max_request_body(64)
        .build()
        .expect("valid");
    let mut svc = cached(layer, &upstream);
    let res = send(&mut svc, post(Some("sk-a"), &big)).await;
    assert_eq!(
        res.cache_status(),
        "origin; hit, tower-ai; fwd=bypass; detail=too_large"
    );
}

#[tokio::test]
async fn a_request_body_of_unknown_length_over_the_limit_is_refused() {
    let layer = CacheLayer::builder()
        .max_request_body(16)
        .build()
        .expect("valid");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut svc = tower::ServiceBuilder::new().layer(layer).service_fn(
        move |_req: Request<axum::body::Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        },
    );
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, Infallible>(Bytes::from_static(b"0123456789"))),
    );
    let req = Request::post("/x")
        .header("x-api-key", "k")
        .body(axum::body::Body::from_stream(chunks))
        .unwrap_or_default();
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("answered");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// Malformed JSON is keyed as bytes: the same broken body is the same entry,
/// never a panic.
#[tokio::test]
async fn malformed_json_is_keyed_as_bytes() {
    let upstream = Upstream::new(|_, n| {
        Ok(Response::builder()
            .status(if n == 0 { 200 } else { 201 })
            .body(Full::new(Bytes::from(format!("seen {n}"))))
            .unwrap_or_default())
    });
    let mut svc = cached(CacheLayer::new(), &upstream);
    let broken = r#"{"model":"m","messages":[{"#;
    let first = send(&mut svc, post(Some("sk-a"), broken)).await;
    let second = send(&mut svc, post(Some("sk-a"), broken)).await;
    assert!(second.cache_status().contains("hit"));
    assert_eq!(first.body, second.body);
    let other = send(
        &mut svc,
        post(Some("sk-a"), r#"{"model":"m","messages":[{ "#),
    )
    .await;
    assert!(other.cache_status().contains("fwd=miss"));
    for junk in ["", "\u{0}\u{1}", "[[[[[[[[", "{\"a\":1e999999}"] {
        let _ = send(&mut svc, post(Some("sk-a"), junk)).await;
    }
}

#[tokio::test]
async fn stale_answers_are_served_when_the_upstream_fails() {
    let upstream = Upstream::new(|_, n| match n {
        0 => ok("fresh answer"),
        1 => {
            let mut r = completion("", "stop");
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(r)
        }
        _ => Err("connection refused".into()),
    });
    let layer = CacheLayer::builder()
        .route(
            Route::post("/v1/chat/completions")
                .ttl(Duration::from_millis(200))
                .stale_if_error(Duration::from_secs(30)),
        )
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = cached(layer, &upstream);
    let first = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let on_503 = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    assert_eq!(on_503.status, StatusCode::OK);
    assert!(
        on_503
            .cache_status()
            .starts_with("tower-ai; fwd=stale; fwd-status=503; ttl=-"),
        "{}",
        on_503.cache_status()
    );
    assert_eq!(on_503.body, first.body);
    assert_eq!(on_503.headers["age"], "1");

    let on_error = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    assert!(
        on_error
            .cache_status()
            .starts_with("tower-ai; fwd=stale; ttl=-")
    );
    assert_eq!(on_error.body, first.body);

    // The breaker's fallback finds the same stale answer.
    let mut fallback = handle.stale_fallback::<Infallible>();
    let res = ServiceExt::<Req>::ready(&mut fallback)
        .await
        .expect("ready")
        .call(post(Some("sk-a"), PROMPT))
        .await
        .expect("answered");
    assert!(res.extensions().get::<FromCache>().is_some());
    let status = res.headers()["cache-status"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        status.contains("hit; ttl=-") && status.ends_with("detail=stale"),
        "{status}"
    );
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    assert_eq!(body, first.body);
    // Nothing stored for another tenant: 503 problem+json.
    let res = fallback
        .call(post(Some("sk-b"), PROMPT))
        .await
        .expect("answered");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // Without a stale entry, the error passes through.
    let fails = send_result(&mut svc, post(Some("sk-c"), PROMPT)).await;
    assert!(fails.is_err());
}

async fn send_result(svc: &mut Svc, req: Req) -> Result<StatusCode, BoxError> {
    svc.ready().await?.call(req).await.map(|r| r.status())
}

/// A response a fallback below the cache made from the cache is never
/// stored again as new.
#[tokio::test]
async fn answers_marked_from_the_cache_are_not_stored() {
    let upstream = Upstream::new(|_, _| {
        let mut r = completion("stale", "stop");
        r.extensions_mut().insert(FromCache::new(false));
        Ok(r)
    });
    let mut svc = cached(CacheLayer::new(), &upstream);
    for _ in 0..2 {
        let res = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
        assert_eq!(res.cache_status(), "");
    }
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let upstream =
        Upstream::new(|_, n| ok(&format!("answer {n}"))).delay(Duration::from_millis(200));
    let svc = cached(CacheLayer::new(), &upstream);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { send(&mut svc, post(Some("sk-a"), PROMPT)).await })
        })
        .collect();
    let mut stored = 0;
    let mut collapsed = 0;
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let got = t.await.expect("the task ends");
        assert_eq!(got.status, StatusCode::OK);
        stored += usize::from(got.cache_status().contains("fwd=miss; ttl="));
        collapsed += usize::from(got.cache_status().contains("collapsed"));
        bodies.insert(got.body);
    }
    assert_eq!(upstream.calls(), 1);
    assert_eq!(stored, 1);
    assert_eq!(collapsed, 99);
    assert_eq!(bodies.len(), 1);
}

#[tokio::test]
async fn a_failed_leader_lets_the_followers_go_on() {
    let upstream = Upstream::new(|_, n| {
        if n == 0 {
            let mut r = completion("", "stop");
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(r)
        } else {
            ok("later")
        }
    })
    .delay(Duration::from_millis(100));
    let svc = cached(CacheLayer::new(), &upstream);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { send(&mut svc, post(Some("sk-a"), PROMPT)).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("the task ends"));
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        1
    );
    assert_eq!(upstream.calls(), 10, "the waiters proceed uncached");
}

#[tokio::test]
async fn invalidation_by_key_and_tag() {
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n}")));
    let layer = CacheLayer::builder()
        .expose_key(true)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = cached(layer, &upstream);
    let first = send(&mut svc, post(Some("sk-a"), PROMPT)).await;
    let status = first.cache_status().to_owned();
    let hex = status
        .split("key=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("");
    let key = CacheKey::from_hex(hex).expect("the key is exposed");
    assert_eq!(
        handle.key_for(&post(Some("sk-a"), PROMPT), PROMPT.as_bytes()),
        Some(key)
    );
    assert!(handle.lookup_key(&key).await.is_some());
    let _ = handle.invalidate_key(&key).await;
    assert!(
        send(&mut svc, post(Some("sk-a"), PROMPT))
            .await
            .cache_status()
            .contains("fwd=miss")
    );

    // By model: every tenant's entries for it go.
    let _ = send(&mut svc, post(Some("sk-b"), PROMPT)).await;
    let m2 = r#"{"model":"m2","messages":[]}"#;
    let _ = send(&mut svc, post(Some("sk-a"), m2)).await;
    let _ = handle.invalidate_tag(&CacheTag::model("m")).await;
    assert!(
        send(&mut svc, post(Some("sk-a"), PROMPT))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert!(
        send(&mut svc, post(Some("sk-b"), PROMPT))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert!(
        send(&mut svc, post(Some("sk-a"), m2))
            .await
            .cache_status()
            .contains("hit")
    );

    // By tenant.
    let tenant = tower_ai_core::key::ClientKey::digest("api-key", "sk-a");
    let _ = handle.invalidate_tag(&CacheTag::tenant(&tenant)).await;
    assert!(
        send(&mut svc, post(Some("sk-a"), m2))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert!(
        send(&mut svc, post(Some("sk-b"), PROMPT))
            .await
            .cache_status()
            .contains("hit")
    );
}

#[tokio::test]
async fn deterministic_only_routes() {
    let upstream = Upstream::new(|_, n| ok(&format!("answer {n}")));
    let layer = CacheLayer::builder()
        .route(Route::post("/v1/chat/completions").deterministic_only())
        .build()
        .expect("valid");
    let mut svc = cached(layer, &upstream);
    let warm = r#"{"model":"m","temperature":0.7,"messages":[]}"#;
    let cold = r#"{"model":"m","temperature":0,"messages":[]}"#;
    let seeded = r#"{"model":"m","temperature":0.7,"seed":1,"messages":[]}"#;
    assert_eq!(
        send(&mut svc, post(Some("k"), warm)).await.cache_status(),
        "tower-ai; fwd=bypass; detail=nondeterministic"
    );
    for body in [cold, seeded] {
        let _ = send(&mut svc, post(Some("k"), body)).await;
        assert!(
            send(&mut svc, post(Some("k"), body))
                .await
                .cache_status()
                .contains("hit")
        );
    }
    // Another route is not cached at all, and gets no Cache-Status.
    let other = Request::post("/v1/other")
        .header("x-api-key", "k")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap_or_default();
    assert!(
        send(&mut svc, other)
            .await
            .headers
            .get("cache-status")
            .is_none()
    );
}

#[tokio::test]
async fn get_requests_are_answered_from_l1() {
    let upstream = Upstream::new(|_, n| {
        Ok(Response::builder()
            .header("content-type", "text/plain")
            .header("age", "3")
            .body(Full::new(Bytes::from(format!("content {n}"))))
            .unwrap_or_default())
    });
    let mut svc = cached(CacheLayer::new(), &upstream);
    let get = |q: &str| {
        Request::get(format!("/v1/content/a?{q}"))
            .header("x-api-key", "k")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    };
    let _ = send(&mut svc, get("v=1")).await;
    let hit = send(&mut svc, get("v=1")).await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.headers["age"], "3", "the upstream's own age counts");
    assert!(
        send(&mut svc, get("v=2"))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn l1_is_bounded_by_bytes() {
    let upstream = Upstream::new(|_, n| ok(&format!("{n}{}", "x".repeat(1_000))));
    let layer = CacheLayer::builder()
        .l1_capacity(20_000)
        .build()
        .expect("valid");
    let handle = layer.handle();
    let mut svc = cached(layer, &upstream);
    for i in 0..200 {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{i}"}}]}}"#);
        let _ = send(&mut svc, post(Some("k"), &body)).await;
    }
    assert!(handle.l1_bytes() <= 20_000, "{} bytes", handle.l1_bytes());
    assert!(handle.l1_entries() < 200);
}

#[test]
fn invalid_configuration_is_an_error() {
    assert!(CacheLayer::builder().l1_capacity(0).build().is_err());
    assert!(CacheLayer::builder().ttl(Duration::ZERO).build().is_err());
    assert!(
        CacheLayer::builder()
            .cache_name("two words")
            .build()
            .is_err()
    );
    assert!(CacheLayer::builder().max_in_flight(0).build().is_err());
    assert!(
        CacheLayer::builder()
            .route(Route::get("/x").ttl(Duration::ZERO))
            .build()
            .is_err()
    );
}

/// gRPC answers are stored with their trailers, only with `grpc-status: 0`.
#[tokio::test]
async fn grpc_answers_keep_their_trailers() {
    for (status, stored) in [("0", true), ("13", false)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let layer = CacheLayer::new();
        let mut svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |_req: Req| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static(status));
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut res =
                        Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    res.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    Ok::<_, Infallible>(res)
                }
            });
        let req = || {
            Request::post("/pkg.Svc/Method")
                .header("content-type", "application/grpc")
                .header("x-api-key", "k")
                .body(Full::new(Bytes::from_static(b"\0\0\0\0\x01x")))
                .unwrap_or_default()
        };
        for _ in 0..2 {
            let res = svc
                .ready()
                .await
                .expect("ready")
                .call(req())
                .await
                .expect("answered");
            let collected = res.into_body().collect().await.expect("a body");
            assert_eq!(
                collected.trailers().map(|t| t["grpc-status"].clone()),
                Some(HeaderValue::from_static(status))
            );
            assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x02hi"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), if stored { 1 } else { 2 });
    }
}
