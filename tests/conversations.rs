//! Durable conversations in the gateway (`[persistence]`), end to end over
//! real sockets and a real PostgreSQL: a signed-in session's turns reach
//! the table; with PostgreSQL stopped, chats are answered as before and
//! their turns are written once it is back, none lost or duplicated; after
//! the gateway restarts (its sessions gone), the conversation is read back.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mock_llm::MockHandle;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use test_support::postgres::{PostgresServer, unique_name};
use test_support::sse::SseReader;
use tower_ai_gateway::{Config, Gateway};

async fn gateway(mock: &MockHandle, postgres: &PostgresServer, table: &str) -> Gateway {
    let toml = format!(
        r#"
[[models]]
name = "chat"
provider = "openai"
base_url = "{url}/v1"

[[limits]]
route = "/v1/chat/completions"
requests = {{ capacity = 100, per_second = 100.0 }}

[persistence]
postgres_url = "{postgres}"
table = "{table}"
every_turns = 4
max_delay_ms = 60000
"#,
        url = mock.base_url(),
        postgres = postgres.url(),
    );
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Err(e) = config.read_toml(&toml, Path::new("test.toml"), |_| None) {
        panic!("a valid config: {e}");
    }
    Gateway::start(config).await.expect("the gateway starts")
}

/// A client that keeps the session cookie.
struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Client {
    fn new(gateway: &Gateway) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: gateway.url(),
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let req = match &self.cookie {
            Some(cookie) => req.header(COOKIE, cookie),
            None => req,
        };
        let res = req.send().await.expect("a response");
        if let Some(set) = res.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        res
    }

    async fn post(&mut self, path: &str, body: &Value) -> reqwest::Response {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    async fn get(&mut self, path: &str) -> reqwest::Response {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// Asks `question` (streamed or not); returns the answer's text.
    async fn chat(&mut self, question: &str, stream: bool) -> String {
        let body = json!({"model": "chat", "stream": stream, "messages": [
            {"role": "user", "content": question}
        ]});
        let res = self.post("/v1/chat/completions", &body).await;
        assert_eq!(res.status(), 200, "the chat is answered");
        if !stream {
            let body: Value = res.json().await.expect("JSON");
            return body["choices"][0]["message"]["content"]
                .as_str()
                .expect("an answer")
                .to_owned();
        }
        let mut text = String::new();
        for event in SseReader::new(res).rest().await {
            if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
                text.push_str(
                    chunk["choices"][0]["delta"]["content"]
                        .as_str()
                        .unwrap_or(""),
                );
            }
        }
        text
    }
}

/// The stored turns of `conversation` as (index, role, content); `None`
/// while the store can't be read.
async fn stored(gateway: &Gateway, conversation: &str) -> Option<Vec<(u64, String, String)>> {
    let res = reqwest::get(format!(
        "{}/admin/conversations/{conversation}",
        gateway.url()
    ))
    .await
    .ok()?;
    if res.status() != 200 {
        return None;
    }
    let body: Value = res.json().await.ok()?;
    Some(
        body["turns"]
            .as_array()?
            .iter()
            .map(|t| {
                (
                    t["index"].as_u64().unwrap_or(u64::MAX),
                    t["role"].as_str().unwrap_or("").to_owned(),
                    t["content"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
    )
}

/// Waits until the store holds exactly `expected` for `conversation`.
async fn stored_eventually(
    gateway: &Gateway,
    conversation: &str,
    expected: &[(u64, String, String)],
) {
    let reached = test_support::eventually_async(Duration::from_secs(30), || async {
        stored(gateway, conversation).await.as_deref() == Some(expected)
    })
    .await;
    assert!(
        reached.is_some(),
        "stored {:?}, expected {expected:?}",
        stored(gateway, conversation).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_outlive_a_postgres_outage_and_a_gateway_restart() {
    let mut postgres = PostgresServer::start();
    let table = unique_name("turns");
    let mock = mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config {
            token_delay: Duration::from_millis(1),
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock starts");
    let gateway = gateway(&mock, &postgres, &table).await;
    let mut client = Client::new(&gateway);

    // Not signed in: nothing is kept.
    client.chat("Anyone there?", false).await;
    let res = client.post("/session/login", &json!({"user": "ada"})).await;
    assert_eq!(res.status(), 200);
    let session: Value = client.get("/session").await.json().await.expect("JSON");
    let conversation = session["conversation"]
        .as_str()
        .expect("a conversation id")
        .to_owned();
    assert_eq!(conversation.len(), 32);
    let cookie = client.cookie.clone().unwrap_or_default();
    assert!(
        !cookie.contains(&conversation),
        "the conversation id isn't the session id"
    );

    let mut expected = Vec::new();
    let mut exchange = |question: &str, answer: String| {
        let index = expected.len() as u64;
        expected.push((index, "user".to_owned(), question.to_owned()));
        expected.push((index + 1, "assistant".to_owned(), answer));
        expected.clone()
    };
    let mut now = Vec::new();
    for (question, stream) in [
        ("What is a circuit breaker?", false),
        ("And a cache?", true),
    ] {
        let answer = client.chat(question, stream).await;
        now = exchange(question, answer);
    }
    // Four turns: a write.
    stored_eventually(&gateway, &conversation, &now).await;

    // PostgreSQL down: the chats are answered, streamed and not.
    postgres.stop();
    for (question, stream) in [("And a rate limiter?", true), ("Thanks!", false)] {
        let answer = client.chat(question, stream).await;
        assert!(!answer.is_empty(), "an answer while PostgreSQL is down");
        now = exchange(question, answer);
    }
    assert_eq!(
        stored(&gateway, &conversation).await,
        None,
        "the store is down"
    );
    let stats: Value = reqwest::get(format!("{}/admin/conversations", gateway.url()))
        .await
        .expect("a response")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["held"], 4, "{stats}");
    assert_eq!(stats["refused"], 0, "{stats}");

    // Back: what was held is written, in order, once.
    postgres.restart();
    stored_eventually(&gateway, &conversation, &now).await;
    let rows = postgres.psql(&format!(
        "SELECT count(*), count(DISTINCT turn) FROM {table}"
    ));
    assert_eq!(rows, "8|8", "no turn lost or duplicated");

    // Two turns, fewer than a write's four: sign-out sends them.
    let answer = client.chat("Bye", true).await;
    let now = exchange("Bye", answer);
    let res = client.post("/session/logout", &json!({})).await;
    assert_eq!(res.status(), 200);
    stored_eventually(&gateway, &conversation, &now).await;

    // A new gateway, its sessions gone: the conversation is still there.
    gateway.shutdown().await.expect("stopped");
    let gateway = self::gateway(&mock, &postgres, &table).await;
    assert_eq!(
        stored(&gateway, &conversation).await.as_deref(),
        Some(&now[..])
    );
    let res = reqwest::get(format!("{}/admin/conversations/not-hex", gateway.url()))
        .await
        .expect("a response");
    assert_eq!(res.status(), 400);
}
