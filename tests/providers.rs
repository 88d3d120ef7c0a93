//! The gateway in front of providers, end to end over real sockets: a
//! config file with a model table, https upstreams, every endpoint (and
//! each API's usage format), client keys and tiers, the admin token,
//! budgets across replicas, and stream ownership. The mock LLM plays every
//! provider.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mock_llm::MockHandle;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use test_support::RedisServer;
use test_support::sse::{SseEvent, SseReader};
use test_support::tls::TlsFront;
use tower_ai_gateway::{Config, Gateway};

const OPENAI_KEY: &str = "sk-provider-openai";
const ANTHROPIC_KEY: &str = "sk-provider-anthropic";

fn env(name: &str) -> Option<String> {
    match name {
        "TEST_OPENAI_KEY" => Some(OPENAI_KEY.to_owned()),
        "TEST_ANTHROPIC_KEY" => Some(ANTHROPIC_KEY.to_owned()),
        "TEST_ADMIN_TOKEN" => Some("admin-token".to_owned()),
        _ => None,
    }
}

async fn mock() -> MockHandle {
    mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config {
            token_delay: Duration::from_millis(1),
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock starts")
}

/// A gateway from config-file text.
async fn gateway(toml: &str) -> Gateway {
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Err(e) = config.read_toml(toml, Path::new("test.toml"), env) {
        panic!("a valid config: {e}\n{toml}");
    }
    Gateway::start(config).await.expect("the gateway starts")
}

/// The models every test serves, on `mock`: an OpenAI-compatible chat and
/// embedding model (renamed upstream) and an Anthropic one.
fn models(mock: &MockHandle) -> String {
    let url = mock.base_url();
    format!(
        r#"
[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "TEST_OPENAI_KEY"
upstream_model = "mock-mini"

[[models]]
name = "text-embedding-3-small"
provider = "openai"
base_url = "{url}"
api_key_env = "TEST_OPENAI_KEY"

[[models]]
name = "claude-3-5-haiku"
provider = "anthropic"
base_url = "{url}"
api_key_env = "TEST_ANTHROPIC_KEY"
"#
    )
}

/// A fresh folder for files a test writes.
fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "providers-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc: Value = res.json().await.expect("a JSON problem document");
    assert_eq!(doc["status"], status);
    doc
}

fn header_u64(res: &reqwest::Response, name: &str) -> u64 {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a numeric {name} header"))
}

async fn post(gateway: &Gateway, path: &str, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", gateway.url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("a response")
}

/// `GET {url}`, with a bearer token when given.
async fn get(url: String, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("a response")
}

async fn get_json(url: String, token: Option<&str>) -> Value {
    get(url, token).await.json().await.expect("JSON")
}

async fn get_text(url: String) -> String {
    get(url, None).await.text().await.expect("text")
}

async fn events(res: reqwest::Response) -> Vec<SseEvent> {
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let events = reader.rest().await;
    assert!(!reader.broken(), "the stream doesn't break: {reader:?}");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaches_a_tls_upstream_with_its_ca_and_refuses_an_untrusted_one() {
    let mock = mock().await;
    let front = TlsFront::start(mock.addr()).await.expect("a TLS front");
    let misnamed = TlsFront::start_for_host(mock.addr(), "not-this-host.example")
        .await
        .expect("a TLS front");
    let dir = scratch();
    let ca = front.write_ca(&dir).expect("the CA file");
    std::fs::create_dir_all(dir.join("misnamed")).expect("a folder");
    let misnamed_ca = misnamed
        .write_ca(dir.join("misnamed"))
        .expect("the CA file");
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "secure"
provider = "openai"
base_url = "{}/v1"
api_key_env = "TEST_OPENAI_KEY"
tls_ca_file = "{}"

[[models]]
name = "untrusted"
provider = "openai"
base_url = "{}/v1"

[[models]]
name = "misnamed"
provider = "openai"
base_url = "{}/v1"
tls_ca_file = "{}"
"#,
        front.url(),
        ca.display(),
        front.url(),
        misnamed.url(),
        misnamed_ca.display(),
    ))
    .await;

    let chat = test_support::chat::request("Over TLS, please.")
        .model("secure")
        .json();
    let res = post(&gateway, "/v1/chat/completions", "client", &chat).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("JSON");
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);
    let mut streamed = test_support::chat::request("Over TLS, streamed.")
        .model("secure")
        .stream(true)
        .json();
    streamed["stream_options"] = json!({ "include_usage": true });
    let all = events(post(&gateway, "/v1/chat/completions", "client", &streamed).await).await;
    assert_eq!(all.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert!(all.len() > 3, "token by token: {}", all.len());
    // The upstream offered HTTP/2, and the gateway took it.
    assert!(
        front.negotiated_count(b"h2") >= 1,
        "{:?}",
        front.negotiated()
    );
    let last = mock.last_request().expect("the mock saw the calls");
    assert_eq!(
        last.authorization.as_deref(),
        Some("Bearer sk-provider-openai")
    );

    for (model, cause) in [
        ("untrusted", "UnknownIssuer"),
        ("misnamed", "not valid for name"),
    ] {
        let body = test_support::chat::request("Hello?").model(model).json();
        let res = tokio::time::timeout(
            Duration::from_secs(20),
            post(&gateway, "/v1/chat/completions", "client", &body),
        )
        .await
        .expect("a TLS failure is an answer, never a hang");
        let doc = problem(res, 502).await;
        let detail = doc["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("TLS"), "{detail}");
        assert!(detail.contains(cause), "{detail}");
        assert_eq!(doc["error"]["type"], "upstream_error");
    }
}

/// A request body of each API, asking for far more output than the mock
/// writes, so that its token estimate is far above its usage.
fn body(path: &str, text: &str, stream: bool) -> Value {
    match path {
        "/v1/chat/completions" => json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "user", "content": text }],
            "max_tokens": 2_000,
            "stream": stream,
            "stream_options": if stream { json!({ "include_usage": true }) } else { Value::Null },
        }),
        "/v1/completions" => json!({
            "model": "gpt-4o-mini",
            "prompt": text,
            "max_tokens": 2_000,
            "stream": stream,
            "stream_options": if stream { json!({ "include_usage": true }) } else { Value::Null },
        }),
        "/v1/embeddings" => json!({
            "model": "text-embedding-3-small",
            "input": [text],
        }),
        "/v1/responses" => json!({
            "model": "gpt-4o-mini",
            "input": text,
            "max_output_tokens": 2_000,
            "stream": stream,
        }),
        "/v1/messages" => json!({
            "model": "claude-3-5-haiku",
            "max_tokens": 2_000,
            "messages": [{ "role": "user", "content": text }],
            "stream": stream,
        }),
        other => panic!("no body for {other}"),
    }
}

/// The tokens an answer reports, in its own API's format.
fn reported(path: &str, answer: &Value) -> u64 {
    let usage = &answer["usage"];
    match path {
        "/v1/responses" | "/v1/messages" => {
            usage["input_tokens"].as_u64().unwrap_or(0)
                + usage["output_tokens"].as_u64().unwrap_or(0)
        }
        _ => usage["total_tokens"].as_u64().unwrap_or(0),
    }
}

/// The tokens a stream reports, in its own API's format.
fn reported_by_stream(path: &str, events: &[SseEvent]) -> u64 {
    let data: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(&e.data).ok())
        .collect();
    match path {
        "/v1/responses" => data
            .iter()
            .find(|d| d["type"] == "response.completed")
            .map_or(0, |d| reported(path, &d["response"])),
        "/v1/messages" => {
            let input = data
                .iter()
                .find(|d| d["type"] == "message_start")
                .and_then(|d| d["message"]["usage"]["input_tokens"].as_u64());
            let output = data
                .iter()
                .rev()
                .find(|d| d["type"] == "message_delta")
                .and_then(|d| d["usage"]["output_tokens"].as_u64());
            input.unwrap_or(0) + output.unwrap_or(0)
        }
        _ => data
            .iter()
            .rev()
            .find_map(|d| d["usage"]["total_tokens"].as_u64())
            .unwrap_or(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_reconciles_its_own_usage_format() {
    let mock = mock().await;
    // A token bucket that doesn't refill within the test, so the remaining
    // count tells exactly what was charged.
    let gateway = gateway(&format!(
        r#"{}
[[limits]]
route = "/v1/"
requests = {{ capacity = 1000, per_second = 100.0 }}
tokens = {{ capacity = 1000000, per_hour = 1.0 }}
"#,
        models(&mock)
    ))
    .await;
    let endpoints = [
        ("/v1/chat/completions", true),
        ("/v1/completions", true),
        ("/v1/embeddings", false),
        ("/v1/responses", true),
        ("/v1/messages", true),
    ];
    for (path, streams) in endpoints {
        for stream in [false, true] {
            if stream && !streams {
                continue;
            }
            let key = format!("usage-{path}-{stream}");
            // The same shape twice (different words, the same length): the
            // same estimate. So the second call's remaining count shows the
            // first one charged at its reported usage.
            let first = post(&gateway, path, &key, &body(path, "alpha bravo", stream)).await;
            assert_eq!(first.status(), 200, "{path} stream={stream}");
            let after_first = header_u64(&first, "x-ratelimit-remaining-tokens");
            let mut replayed_first = Vec::new();
            let usage = if stream {
                let all = events(first).await;
                replayed_first.clone_from(&all);
                assert!(
                    all.iter().any(|e| e.event != "message")
                        == (path == "/v1/responses" || path == "/v1/messages"),
                    "{path}: event names pass through: {:?}",
                    all.iter().map(|e| &e.event).collect::<Vec<_>>()
                );
                reported_by_stream(path, &all)
            } else {
                let answer: Value = first.json().await.expect("JSON");
                reported(path, &answer)
            };
            assert!(usage > 0, "{path} stream={stream} reports its usage");
            let second = post(&gateway, path, &key, &body(path, "delta gamma", stream)).await;
            assert_eq!(second.status(), 200);
            let after_second = header_u64(&second, "x-ratelimit-remaining-tokens");
            let estimate = 1_000_000 - after_first;
            assert!(
                estimate > usage,
                "{path}: estimate {estimate}, usage {usage}"
            );
            let charged = after_first - after_second;
            assert!(
                charged.abs_diff(usage) <= 1,
                "{path} stream={stream}: the first call was charged {charged}, its usage is {usage}"
            );
            let _ = second.bytes().await;
            if stream {
                // The same request again is a cache hit, replayed with the
                // same events, named as the upstream named them.
                let again = post(&gateway, path, &key, &body(path, "alpha bravo", stream)).await;
                assert!(
                    again
                        .headers()
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains("hit")),
                    "{path}: {:?}",
                    again.headers().get("cache-status")
                );
                let replay = events(again).await;
                let names =
                    |all: &[SseEvent]| all.iter().map(|e| e.event.clone()).collect::<Vec<_>>();
                let first_names = names(&replayed_first);
                assert_eq!(
                    names(&replay),
                    first_names,
                    "{path}: the replay keeps the event names"
                );
            }
        }
    }

    // What reached the upstream: the provider's key, the way its provider
    // wants it, the upstream's name for the model; never the client's key.
    let last = mock.last_request().expect("the mock saw the calls");
    assert_eq!(last.path, "/v1/messages");
    assert_eq!(last.x_api_key.as_deref(), Some(ANTHROPIC_KEY));
    assert!(last.authorization.is_none());
    assert!(last.anthropic_version.is_some());
    let chat = post(
        &gateway,
        "/v1/chat/completions",
        "client-key",
        &body("/v1/chat/completions", "rename me", false),
    )
    .await;
    assert_eq!(chat.status(), 200);
    let last = mock.last_request().expect("the mock saw the call");
    assert_eq!(last.path, "/v1/chat/completions", "no doubled /v1");
    assert_eq!(last.model.as_deref(), Some("mock-mini"));
    assert_eq!(
        last.authorization.as_deref(),
        Some("Bearer sk-provider-openai")
    );
    assert!(last.x_api_key.is_none());

    // Per model, with the config's names as labels.
    let metrics = get_text(format!("{}/metrics", gateway.url())).await;
    for series in [
        "tower_ai_gateway_input_tokens_total{model=\"claude-3-5-haiku\",key=\"-\"}",
        "tower_ai_gateway_output_tokens_total{model=\"gpt-4o-mini\",key=\"-\"}",
        "tower_ai_gateway_time_to_first_token_seconds",
        "tower_ai_gateway_request_duration_seconds",
        "tower_ai_gateway_model_requests_total",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    // The times are histograms, whose buckets add up across replicas.
    for series in [
        "# TYPE tower_ai_gateway_time_to_first_token_seconds histogram",
        "tower_ai_gateway_time_to_first_token_seconds_bucket{model=\"gpt-4o-mini\",le=\"0.005\"}",
        "tower_ai_gateway_request_duration_seconds_bucket{model=\"claude-3-5-haiku\",le=\"+Inf\"}",
        "# TYPE tower_ai_gateway_response_head_seconds histogram",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    let endpoints = mock.endpoints();
    assert!(endpoints.chat > 0 && endpoints.completions > 0 && endpoints.embeddings > 0);
    assert!(endpoints.responses > 0 && endpoints.messages > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_and_an_unknown_one_is_not_found() {
    let mock = mock().await;
    let gateway = gateway(&models(&mock)).await;
    let list: Value = get_json(format!("{}/v1/models", gateway.url()), Some("anyone")).await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        ids,
        ["gpt-4o-mini", "text-embedding-3-small", "claude-3-5-haiku"]
    );
    assert_eq!(list["data"][2]["owned_by"], "anthropic");

    let before = mock.stats().requests;
    let res = post(
        &gateway,
        "/v1/chat/completions",
        "anyone",
        &test_support::chat::request("Hi")
            .model("gpt-5-ultra")
            .json(),
    )
    .await;
    let doc = problem(res, 404).await;
    assert_eq!(doc["error"]["code"], "model_not_found");
    assert_eq!(mock.stats().requests, before, "nothing went upstream");
    // Unknown names make no metric label.
    let metrics = get_text(format!("{}/metrics", gateway.url())).await;
    assert!(!metrics.contains("gpt-5-ultra"));

    // With no model table, the list is the upstream's.
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream = Some(mock.base_url());
    let open = Gateway::start(config).await.expect("the gateway starts");
    let list: Value = get_json(format!("{}/v1/models", open.url()), None).await;
    assert!(list["data"].as_array().is_some_and(|d| !d.is_empty()));
}

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_keys_are_served_each_at_its_tier() {
    let mock = mock().await;
    let gateway = gateway(&format!(
        r#"{}
[admin]
token_env = "TEST_ADMIN_TOKEN"

[[keys]]
name = "team-pro"
key = "sk-pro"
tier = "pro"

[[keys]]
name = "team-free"
key_sha256 = "{}"
tier = "free"

[[limits]]
route = "/v1/chat/completions"
tier = "pro"
requests = {{ capacity = 3, per_hour = 1.0 }}

[[limits]]
route = "/v1/chat/completions"
tier = "free"
requests = {{ capacity = 1, per_hour = 1.0 }}
"#,
        models(&mock),
        sha256_hex("sk-free")
    ))
    .await;
    let client = reqwest::Client::new();
    let chat = |n: usize| {
        test_support::chat::request(&format!("Question number {n}."))
            .model("gpt-4o-mini")
            .json()
    };

    // No key, an unknown key: 401, before anything else runs.
    let res = client
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .json(&chat(0))
        .send()
        .await
        .expect("a response");
    let doc = problem(res, 401).await;
    assert_eq!(doc["error"]["code"], "invalid_api_key");
    let doc = problem(
        post(&gateway, "/v1/chat/completions", "sk-nope", &chat(0)).await,
        401,
    )
    .await;
    assert_eq!(doc["error"]["code"], "invalid_api_key");
    assert_eq!(mock.stats().requests, 0);

    // Each tier has its limits.
    for n in 1..=3 {
        let res = post(&gateway, "/v1/chat/completions", "sk-pro", &chat(n)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header_u64(&res, "x-ratelimit-limit"), 3);
    }
    problem(
        post(&gateway, "/v1/chat/completions", "sk-pro", &chat(4)).await,
        429,
    )
    .await;
    // The key in x-api-key (as Anthropic's SDKs send it) works too.
    let res = client
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .header("x-api-key", "sk-free")
        .json(&chat(5))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    assert_eq!(header_u64(&res, "x-ratelimit-limit"), 1);
    problem(
        post(&gateway, "/v1/chat/completions", "sk-free", &chat(6)).await,
        429,
    )
    .await;
    // The client's key never reached the upstream.
    let last = mock.last_request().expect("the mock saw the calls");
    assert_eq!(
        last.authorization.as_deref(),
        Some("Bearer sk-provider-openai")
    );

    // The admin API needs the admin token.
    for token in [None, Some("sk-pro"), Some("wrong")] {
        problem(
            get(format!("{}/admin/keys", gateway.url()), token).await,
            401,
        )
        .await;
    }
    let keys: Value = get_json(format!("{}/admin/keys", gateway.url()), Some("admin-token")).await;
    assert_eq!(keys["keys"][0]["name"], "team-pro");
    assert_eq!(keys["keys"][1]["tier"], "free");
    assert!(!keys.to_string().contains("sk-pro"), "never the key itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_three_replicas_on_redis() {
    let redis = RedisServer::start();
    let mock = mock().await;
    // $1,000 per million tokens: a token costs a tenth of a cent, and a
    // call of ~50 tokens about five cents. The budget is fifty cents a day.
    let toml = format!(
        r#"
redis = ["{}"]

[admin]
token_env = "TEST_ADMIN_TOKEN"

[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "{}/v1"
price = {{ input_per_mtok = 1000.0, output_per_mtok = 1000.0 }}

[[keys]]
name = "capped"
key = "sk-capped"
budget = {{ usd = 0.5, per = "day" }}

[[limits]]
route = "/v1/"
requests = {{ capacity = 1000, per_second = 100.0 }}
"#,
        redis.url(),
        mock.base_url()
    );
    let replicas = [
        gateway(&toml).await,
        gateway(&toml).await,
        gateway(&toml).await,
    ];
    let chat = |n: usize| {
        let mut body = test_support::chat::request(&format!("Spend number {n}."))
            .model("gpt-4o-mini")
            .json();
        // An estimate (max_tokens 200: ~20 cents) far above the real cost.
        body["max_tokens"] = json!(200);
        body
    };

    // A burst on every replica at once: every call is admitted or refused
    // whole (the reservations are atomic), and the spend check at the end
    // holds whatever the interleaving.
    let burst = futures_util::future::join_all((0..6).map(|n| {
        let gateway = &replicas[n % 3];
        let body = chat(n);
        async move {
            post(gateway, "/v1/chat/completions", "sk-capped", &body)
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(burst.contains(&200), "{burst:?}");
    assert!(burst.iter().all(|s| *s == 200 || *s == 429), "{burst:?}");

    // Then one call after another, round the replicas, until the budget is
    // spent: each settled at its real cost, so more fit than the burst.
    let mut n = 100;
    let refused_at = loop {
        let gateway = &replicas[n % 3];
        let res = post(gateway, "/v1/chat/completions", "sk-capped", &chat(n)).await;
        if res.status() == 429 {
            break n;
        }
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await;
        n += 1;
        assert!(n < 200, "the budget never ran out");
    };
    assert!(refused_at > 100, "settled reservations made room");
    // Every replica refuses now, the same way.
    for (i, gateway) in replicas.iter().enumerate() {
        let res = post(
            gateway,
            "/v1/chat/completions",
            "sk-capped",
            &chat(1_000 + i),
        )
        .await;
        let retry = header_u64(&res, "retry-after");
        assert!((1..=86_400).contains(&retry), "until the day ends: {retry}");
        let doc = problem(res, 429).await;
        assert_eq!(doc["error"]["type"], "insufficient_quota");
    }
    // The spend is visible, and over the budget by less than one estimate.
    let keys: Value = get_json(
        format!("{}/admin/keys", replicas[1].url()),
        Some("admin-token"),
    )
    .await;
    let spent = keys["keys"][0]["budget"]["spent_usd"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((0.5..0.75).contains(&spent), "spent {spent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_key_that_started_a_stream_can_reattach() {
    let mock = mock().await;
    let gateway = gateway(&format!(
        r#"{}
[[keys]]
key = "sk-a"
[[keys]]
key = "sk-b"
"#,
        models(&mock)
    ))
    .await;
    let client = reqwest::Client::new();
    let body = body("/v1/messages", "a private answer", true);
    let res = post(&gateway, "/v1/messages", "sk-a", &body).await;
    assert_eq!(res.status(), 200);
    let stream = res
        .headers()
        .get("x-stream-id")
        .and_then(|v| v.to_str().ok())
        .expect("the stream's id")
        .to_owned();
    let all = events(res).await;
    assert_eq!(all.last().map(|e| e.event.as_str()), Some("message_stop"));

    let url = format!("{}/v1/streams/{stream}", gateway.url());
    let other = client
        .get(&url)
        .bearer_auth("sk-b")
        .send()
        .await
        .expect("a response");
    let doc = problem(other, 404).await;
    let unknown = client
        .get(format!(
            "{}/v1/streams/AAAAAAAAAAAAAAAAAAAAAA",
            gateway.url()
        ))
        .bearer_auth("sk-a")
        .send()
        .await
        .expect("a response");
    let unknown = problem(unknown, 404).await;
    assert_eq!(doc["title"], unknown["title"], "as if it didn't exist");

    let own = client
        .get(&url)
        .bearer_auth("sk-a")
        .header("last-event-id", "earliest")
        .send()
        .await
        .expect("a response");
    let replay = events(own).await;
    assert_eq!(
        replay.iter().map(|e| &e.data).collect::<Vec<_>>(),
        all.iter().map(|e| &e.data).collect::<Vec<_>>(),
        "the owner reads the whole stream again"
    );
}

#[tokio::test]
async fn a_bad_config_file_is_refused_with_its_line() {
    let dir = scratch();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n\n[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"http://h\"\nprize = 1\n",
    )
    .expect("the file");
    let args = ["--config".to_owned(), path.display().to_string()];
    let err = Config::from_args(args).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("gateway.toml:7"), "{text}");
    assert!(text.contains("prize"), "{text}");
    let err = Config::from_args(["--config", "/nonexistent/gateway.toml"]).expect_err("refused");
    assert!(err.to_string().contains("can't read it"), "{err}");
}
