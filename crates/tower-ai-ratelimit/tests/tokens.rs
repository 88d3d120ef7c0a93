//! LLM token policies: the estimate is charged before the call and
//! reconciled with the answer's reported usage when its body ends.

use std::convert::Infallible;
use std::time::Duration;
#[cfg(feature = "redis")]
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use test_support::chat;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_core::key::Global;
use tower_ai_ratelimit::headers::RateLimitInfo;
use tower_ai_ratelimit::{Policy, Rate, RateLimitBuilder, TokenCost, TokenCostLayer};

const JSON_ANSWER: &str = r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#;

const STREAM_ANSWER: &str = concat!(
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"},\"finish_reason\":null}]}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":40,\"total_tokens\":50}}\n\n",
    "data: [DONE]\n\n",
);

/// An upstream that answers JSON, or a stream when the path says so.
async fn upstream(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let stream = req.uri().path() == "/stream";
    let res = Response::builder()
        .header(
            "content-type",
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        )
        .body(Full::new(Bytes::from_static(
            if stream { STREAM_ANSWER } else { JSON_ANSWER }.as_bytes(),
        )))
        .unwrap_or_default();
    Ok(res)
}

/// A chat request estimated at 2 + 4 + 100 = 106 tokens.
fn chat(path: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::from(
            chat::request("hello")
                .model("m")
                .set("max_tokens", 100)
                .to_string(),
        ))
        .unwrap_or_default()
}

async fn remaining_after<S, B>(svc: &mut S, path: &str, read_body: bool) -> (StatusCode, u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc
        .ready()
        .await
        .unwrap_or_else(|e| match e {})
        .call(chat(path))
        .await
        .unwrap_or_else(|e| match e {});
    let status = res.status();
    let remaining = RateLimitInfo::read(res.headers()).map_or(0, |i| i.remaining);
    if read_body {
        res.into_body().collect().await.expect("the body");
    } else {
        drop(res);
    }
    (status, remaining)
}

fn layers(
    builder: RateLimitBuilder<Global>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Error = impl std::fmt::Debug>>,
    Error = Infallible,
> + Clone {
    let limit = builder
        .policy(
            Policy::token_bucket(10_000, Rate::every(Duration::from_secs(3_600)))
                .named("tokens")
                .tokens(),
        )
        .build()
        .expect("valid");
    ServiceBuilder::new()
        .layer(TokenCostLayer::with(TokenCost::default()))
        .layer(limit)
        .service_fn(upstream)
}

#[tokio::test]
async fn json_and_streamed_answers_reconcile_to_the_reported_usage() {
    let mut svc = layers(tower_ai_ratelimit::RateLimitLayer::builder().key(Global));
    // The estimate is charged up front.
    assert_eq!(
        remaining_after(&mut svc, "/json", true).await,
        (StatusCode::OK, 10_000 - 106)
    );
    // ...and reconciled to the 30 reported: the next estimate starts from 9,970.
    assert_eq!(
        remaining_after(&mut svc, "/stream", true).await.1,
        9_970 - 106
    );
    // The stream reported 50.
    assert_eq!(
        remaining_after(&mut svc, "/json", false).await.1,
        9_920 - 106
    );
    // A body dropped before its end keeps its estimate.
    assert_eq!(
        remaining_after(&mut svc, "/json", true).await.1,
        9_814 - 106
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_the_estimate() {
    let mut svc = layers(tower_ai_ratelimit::RateLimitLayer::builder().key(Global));
    let big = Request::post("/json")
        .body(Full::from(vec![b'x'; (1 << 20) + 1]))
        .unwrap_or_default();
    let res = svc
        .ready()
        .await
        .unwrap_or_else(|e| match e {})
        .call(big)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Not charged.
    assert_eq!(
        remaining_after(&mut svc, "/json", true).await.1,
        10_000 - 106
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn reconciliation_reaches_redis() {
    use tower_ai_core::redis::{ConnectOptions, connect};
    use tower_ai_ratelimit::RedisStore;

    let server = test_support::RedisServer::start();
    let client = connect(&[server.url()], &ConnectOptions::default())
        .await
        .expect("connected");
    let mut svc = layers(
        tower_ai_ratelimit::RateLimitLayer::builder()
            .key(Global)
            .redis(RedisStore::builder(client).prefix("tokens").build()),
    );
    assert_eq!(
        remaining_after(&mut svc, "/stream", true).await.1,
        10_000 - 106
    );
    // The reconciliation runs after the body ends, off the client's path.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, remaining) = remaining_after(&mut svc, "/other", false).await;
        // Each probe keeps its own estimate (its body is dropped).
        if remaining % 106 == (10_000 - 50) % 106 {
            break;
        }
        assert!(Instant::now() < deadline, "the refund never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
