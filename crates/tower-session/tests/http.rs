//! The layer on the wire: axum servers on real sockets, reqwest clients,
//! cookies as a browser would send them.
#![allow(missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderValue, StatusCode, header};
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
use tower_session::{MemoryStore, RedisStore, SessionLayer};

/// Serves `layer` over the test routes on a free loopback port.
async fn serve(layer: SessionLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    let app = common::app(layer);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A replica: its own Redis connection, store and layer.
async fn replica(urls: &[String]) -> SocketAddr {
    let client = connect(urls, &ConnectOptions::default())
        .await
        .expect("connected");
    let degrade = Degrade::new(
        "session",
        DegradeConfig::default().timeout(Duration::from_secs(1)),
    );
    let store = RedisStore::builder(client).degrade(degrade).build();
    serve(SessionLayer::new(store)).await
}

/// One HTTP call with an optional raw `Cookie`; returns status, the new
/// session id (or `Some("")` for a removal), the body.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    cookie: Option<&[u8]>,
) -> (StatusCode, Option<String>, String) {
    let mut req = http.request(method, url);
    if let Some(cookie) = cookie {
        req = req.header(
            header::COOKIE,
            HeaderValue::from_bytes(cookie).expect("bytes"),
        );
    }
    let res = req.send().await.expect("a response");
    let status = res.status();
    let set = res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            if s.contains("Max-Age=0") {
                String::new()
            } else {
                common::cookie_id(s)
            }
        });
    (status, set, res.text().await.unwrap_or_default())
}

fn sid(id: &str) -> Vec<u8> {
    format!("sid={id}").into_bytes()
}

async fn replicas_share_sessions(urls: &[String]) {
    let (a, b) = (replica(urls).await, replica(urls).await);
    let http = reqwest::Client::new();
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    let (_, anon, _) = call(&http, post.clone(), format!("http://{a}/set/cart/3"), None).await;
    let anon = anon.expect("a session for the visitor");
    // Login on A: a new id (no fixation), the data kept.
    let (status, user, _) = call(
        &http,
        post.clone(),
        format!("http://{a}/login/ada"),
        Some(&sid(&anon)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let user = user.expect("a new cookie at login");
    assert_ne!(user, anon);
    // The cookie works on B.
    let (_, _, who) = call(
        &http,
        get.clone(),
        format!("http://{b}/get/user"),
        Some(&sid(&user)),
    )
    .await;
    assert_eq!(who, "\"ada\"");
    let (_, _, cart) = call(
        &http,
        get.clone(),
        format!("http://{b}/get/cart"),
        Some(&sid(&user)),
    )
    .await;
    assert_eq!(cart, "\"3\"");
    // The pre-login id is dead everywhere.
    let (_, _, old) = call(
        &http,
        get.clone(),
        format!("http://{a}/get/cart"),
        Some(&sid(&anon)),
    )
    .await;
    assert_eq!(old, "null");
    // Logout on B: A answers as to a new visitor at once.
    let (_, removal, _) = call(
        &http,
        post.clone(),
        format!("http://{b}/logout"),
        Some(&sid(&user)),
    )
    .await;
    assert_eq!(removal.as_deref(), Some(""));
    let (status, _, who) = call(
        &http,
        get.clone(),
        format!("http://{a}/get/user"),
        Some(&sid(&user)),
    )
    .await;
    assert_eq!((status, who.as_str()), (StatusCode::OK, "null"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_sessions_through_one_redis() {
    let server = test_support::RedisServer::start();
    replicas_share_sessions(&[server.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_sessions_through_a_redis_cluster() {
    let cluster = test_support::RedisCluster::start();
    replicas_share_sessions(&cluster.urls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_on_the_wire_and_bad_cookies_never_hurt() {
    let addr = serve(SessionLayer::new(MemoryStore::new())).await;
    let http = reqwest::Client::new();
    let res = http
        .post(format!("http://{addr}/set/a/1"))
        .send()
        .await
        .expect("a response");
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    for attr in [
        "sid=",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=1800",
    ] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let good = common::cookie_id(&set);
    assert_eq!(good.len(), 32);

    let oversized = sid(&"A".repeat(8 * 1024));
    let mut non_utf8 = b"pref=\xc3\x28\xff; sid=".to_vec();
    non_utf8.extend_from_slice(b"\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc\xf0\x28\x8c\xbc");
    let bad: [&[u8]; 5] = [
        b"sid=%00%ff",
        b"sid==;;=",
        &oversized,
        &non_utf8,
        b"sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ];
    for cookie in bad {
        let (status, fresh, _) = call(
            &http,
            reqwest::Method::POST,
            format!("http://{addr}/set/b/2"),
            Some(cookie),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let fresh = fresh.expect("a fresh session");
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh.as_bytes(), &cookie[4..cookie.len().min(36)]);
    }
    // A non-UTF-8 byte in another cookie doesn't hide a good id.
    let mut mixed = b"pref=\xff\xfe; ".to_vec();
    mixed.extend_from_slice(&sid(&good));
    let (_, _, a) = call(
        &http,
        reqwest::Method::GET,
        format!("http://{addr}/get/a"),
        Some(&mixed),
    )
    .await;
    assert_eq!(a, "\"1\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_saved_before_the_stream_ends() {
    let server = test_support::RedisServer::start();
    let urls = [server.url()];
    let (a, b) = (replica(&urls).await, replica(&urls).await);
    let http = reqwest::Client::new();
    let (_, id, _) = call(
        &http,
        reqwest::Method::POST,
        format!("http://{a}/set/a/1"),
        None,
    )
    .await;
    let id = id.expect("a session");

    let res = http
        .get(format!("http://{a}/stream/answer/42"))
        .header(header::COOKIE, format!("sid={id}"))
        .send()
        .await
        .expect("a response");
    assert!(
        res.headers().get(header::CONTENT_LENGTH).is_none(),
        "a streamed body"
    );
    let mut body = res.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        text.extend_from_slice(&chunk.expect("a chunk"));
    }
    assert_eq!(text, b"chunk0\nchunk1\nchunk2\ndone\n");
    // The moment the stream ended, another replica sees what the stream
    // added after the head had gone.
    let (_, _, answer) = call(
        &http,
        reqwest::Method::GET,
        format!("http://{b}/get/answer"),
        Some(&sid(&id)),
    )
    .await;
    assert_eq!(answer, "\"42\"");
    let (_, _, turns) = call(
        &http,
        reqwest::Method::GET,
        format!("http://{b}/history/last/5"),
        Some(&sid(&id)),
    )
    .await;
    assert_eq!(common::turns(&turns), ["assistant:42"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_a_503_problem_on_the_wire() {
    let mut server = test_support::RedisServer::start();
    let addr = replica(&[server.url()]).await;
    let http = reqwest::Client::new();
    let (_, id, _) = call(
        &http,
        reqwest::Method::POST,
        format!("http://{addr}/set/a/1"),
        None,
    )
    .await;
    let id = id.expect("a session");
    tokio::task::block_in_place(|| server.stop());

    let res = http
        .get(format!("http://{addr}/get/a"))
        .header(header::COOKIE, format!("sid={id}"))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let doc: serde_json::Value = res.json().await.expect("a problem document");
    assert_eq!(doc["title"], "Service Unavailable");
    let (status, _, _) = call(
        &http,
        reqwest::Method::GET,
        format!("http://{addr}/untouched"),
        Some(&sid(&id)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
