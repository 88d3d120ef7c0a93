//! The gateway's balancer end to end over real sockets: a model on several
//! deployments (each a mock LLM), a deployment failing, a stream holding its
//! deployment until it ends, a stream that breaks, and fallbacks to another
//! model.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mock_llm::{Fault, MockHandle};
use serde_json::{Value, json};
use test_support::sse::SseReader;
use tower_ai_gateway::{Config, Gateway};

async fn mock(token_delay: Duration) -> MockHandle {
    mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config {
            token_delay,
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock starts")
}

async fn gateway(toml: &str) -> Gateway {
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if let Err(e) = config.read_toml(toml, Path::new("test.toml"), |_| None) {
        panic!("a valid config: {e}\n{toml}");
    }
    Gateway::start(config).await.expect("the gateway starts")
}

/// A chat request for `model`; `key` is a fresh client key per request, so
/// no rate limit or cached answer gets in the way.
async fn chat(gateway: &Gateway, key: &str, model: &str, stream: bool) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.url()))
        .bearer_auth(key)
        .json(&json!({
            "model": model,
            "stream": stream,
            "max_tokens": 12,
            "messages": [{"role": "user", "content": format!("Hello from {key}")}],
        }))
        .send()
        .await
        .expect("a response")
}

async fn balance(gateway: &Gateway) -> Value {
    reqwest::get(format!("{}/admin/balance", gateway.url()))
        .await
        .expect("a response")
        .json()
        .await
        .expect("JSON")
}

/// The deployments of `model` in `/admin/balance`, by name.
async fn deployments(gateway: &Gateway, model: &str) -> Vec<Value> {
    let doc = balance(gateway).await;
    let models = doc["models"].as_array().expect("models");
    let model = models
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("{model} in {doc}"));
    model["deployments"]
        .as_array()
        .expect("deployments")
        .clone()
}

/// Polls `/admin/balance` until `check` holds for `model`'s deployments,
/// for at most 10 s.
async fn until(gateway: &Gateway, model: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = deployments(gateway, model).await;
        if check(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "never held: {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_spreads_over_its_deployments_and_routes_around_a_failing_one() {
    let (a, b) = (
        mock(Duration::from_millis(1)).await,
        mock(Duration::from_millis(1)).await,
    );
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "llama"
provider = "openai"
balance = "round_robin"
deployments = [
  {{ name = "a", base_url = "{}" }},
  {{ name = "b", base_url = "{}" }},
]
"#,
        a.base_url(),
        b.base_url()
    ))
    .await;

    for i in 0..6 {
        let res = chat(&gateway, &format!("spread-{i}"), "llama", false).await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!((a.stats().requests, b.stats().requests), (3, 3), "in turn");

    // `a` fails every call: each failure is retried on `b` before the
    // client sees anything, and three in a row cool `a` down.
    a.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    for i in 0..8 {
        let res = chat(&gateway, &format!("failing-{i}"), "llama", false).await;
        assert_eq!(res.status(), 200, "request {i}");
    }
    let failed_on_a = a.stats().requests - 3;
    assert_eq!(failed_on_a, 3, "cooled down after three failures");
    assert_eq!(b.stats().completions, 3 + 8);
    let now = deployments(&gateway, "llama").await;
    assert_eq!(now[0]["name"], "llama/a");
    assert_eq!(now[0]["failures"], 3);
    assert_eq!(now[0]["cooldowns"], 1);
    assert!(
        now[0]["cooling_for_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{now:?}"
    );
    assert_eq!(now[1]["failures"], 0);

    let metrics = reqwest::get(format!("{}/metrics", gateway.url()))
        .await
        .expect("a response")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("tower_ai_balance_cooldowns_total{pool=\"llama\",endpoint=\"llama/a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_deployment_until_it_ends() {
    // 300 ms a token and 8 to 12 tokens: the answer streams for seconds
    // after its first event.
    let slow = mock(Duration::from_millis(300)).await;
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "llama"
provider = "openai"
deployments = [{{ base_url = "{}", max_concurrency = 4 }}]
"#,
        slow.base_url()
    ))
    .await;

    let res = chat(&gateway, "streamer", "llama", true).await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let first = reader.next().await.expect("a first event");
    assert!(first.data.contains("chat.completion.chunk"), "{first:?}");
    let during = deployments(&gateway, "llama").await;
    assert_eq!(
        during[0]["in_flight"], 1,
        "the head came long ago; the stream goes on"
    );
    assert!(
        during[0]["tokens_in_flight"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );

    let rest = reader.rest().await;
    assert_eq!(rest.last().map(|e| e.data.as_str()), Some("[DONE]"));
    until(&gateway, "llama", |d| {
        d[0]["in_flight"] == 0 && d[0]["tokens_in_flight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_ends_with_an_error_event_and_is_not_retried() {
    let (a, b) = (
        mock(Duration::from_millis(1)).await,
        mock(Duration::from_millis(1)).await,
    );
    a.set_fault(Fault {
        break_after_tokens: Some(2),
        ..Fault::default()
    });
    b.set_fault(Fault {
        break_after_tokens: Some(2),
        ..Fault::default()
    });
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "llama"
provider = "openai"
deployments = [{{ base_url = "{}" }}, {{ base_url = "{}" }}]
"#,
        a.base_url(),
        b.base_url()
    ))
    .await;

    let res = chat(&gateway, "broken", "llama", true).await;
    assert_eq!(res.status(), 200, "the head went out before the break");
    let events = SseReader::new(res).rest().await;
    let last = events.last().expect("events");
    assert_ne!(last.data, "[DONE]", "never a clean end: {events:?}");
    assert!(
        last.data.contains("error"),
        "the client sees the error: {events:?}"
    );
    assert_eq!(
        a.stats().requests + b.stats().requests,
        1,
        "bytes went out: no second call"
    );
    until(&gateway, "llama", |d| {
        d.iter()
            .map(|d| d["failures"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 1
            && d.iter().all(|d| d["in_flight"] == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_falls_back_when_it_fails_or_its_circuit_is_open() {
    let (primary, backup) = (
        mock(Duration::from_millis(1)).await,
        mock(Duration::from_millis(1)).await,
    );
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "primary"
provider = "openai"
base_url = "{}"
fallbacks = ["backup"]

[[models]]
name = "backup"
provider = "openai"
base_url = "{}"
upstream_model = "backup-upstream"
"#,
        primary.base_url(),
        backup.base_url()
    ))
    .await;

    let res = chat(&gateway, "k1", "primary", false).await;
    assert_eq!(res.status(), 200);
    assert_eq!(backup.stats().requests, 0, "the primary answered");

    // The primary fails: the backup answers, under its own upstream name.
    primary.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    let res = chat(&gateway, "k2", "primary", false).await;
    assert_eq!(res.status(), 200);
    assert_eq!(primary.stats().failed, 1);
    assert_eq!(backup.stats().completions, 1);
    let sent = backup.last_request().expect("a request");
    assert_eq!(sent.model.as_deref(), Some("backup-upstream"));

    // The primary's circuit forced open: it isn't called at all, streamed
    // or not.
    primary.set_fault(Fault::default());
    let res = reqwest::Client::new()
        .post(format!("{}/admin/circuits", gateway.url()))
        .json(&json!({ "key": "primary", "control": "force_open" }))
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let before = primary.stats().requests;
    let res = chat(&gateway, "k3", "primary", false).await;
    assert_eq!(res.status(), 200);
    let res = chat(&gateway, "k4", "primary", true).await;
    assert_eq!(res.status(), 200);
    let events = SseReader::new(res).rest().await;
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert_eq!(primary.stats().requests, before);
    assert_eq!(backup.stats().completions, 2);
    assert_eq!(backup.stats().streams_started, 1);

    // A model without fallbacks still says what went wrong.
    let res = chat(&gateway, "k5", "backup", false).await;
    assert_eq!(res.status(), 200);
    backup.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    let res = chat(&gateway, "k6", "backup", false).await;
    assert_eq!(res.status(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_header_keeps_a_client_on_one_deployment() {
    let (a, b) = (
        mock(Duration::from_millis(1)).await,
        mock(Duration::from_millis(1)).await,
    );
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "llama"
provider = "openai"
balance = "round_robin"
sticky_header = "x-session-id"
deployments = [{{ base_url = "{}" }}, {{ base_url = "{}" }}]
"#,
        a.base_url(),
        b.base_url()
    ))
    .await;
    let client = reqwest::Client::new();
    let send = |key: String, session: &'static str| {
        client
            .post(format!("{}/v1/chat/completions", gateway.url()))
            .bearer_auth(key)
            .header("x-session-id", session)
            .json(&json!({"model": "llama", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
    };
    // Two sessions placed in turn, then each stays where it began.
    for i in 0..6 {
        let session = if i % 2 == 0 { "one" } else { "two" };
        let res = send(format!("sticky-{i}"), session)
            .await
            .expect("a response");
        assert_eq!(res.status(), 200);
    }
    assert_eq!(
        (a.stats().requests, b.stats().requests),
        (3, 3),
        "one session on each deployment"
    );
    // Session "one" sends three more: all to the deployment it began on.
    let before = (a.stats().requests, b.stats().requests);
    for i in 6..9 {
        let res = send(format!("sticky-{i}"), "one")
            .await
            .expect("a response");
        assert_eq!(res.status(), 200);
    }
    let after = (a.stats().requests, b.stats().requests);
    assert!(
        after == (before.0 + 3, before.1) || after == (before.0, before.1 + 3),
        "{before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_mode_model_is_served_by_its_deployments_pullers() {
    let (a, b) = (
        mock(Duration::from_millis(1)).await,
        mock(Duration::from_millis(1)).await,
    );
    let redis = test_support::shared::redis();
    let gateway = gateway(&format!(
        r#"
redis = ["{}"]

[[models]]
name = "pulled-{}"
provider = "openai"
balance = "pull"
deployments = [{{ base_url = "{}", max_concurrency = 2 }}, {{ base_url = "{}", max_concurrency = 2 }}]
"#,
        redis.url(),
        std::process::id(),
        a.base_url(),
        b.base_url()
    ))
    .await;
    let model = format!("pulled-{}", std::process::id());
    let doc = balance(&gateway).await;
    assert_eq!(doc["models"][0]["balance"], "pull", "{doc}");

    let mut answers = Vec::new();
    for i in 0..6 {
        let res = chat(&gateway, &format!("pull-{i}"), &model, false).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.expect("JSON");
        assert!(
            body["usage"]["completion_tokens"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{body}"
        );
        answers.push(body);
    }
    let res = chat(&gateway, "pull-stream", &model, true).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("x-stream-id").is_some(),
        "through the relay"
    );
    let events = SseReader::new(res).rest().await;
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert_eq!(
        a.stats().requests + b.stats().requests,
        7,
        "each request ran once, on a deployment's puller"
    );

    // Without Redis, pull mode is refused at start.
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
        .read_toml(
            &format!(
                "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbalance = \"pull\"\nbase_url = \"{}\"\n",
                a.base_url()
            ),
            Path::new("test.toml"),
            |_| None,
        )
        .expect("a valid file");
    let err = Gateway::start(config).await.expect_err("refused");
    assert!(err.to_string().contains("needs redis"), "{err}");
}

/// A mock served by a simulated vLLM server (its costs cut 20-fold).
async fn simulated() -> MockHandle {
    mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config {
            simulate: Some(mock_llm::fleet::SimConfig {
                costs: mock_llm::fleet::Costs::default().scaled(0.05),
                ..mock_llm::fleet::SimConfig::default()
            }),
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_aware_sends_each_conversation_back_to_the_server_holding_its_cache() {
    let servers = [simulated().await, simulated().await, simulated().await];
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "llama"
provider = "openai"
balance = "cache_aware"
deployments = [{{ base_url = "{}" }}, {{ base_url = "{}" }}, {{ base_url = "{}" }}]
"#,
        servers[0].base_url(),
        servers[1].base_url(),
        servers[2].base_url()
    ))
    .await;
    let client = reqwest::Client::new();
    let mut conversations: Vec<Vec<Value>> = (0..4)
        .map(|c| {
            vec![json!({
                "role": "system",
                "content": format!("You are assistant number {c}, with a long and particular brief. ").repeat(12),
            })]
        })
        .collect();
    let mut request = 0;
    for turn in 0..3 {
        for (c, messages) in conversations.iter_mut().enumerate() {
            messages.push(json!({"role": "user", "content": format!("Question {turn} of conversation {c}, asked at some length.")}));
            request += 1;
            let res = client
                .post(format!("{}/v1/chat/completions", gateway.url()))
                .bearer_auth(format!("conversation-{request}"))
                .json(&json!({"model": "llama", "messages": messages}))
                .send()
                .await
                .expect("a response");
            assert_eq!(res.status(), 200);
            let body: Value = res.json().await.expect("JSON");
            let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached_tokens");
            if turn == 0 {
                assert_eq!(cached, 0, "conversation {c} is new");
            } else {
                // The whole conversation so far is cached where it was
                // served: at least the system prompt's 700 bytes.
                assert!(
                    cached >= 160,
                    "conversation {c}, turn {turn}: {cached} cached tokens"
                );
            }
            let answer = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            messages.push(json!({"role": "assistant", "content": answer}));
        }
    }
    let doc = balance(&gateway).await;
    let hits: Vec<f64> = doc["models"][0]["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter_map(|d| d["prefix_hit_rate"].as_f64())
        .collect();
    assert!(hits.iter().filter(|h| **h > 0.5).count() >= 2, "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_pullers_is_served_by_a_worker() {
    let upstream = mock(Duration::from_millis(1)).await;
    let redis = test_support::shared::redis();
    let model = format!("worked-{}", std::process::id());
    let toml = format!(
        r#"
redis = ["{}"]
pullers = false

[[models]]
name = "{model}"
provider = "openai"
balance = "pull"
base_url = "{}"
"#,
        redis.url(),
        upstream.base_url()
    );
    let gateway = gateway(&toml).await;
    let mut config = Config::default();
    config
        .read_toml(&toml, Path::new("worker.toml"), |_| None)
        .expect("a valid file");
    // The gateway only queues: a request waits until a worker starts.
    let pending = tokio::spawn({
        let url = gateway.url();
        let model = model.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth("queued")
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}))
                .send()
                .await
        }
    });
    let client = redis.client().await;
    let queue = format!("tower-ai:balance:{{{model}}}:queue");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued: u64 = fred::interfaces::StreamsInterface::xlen(&client, &queue)
            .await
            .unwrap_or(0);
        if queued == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the request was never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing in the gateway takes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    assert_eq!(upstream.stats().requests, 0);
    let worker = tower_ai_gateway::Worker::start(config)
        .await
        .expect("a worker");
    assert_eq!(worker.models(), std::slice::from_ref(&model));
    let res = pending.await.expect("the task").expect("a response");
    assert_eq!(res.status(), 200);
    assert_eq!(upstream.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deployments_own_metrics_are_read() {
    let servers = [simulated().await, simulated().await];
    let plain = mock(Duration::from_millis(1)).await;
    let gateway = gateway(&format!(
        r#"
[[models]]
name = "llama"
provider = "openai"
balance = "least_loaded"
metrics_interval_ms = 20
deployments = [{{ base_url = "{}/v1" }}, {{ base_url = "{}" }}, {{ base_url = "{}" }}]
"#,
        servers[0].base_url(),
        servers[1].base_url(),
        plain.base_url()
    ))
    .await;
    // The simulated vLLM servers' metrics are read (from /metrics at their
    // root, though the base URL ends in /v1); the plain mock has none.
    let now = until(&gateway, "llama", |d| {
        d[0]["kv_usage"].is_number() && d[1]["kv_usage"].is_number()
    })
    .await;
    assert_eq!(now[0]["reported_waiting"], 0);
    assert!(now[2]["kv_usage"].is_null(), "{now:?}");
    let res = chat(&gateway, "metrics", "llama", false).await;
    assert_eq!(res.status(), 200);
}
