//! `ChatHistoryLayer`: what joins the history, and each turn handed to
//! `on_turn` with its position in the conversation.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_session::{ChatHistoryLayer, MemoryStore, RecordedTurn, Session, SessionLayer};

/// (session id, user, position, role, content) of each recorded turn.
type Seen = Arc<Mutex<Vec<(String, String, u64, String, String)>>>;

/// The model: answers `echo: <last user message>`, `500` to "fail";
/// `/login/<user>` signs in.
async fn model(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let session = req
        .extensions()
        .get::<Session>()
        .cloned()
        .expect("a session");
    if let Some(user) = req.uri().path().strip_prefix("/login/") {
        session.insert("user", user).expect("inserted");
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    let body = req.into_body().collect().await.expect("a body").to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let question = json["messages"][0]["content"].as_str().unwrap_or_default();
    if question == "fail" {
        let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(res);
    }
    let answer = serde_json::json!({
        "choices": [{"message": {"role": "assistant", "content": format!("echo: {question}")}}]
    });
    let mut res = Response::new(Full::new(Bytes::from(answer.to_string())));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// Sends a request (a chat with `question`, or a sign-in) with the cookie
/// `jar` holds, keeps the cookie it sets; returns the status and the body.
async fn send<S, B>(
    svc: &mut S,
    jar: &mut Option<String>,
    path: &str,
    question: Option<&str>,
) -> (StatusCode, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let body = question.map_or_else(Full::default, |q| {
        Full::new(Bytes::from(
            serde_json::json!({"messages": [{"role": "user", "content": q}]}).to_string(),
        ))
    });
    let mut req = Request::post(path).body(body).expect("a request");
    if let Some(cookie) = jar.as_deref() {
        req.headers_mut().insert(
            header::COOKIE,
            HeaderValue::from_str(cookie).expect("a cookie"),
        );
    }
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("a response");
    if let Some(set) = res.headers().get(header::SET_COOKIE) {
        let set = set.to_str().expect("ascii");
        *jar = Some(set.split(';').next().unwrap_or_default().to_owned());
    }
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_turn_is_handed_over_with_its_position() {
    let seen = Seen::default();
    let record = seen.clone();
    let chat = ChatHistoryLayer::new().on_turn(move |t: RecordedTurn<'_>| {
        record.lock().expect("unpoisoned").push((
            t.session.to_string(),
            t.user.to_owned(),
            t.position,
            t.turn.role.as_str().to_owned(),
            t.turn.content.clone(),
        ));
    });
    let mut svc = ServiceBuilder::new()
        .layer(SessionLayer::new(MemoryStore::new()))
        .layer(chat)
        .service_fn(model);
    let mut jar = None;

    // Not signed in: nothing is recorded.
    let (status, _) = send(&mut svc, &mut jar, "/v1/chat/completions", Some("anon")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.lock().expect("unpoisoned").is_empty());

    send(&mut svc, &mut jar, "/login/ada", None).await;
    for question in ["one", "fail", "two"] {
        send(&mut svc, &mut jar, "/v1/chat/completions", Some(question)).await;
    }
    let seen = seen.lock().expect("unpoisoned").clone();
    let sid = jar
        .as_deref()
        .and_then(|c| c.split_once('='))
        .map(|(_, id)| id.to_owned());
    let turns: Vec<_> = seen
        .iter()
        .map(|(session, user, position, role, content)| {
            assert_eq!(Some(session), sid.as_ref(), "the session's own id");
            assert_eq!(user, "ada");
            (*position, role.as_str(), content.as_str())
        })
        .collect();
    // A failed answer records nothing and takes no position.
    assert_eq!(
        turns,
        [
            (0, "user", "one"),
            (1, "assistant", "echo: one"),
            (2, "user", "two"),
            (3, "assistant", "echo: two"),
        ]
    );
}
