//! The gateway end to end, over real sockets, with the mock LLM as upstream.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::sse::{self, SseEvent, SseReader};
use test_support::{RedisServer, eventually, eventually_async};
use tower_ai_gateway::{Config, Gateway};

fn config() -> Config {
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.mock_token_delay = Duration::from_millis(5);
    config
}

async fn start(config: Config) -> Gateway {
    Gateway::start(config).await.expect("the gateway starts")
}

fn chat(stream: bool) -> Value {
    test_support::chat::request("Tell me about tower middleware.")
        .system("You are terse.")
        .stream(stream)
        .include_usage()
        .json()
}

/// `GET url`, read as JSON.
async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("a response")
        .json()
        .await
        .expect("JSON")
}

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "a refusal is problem+json"
    );
    let doc: Value = res.json().await.expect("a JSON problem document");
    assert_eq!(doc["status"], status);
    assert!(doc["detail"].as_str().is_some_and(|d| !d.is_empty()));
    doc
}

#[tokio::test]
async fn streams_tokens_as_they_are_generated() {
    let mut config = config();
    config.mock_token_delay = Duration::from_millis(40);
    let gateway = start(config).await;
    let client = reqwest::Client::new();

    let sent = Instant::now();
    let res = client
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .json(&chat(true))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .is_ok_and(|ct| ct.starts_with("text/event-stream"))
    );

    // Read frame by frame, noting when each event arrives.
    let mut reader = SseReader::new(res);
    let events: Vec<(Duration, String)> = reader
        .rest()
        .await
        .into_iter()
        .map(|e| (e.at - sent, e.data))
        .collect();
    assert!(!reader.broken(), "the stream doesn't break: {reader:?}");
    assert!(std::str::from_utf8(reader.raw()).is_ok(), "UTF-8");
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let tokens: Vec<&(Duration, String)> = events
        .iter()
        .filter(|(_, d)| {
            serde_json::from_str::<Value>(d).is_ok_and(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            })
        })
        .collect();
    assert!(tokens.len() >= 8, "{} tokens", tokens.len());
    let first = tokens[0].0;
    let last = events.last().map(|e| e.0).unwrap_or_default();
    // 40 ms a token: the first arrives while the rest are still being made.
    assert!(
        first * 3 < last,
        "first token at {first:?}, last event at {last:?}: the stream was buffered"
    );
    let usage = events
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(
        usage["usage"]["completion_tokens"].as_u64(),
        Some(tokens.len() as u64)
    );
}

#[tokio::test]
async fn proxies_a_json_completion() {
    let gateway = start(config()).await;
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .bearer_auth("client-key-1")
        .json(&chat(false))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].is_string());
    assert!(
        body["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    let stats = gateway.mock().map(|m| m.stats().requests);
    assert_eq!(stats, Some(1));
}

#[tokio::test]
async fn another_method_on_a_model_route_is_refused_behind_the_layers() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();
    for path in ["/v1/chat/completions", "/v1/embeddings", "/v1/messages"] {
        let res = client
            .get(format!("{}{path}", gateway.url()))
            .bearer_auth("key-get")
            .send()
            .await
            .expect("a response");
        assert_eq!(res.status(), 405, "{path}");
        assert_eq!(res.headers()["allow"], "POST", "{path}");
        // The rate limiter saw it, as every request to the route.
        assert!(res.headers().contains_key("x-ratelimit-limit"), "{path}");
    }
    assert_eq!(gateway.mock().map(|m| m.stats().requests), Some(0));
}

#[tokio::test]
async fn bad_bodies_get_clear_json_errors() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url());

    let res = client
        .post(&url)
        .header("content-type", "application/json")
        .body("this is not json")
        .send()
        .await
        .expect("a response");
    let doc = problem(res, 400).await;
    assert!(
        doc["error"]["message"].is_string(),
        "OpenAI-style error member"
    );

    let res = client
        .post(&url)
        .json(&json!({ "model": "m", "messages": "not a list" }))
        .send()
        .await
        .expect("a response");
    problem(res, 400).await;

    let res = client
        .post(&url)
        .json(&json!({ "messages": [] }))
        .send()
        .await
        .expect("a response");
    problem(res, 400).await;

    // Oversized, declared up front.
    let big = vec![b'x'; 2 << 20];
    let res = client
        .post(&url)
        .body(big.clone())
        .send()
        .await
        .expect("a response");
    problem(res, 413).await;

    // Oversized, streamed without a Content-Length.
    let chunks = big
        .chunks(64 << 10)
        .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
        .collect::<Vec<_>>();
    let res = client
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("a response");
    problem(res, 413).await;

    // Nothing reached the upstream.
    assert_eq!(gateway.mock().map(|m| m.stats().requests), Some(0));
}

async fn chat_as(
    client: &reqwest::Client,
    gateway: &Gateway,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("a response")
}

fn header_u64(res: &reqwest::Response, name: &str) -> u64 {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} header"))
}

#[tokio::test]
async fn chat_is_limited_per_client_key() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();
    for expected in (0..5).rev() {
        let res = chat_as(&client, &gateway, "key-a", &chat(false)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header_u64(&res, "x-ratelimit-limit"), 5);
        assert_eq!(header_u64(&res, "x-ratelimit-remaining"), expected);
        assert_eq!(header_u64(&res, "x-ratelimit-remaining-requests"), expected);
    }
    let res = chat_as(&client, &gateway, "key-a", &chat(false)).await;
    let retry = header_u64(&res, "retry-after");
    assert!((1..=10).contains(&retry), "one request every 10 s: {retry}");
    let doc = problem(res, 429).await;
    assert_eq!(doc["policy"], "chat");
    // Another key has its own limits. The same prompt reached the upstream
    // once per tenant: the rest were cache hits, and the refusal never got
    // past the limiter.
    let res = chat_as(&client, &gateway, "key-b", &chat(false)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(gateway.mock().map(|m| m.stats().requests), Some(2));
}

#[tokio::test]
async fn token_charges_reconcile_to_the_reported_usage() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();
    // A large max_tokens makes the estimate far above the real usage.
    let mut body = chat(false);
    body["max_tokens"] = json!(5_000);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let usage = mock_llm::answer(&body).map(|a| a.prompt_tokens + a.completion_tokens);
    let usage = usage.expect("the mock answers this request");

    let first = chat_as(&client, &gateway, "tokens", &body).await;
    let estimate = 20_000 - header_u64(&first, "x-ratelimit-remaining-tokens");
    assert!(
        estimate > 5_000,
        "the estimate covers max_tokens: {estimate}"
    );
    let answer: Value = first.json().await.expect("JSON");
    assert_eq!(answer["usage"]["total_tokens"].as_u64(), Some(usage));

    // The next request sees the first one charged at its usage, not its
    // estimate (plus what refilled meanwhile: 333 tokens a second).
    let second = chat_as(&client, &gateway, "tokens", &streamed).await;
    let left = header_u64(&second, "x-ratelimit-remaining-tokens");
    let expected = 20_000 - usage - estimate;
    assert!(
        left >= expected && left <= expected + 400,
        "remaining {left}, expected about {expected}"
    );
    let text = second.text().await.expect("the stream");
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // The streamed answer reconciled too, from its final usage chunk.
    let third = chat_as(&client, &gateway, "tokens", &body).await;
    let left = header_u64(&third, "x-ratelimit-remaining-tokens");
    let expected = 20_000 - 2 * usage - estimate;
    assert!(
        left >= expected && left <= expected + 400,
        "remaining {left}, expected about {expected}"
    );
}

#[tokio::test]
async fn replicas_sharing_redis_share_the_limits() {
    let redis = RedisServer::start();
    let mut config_a = config();
    config_a.redis = vec![redis.url()];
    let a = start(config_a.clone()).await;
    let b = start(config_a).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        statuses.push(
            chat_as(&client, gateway, "shared", &chat(false))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut config = config();
    config.upstream = Some(format!("http://127.0.0.1:{port}"));
    let gateway = start(config).await;
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .json(&chat(false))
        .send()
        .await
        .expect("a response");
    let doc = problem(res, 502).await;
    assert_eq!(doc["error"]["type"], "upstream_error");
}

#[tokio::test]
async fn content_admin_health_and_metrics_answer() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();

    let res = client
        .get(format!("{}/v1/content/intro-1", gateway.url()))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.expect("JSON");
    assert_eq!(doc["id"], "intro-1");

    let res = client
        .get(format!("{}/v1/content/bad%20id", gateway.url()))
        .send()
        .await
        .expect("a response");
    problem(res, 400).await;

    let res = client
        .get(format!("{}/nowhere", gateway.url()))
        .send()
        .await
        .expect("a response");
    problem(res, 404).await;

    let res = client
        .get(format!("{}/admin/config", gateway.url()))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);

    let health = get_json(&client, format!("{}/healthz", gateway.url())).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["redis"]["configured"], false);
    assert!(health["circuits"].is_array());

    let res = chat_as(&client, &gateway, "metrics", &chat(false)).await;
    assert_eq!(res.status(), 200);

    let res = client
        .get(format!("{}/metrics", gateway.url()))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("text");
    assert!(
        text.contains("tower_ai_gateway_requests_total{route=\"/v1/content/{id}\",status=\"200\"}"),
        "{text}"
    );
    // A model route's stack carries the outer layers itself: its template
    // still names it.
    assert!(
        text.contains(
            "tower_ai_gateway_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn health_follows_redis_down_and_up_and_requests_keep_flowing() {
    let mut redis = RedisServer::start();
    let mut config = config();
    config.redis = vec![redis.url()];
    let gateway = start(config).await;
    let client = reqwest::Client::new();
    let health = || async {
        client
            .get(format!("{}/healthz", gateway.url()))
            .send()
            .await
            .expect("a response")
            .json::<Value>()
            .await
            .expect("JSON")
    };
    assert_eq!(health().await["redis"]["state"], "up");

    redis.stop();
    let h = health().await;
    assert_eq!(h["redis"]["state"], "down");
    assert_eq!(h["status"], "degraded");
    let res = client
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .json(&chat(false))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200, "Redis down never takes the gateway down");

    redis.restart();
    eventually_async(Duration::from_secs(15), || async {
        health().await["redis"]["state"] == "up"
    })
    .await
    .expect("Redis never came back");
}

#[tokio::test]
async fn a_failing_model_opens_its_circuit_and_recovers() {
    let mut config = config();
    config.circuit_open_wait = Duration::from_millis(800);
    let gateway = start(config).await;
    let mock = gateway.mock().expect("the in-process mock");
    let client = reqwest::Client::new();
    mock.set_fault(mock_llm::Fault {
        fail_rate: 1.0,
        ..mock_llm::Fault::default()
    });

    // Ten failures (a fresh key each, so no rate limit gets in the way):
    // 100% over at least 10 calls opens the model's circuit.
    for i in 0..10 {
        let res = chat_as(&client, &gateway, &format!("k{i}"), &chat(false)).await;
        assert_eq!(res.status(), 500, "the upstream's own error passes through");
    }
    let counted = mock.stats().requests;
    assert_eq!(counted, 10);

    // A call that reached the upstream now would take 5 s: a refusal
    // answers long before.
    mock.set_fault(mock_llm::Fault {
        fail_rate: 1.0,
        latency_ms: 5_000,
        ..mock_llm::Fault::default()
    });
    for i in 10..20 {
        let sent = Instant::now();
        let res = chat_as(&client, &gateway, &format!("k{i}"), &chat(false)).await;
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(4), "refused in {took:?}");
        // The fallback looked in the cache and found nothing for this
        // tenant: the breaker's refusal says when to come back.
        assert_eq!(
            header_u64(&res, "retry-after"),
            1,
            "0.8 s left open, rounded up"
        );
        problem(res, 503).await;
    }
    assert_eq!(
        mock.stats().requests,
        counted,
        "an open circuit spares the upstream"
    );
    let health = get_json(&client, format!("{}/healthz", gateway.url())).await;
    // One breaker per deployment, named from the config (here the demo's
    // single upstream, "*"), never from what a client sends.
    assert_eq!(health["circuits"][0]["key"], "*");
    assert_eq!(health["circuits"][0]["state"], "open");

    // The fault cleared and the wait over, three trial calls close it.
    mock.set_fault(mock_llm::Fault::default());
    tokio::time::sleep(Duration::from_millis(900)).await;
    for i in 20..23 {
        let res = chat_as(&client, &gateway, &format!("k{i}"), &chat(false)).await;
        assert_eq!(res.status(), 200);
    }
    let circuits = get_json(&client, format!("{}/admin/circuits", gateway.url())).await;
    assert_eq!(circuits[0]["state"], "closed");

    // And it can be forced open by hand.
    let res = client
        .post(format!("{}/admin/circuits", gateway.url()))
        .json(&json!({ "key": "*", "control": "force_open" }))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let res = chat_as(&client, &gateway, "k99", &chat(false)).await;
    assert_eq!(res.status(), 503);
}

/// The `sid` cookie a response sets, as a `Cookie` header value.
fn sid(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("sid="))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
}

async fn session_of(client: &reqwest::Client, gateway: &Gateway, cookie: &str) -> Value {
    client
        .get(format!("{}/session", gateway.url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("a response")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn sessions_are_shared_by_replicas_and_keep_the_conversation() {
    let redis = RedisServer::start();
    let mut shared = config();
    shared.redis = vec![redis.url()];
    let a = start(shared.clone()).await;
    let b = start(shared).await;
    let client = reqwest::Client::new();

    // A visitor's first session, then a login on A: the id changes.
    let res = client
        .get(format!("{}/session", a.url()))
        .send()
        .await
        .expect("a response");
    let visitor = sid(&res);
    let res = client
        .post(format!("{}/session/login", a.url()))
        .header("cookie", visitor.clone().unwrap_or_default())
        .json(&json!({ "user": "ada" }))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let cookie = sid(&res).expect("login sets a cookie");
    assert_ne!(Some(&cookie), visitor.as_ref(), "login cycles the id");

    // The same cookie opens the same session on B.
    assert_eq!(session_of(&client, &b, &cookie).await["user"], "ada");

    // A chat made with the session joins its history, answer included.
    let res = client
        .post(format!("{}/v1/chat/completions", b.url()))
        .header("cookie", &cookie)
        .json(&chat(true))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let streamed = res.text().await.expect("the stream");
    let answer = mock_llm::answer(&chat(true)).expect("the mock answers");
    assert!(streamed.contains("[DONE]"));
    let turns = session_of(&client, &a, &cookie).await["turns"].clone();
    assert_eq!(turns[0]["role"], "user");
    assert_eq!(turns[0]["content"], "Tell me about tower middleware.");
    assert_eq!(turns[1]["role"], "assistant");
    assert_eq!(turns[1]["content"], answer.content.as_str());

    // Logout on B: A answers the same cookie as a new visitor, at once.
    let res = client
        .post(format!("{}/session/logout", b.url()))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let after = session_of(&client, &a, &cookie).await;
    assert_eq!(after["user"], Value::Null);
    assert_eq!(after["turns"], json!([]));
}

/// Logs `user` in on `gateway`; the session cookie.
async fn login(client: &reqwest::Client, gateway: &Gateway, user: &str) -> String {
    let res = client
        .post(format!("{}/session/login", gateway.url()))
        .json(&json!({ "user": user }))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    sid(&res).expect("login sets a cookie")
}

#[tokio::test]
async fn a_cached_answer_joins_the_history_too() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();
    let cookie = login(&client, &gateway, "ada").await;
    for stream in [false, true] {
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let res = client
                .post(format!("{}/v1/chat/completions", gateway.url()))
                .header("cookie", &cookie)
                .header("authorization", "Bearer history-key")
                .json(&chat(stream))
                .send()
                .await
                .expect("a response");
            assert_eq!(res.status(), 200);
            statuses.push(
                res.headers()["cache-status"]
                    .to_str()
                    .unwrap_or("")
                    .to_owned(),
            );
            res.text().await.expect("the whole answer");
        }
        assert!(statuses[0].contains("fwd=miss"), "{statuses:?}");
        assert!(statuses[1].contains("; hit"), "{statuses:?}");
    }
    let answer = mock_llm::answer(&chat(false)).expect("the mock answers");
    let turns = session_of(&client, &gateway, &cookie).await["turns"].clone();
    let turns = turns.as_array().expect("a list of turns");
    assert_eq!(turns.len(), 8, "{turns:?}");
    for pair in turns.chunks(2) {
        assert_eq!(pair[0]["role"], "user");
        assert_eq!(pair[0]["content"], "Tell me about tower middleware.");
        assert_eq!(pair[1]["role"], "assistant");
        assert_eq!(pair[1]["content"], answer.content.as_str());
    }
    assert_eq!(gateway.mock().expect("the mock").stats().requests, 2);
}

#[tokio::test]
async fn a_client_chosen_session_id_is_never_adopted() {
    let gateway = start(config()).await;
    let client = reqwest::Client::new();
    let chosen = "sid=AAAAAAAAAAAAAAAAAAAAAA";
    let res = client
        .post(format!("{}/session/login", gateway.url()))
        .header("cookie", chosen)
        .json(&json!({ "user": "mallory" }))
        .send()
        .await
        .expect("a response");
    let issued = sid(&res).expect("a fresh id");
    assert_ne!(issued, chosen);
    assert_eq!(
        session_of(&client, &gateway, chosen).await["user"],
        Value::Null
    );
    assert_eq!(
        session_of(&client, &gateway, &issued).await["user"],
        "mallory"
    );

    // Garbage cookies are a fresh visitor, never an error.
    let long = format!("sid={}", "a".repeat(5_000));
    for bad in [&b"sid="[..], b"sid=%%%", b"sid=\xff\xfe", long.as_bytes()] {
        let value = reqwest::header::HeaderValue::from_bytes(bad).expect("a header value");
        let res = client
            .get(format!("{}/session", gateway.url()))
            .header("cookie", value)
            .send()
            .await
            .expect("a response");
        assert_eq!(res.status(), 200, "{bad:?}");
    }
}

/// Reads `res` as SSE, stopping after `limit` events (at the end without
/// one): the events, and how many heartbeat comments came.
async fn events(res: reqwest::Response, limit: Option<usize>) -> (Vec<SseEvent>, usize) {
    let mut reader = SseReader::new(res);
    let events = match limit {
        Some(n) => reader.take(n).await,
        None => reader.rest().await,
    };
    assert!(!reader.broken(), "the stream doesn't break: {reader:?}");
    (events, reader.comments())
}

async fn resume_on(
    client: &reqwest::Client,
    gateway: &Gateway,
    stream: &str,
    after: &str,
) -> reqwest::Response {
    client
        .get(format!("{}/v1/streams/{stream}", gateway.url()))
        .bearer_auth("resumer")
        .header("last-event-id", after)
        .send()
        .await
        .expect("a response")
}

/// Starts a streamed chat on `first`, reads `k` events, hangs up, and
/// resumes on `second`: the two parts make the whole answer, each event once.
async fn resume_after(first: &Gateway, second: &Gateway, k: usize) {
    let client = reqwest::Client::new();
    let res = chat_as(&client, first, "resumer", &chat(true)).await;
    assert_eq!(res.status(), 200);
    let stream = res
        .headers()
        .get("x-stream-id")
        .and_then(|v| v.to_str().ok())
        .expect("the stream's id")
        .to_owned();
    let (head, _) = events(res, Some(k)).await;
    assert_eq!(head.len(), k);
    let last_id = head[k - 1].id.clone();

    let res = resume_on(&client, second, &stream, &last_id).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok()),
        Some(last_id.as_str()),
        "the resumed response says what it resumes after"
    );
    let (tail, _) = events(res, None).await;
    assert_eq!(tail.last().map(|e| e.data.as_str()), Some("[DONE]"));

    let all: Vec<SseEvent> = head.into_iter().chain(tail).collect();
    let ids: std::collections::HashSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "no event twice");
    let answer = mock_llm::answer(&chat(true)).expect("the mock answers");
    assert_eq!(sse::text(&all), answer.content, "no event lost");
}

#[tokio::test]
async fn a_stream_resumes_on_the_same_gateway() {
    let mut config = config();
    config.mock_token_delay = Duration::from_millis(30);
    let gateway = start(config).await;
    resume_after(&gateway, &gateway, 4).await;
}

#[tokio::test]
async fn a_stream_resumes_on_another_replica_through_redis() {
    let redis = RedisServer::start();
    let mut shared = config();
    shared.redis = vec![redis.url()];
    shared.mock_token_delay = Duration::from_millis(30);
    let a = start(shared.clone()).await;
    let b = start(shared).await;
    resume_after(&a, &b, 5).await;
}

#[tokio::test]
async fn heartbeats_fill_idle_gaps_and_a_dropped_client_leaves_the_generation_running() {
    let mut config = config();
    config.mock_token_delay = Duration::from_millis(250);
    config.sse_heartbeat = Duration::from_millis(60);
    let gateway = start(config).await;
    let mock = gateway.mock().expect("the in-process mock");
    let client = reqwest::Client::new();

    let res = chat_as(&client, &gateway, "beats", &chat(true)).await;
    let (got, heartbeats) = events(res, Some(4)).await;
    assert_eq!(got.len(), 4);
    assert!(
        heartbeats >= 2,
        "{heartbeats} heartbeats in three 250 ms gaps"
    );

    // The client is gone; in resumable mode the generation completes.
    eventually(Duration::from_secs(30), || {
        mock.stats().streams_completed >= 1
    })
    .await
    .unwrap_or_else(|| panic!("{:?}", mock.stats()));
    assert_eq!(mock.stats().streams_cancelled, 0);
}

#[tokio::test]
async fn answers_are_cached_per_tenant_and_invalidated_by_tag() {
    let gateway = start(config()).await;
    let mock = gateway.mock().expect("the in-process mock");
    let client = reqwest::Client::new();
    let status = |res: &reqwest::Response| {
        res.headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };

    let first = chat_as(&client, &gateway, "tenant-a", &chat(false)).await;
    assert!(status(&first).contains("fwd=miss"), "{}", status(&first));
    let first: Value = first.json().await.expect("JSON");
    let second = chat_as(&client, &gateway, "tenant-a", &chat(false)).await;
    assert!(status(&second).contains("hit"), "{}", status(&second));
    let second: Value = second.json().await.expect("JSON");
    assert_eq!(first, second);
    assert_eq!(mock.stats().requests, 1);

    let other = chat_as(&client, &gateway, "tenant-b", &chat(false)).await;
    assert!(
        status(&other).contains("fwd=miss"),
        "another tenant never sees A's answer"
    );
    assert_eq!(mock.stats().requests, 2);

    let res = client
        .post(format!("{}/admin/cache/invalidate", gateway.url()))
        .json(&json!({ "tag": "model:mock-1" }))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let again = chat_as(&client, &gateway, "tenant-a", &chat(false)).await;
    assert!(status(&again).contains("fwd=miss"), "{}", status(&again));
    assert_eq!(mock.stats().requests, 3);

    let res = client
        .post(format!("{}/admin/cache/invalidate", gateway.url()))
        .json(&json!({ "key": "not hex" }))
        .send()
        .await
        .expect("a response");
    problem(res, 400).await;
}
