//! The context layer and the semantic cache in the gateway, end to end over
//! real sockets: documents ingested through `/admin/context/documents`, the
//! mock upstream echoing the system messages it received (so the test sees
//! exactly what was injected, streamed and not), tenants kept apart, and a
//! paraphrase answered from the cache.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mock_llm::MockHandle;
use serde_json::{Value, json};
use test_support::sse::SseReader;
use tower_ai_gateway::{Config, Gateway};

const ADMIN: &str = "admin-token";

async fn mock() -> MockHandle {
    mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config {
            token_delay: Duration::from_millis(1),
            echo_system: true,
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock starts")
}

async fn gateway(mock: &MockHandle) -> Gateway {
    gateway_with(mock, "").await
}

/// With `top` at the top of the file and `context` in `[context]`.
async fn gateway_with(mock: &MockHandle, extra: &str) -> Gateway {
    let url = mock.base_url();
    let (top, context) = extra.split_once('|').unwrap_or(("", ""));
    let toml = format!(
        r#"
{top}

[[models]]
name = "chat"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "KEY"

[[models]]
name = "embed"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "KEY"

[admin]
token_env = "ADMIN"

[[keys]]
name = "team-a"
key = "sk-a"

[[keys]]
name = "team-b"
key = "sk-b"

[context]
embeddings_model = "embed"
dimensions = 64
top_k = 3
{context}

[cache]
semantic = true
"#
    );
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let env = |name: &str| match name {
        "KEY" => Some("sk-provider".to_owned()),
        "ADMIN" => Some(ADMIN.to_owned()),
        _ => None,
    };
    if let Err(e) = config.read_toml(&toml, Path::new("test.toml"), env) {
        panic!("a valid config: {e}");
    }
    Gateway::start(config).await.expect("the gateway starts")
}

async fn post(gateway: &Gateway, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", gateway.url()))
        .json(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.expect("a response")
}

fn ask(question: &str, stream: bool) -> Value {
    json!({"model": "chat", "stream": stream, "messages": [
        {"role": "system", "content": "Answer from the passages."},
        {"role": "user", "content": question}
    ]})
}

/// The answer's text (the system messages the mock received) and the
/// context header.
async fn answer(gateway: &Gateway, key: &str, question: &str, stream: bool) -> (String, String) {
    let res = post(
        gateway,
        "/v1/chat/completions",
        Some(key),
        &ask(question, stream),
    )
    .await;
    assert_eq!(res.status(), 200);
    let header = res
        .headers()
        .get("x-context-injected")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = if stream {
        let mut reader = SseReader::new(res);
        let mut text = String::new();
        for event in reader.rest().await {
            if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
                text.push_str(
                    chunk["choices"][0]["delta"]["content"]
                        .as_str()
                        .unwrap_or(""),
                );
            }
        }
        text
    } else {
        let body: Value = res.json().await.expect("JSON");
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    (text, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_passages_reach_the_model_streamed_and_not_for_their_tenant_only() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    for (id, text, tenant) in [
        (
            "refunds",
            "{{embed:refunds}} Refunds take five working days.",
            json!("team-a"),
        ),
        (
            "refunds-b",
            "{{embed:refunds}} Team B refunds take a month.",
            json!("team-b"),
        ),
    ] {
        let res = post(
            &gateway,
            "/admin/context/documents",
            Some(ADMIN),
            &json!({"id": id, "text": text, "tenant": tenant}),
        )
        .await;
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
    }
    let res = post(
        &gateway,
        "/admin/context/documents",
        Some(ADMIN),
        &json!({"id": "hours", "text": "{{embed:refunds~0.9~hours}} The desk opens at nine.", "public": true}),
    )
    .await;
    assert_eq!(res.status(), 200);

    for stream in [false, true] {
        let question = format!("{{{{embed:refunds}}}} How long do refunds take? ({stream})");
        let (seen, header) = answer(&gateway, "sk-a", &question, stream).await;
        // The client's system prompt first, then the passages, best first.
        assert!(
            seen.starts_with("Answer from the passages.\n---\nPassages retrieved"),
            "{seen}"
        );
        let own = seen
            .find("Refunds take five working days.")
            .expect("team A's passage");
        let public = seen
            .find("The desk opens at nine.")
            .expect("the public passage");
        assert!(own < public, "best first: {seen}");
        assert!(
            !seen.contains("Team B"),
            "team B's passage reached team A: {seen}"
        );
        assert!(
            header.starts_with("passages=2, history=0, profile=0, tokens="),
            "{header}"
        );

        let (seen, _) = answer(&gateway, "sk-b", &question, stream).await;
        assert!(seen.contains("Team B refunds take a month."), "{seen}");
        assert!(
            !seen.contains("five working days"),
            "team A's passage reached team B: {seen}"
        );
    }

    // Deleted: no longer injected.
    let res = reqwest::Client::new()
        .delete(format!(
            "{}/admin/context/documents/refunds?tenant=team-a",
            gateway.url()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("a response");
    assert_eq!(res.status(), 200);
    let (seen, _) = answer(&gateway, "sk-a", "{{embed:refunds}} And now?", false).await;
    assert!(!seen.contains("five working days"), "{seen}");
    assert!(seen.contains("The desk opens at nine."), "{seen}");

    // A bad document is refused.
    let res = post(
        &gateway,
        "/admin/context/documents",
        Some(ADMIN),
        &json!({"id": "x", "text": "t"}),
    )
    .await;
    assert_eq!(res.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_is_answered_from_the_semantic_cache_and_a_negation_is_not() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let plain = |q: &str| json!({"model": "chat", "messages": [{"role": "user", "content": q}]});
    let first = post(
        &gateway,
        "/v1/chat/completions",
        Some("sk-a"),
        &plain("{{embed:weather}} What is the weather like?"),
    )
    .await;
    assert!(
        first.headers()["cache-status"]
            .to_str()
            .unwrap_or("")
            .contains("fwd=miss")
    );
    let calls = mock.endpoints().chat;
    // Indexed off the request's path: ask paraphrases (each a new wording
    // at 0.97 from the first) until one is answered from the cache.
    let mut status = String::new();
    for n in 0..100 {
        let res = post(
            &gateway,
            "/v1/chat/completions",
            Some("sk-a"),
            &plain(&format!(
                "{{{{embed:weather~0.97~p{n}}}}} How is the weather?"
            )),
        )
        .await;
        status = res.headers()["cache-status"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        if status.contains("detail=semantic") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        status.contains("; hit;") && status.contains("similarity=0.97"),
        "{status}"
    );
    let upstream_before = mock.endpoints().chat;
    assert!(upstream_before >= calls);

    // Another tenant's identical question never gets team A's answer.
    let other = post(
        &gateway,
        "/v1/chat/completions",
        Some("sk-b"),
        &plain("{{embed:weather~0.97~p0}} How is the weather?"),
    )
    .await;
    assert!(
        other.headers()["cache-status"]
            .to_str()
            .unwrap_or("")
            .contains("fwd=miss")
    );

    // A negated question at the same similarity is asked upstream.
    let negated = post(
        &gateway,
        "/v1/chat/completions",
        Some("sk-a"),
        &plain("{{embed:weather~0.98~neg}} What is the weather not like?"),
    )
    .await;
    let status = negated.headers()["cache-status"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(status.contains("fwd=miss"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passages_in_redis_vector_search_reach_their_tenant_only() {
    let mock = mock().await;
    let redis = test_support::search::shared();
    let extra = format!("redis = [\"{}\"]|backend = \"redis\"", redis.url());
    let gateway = gateway_with(&mock, &extra).await;
    let res = post(
        &gateway,
        "/admin/context/documents",
        Some(ADMIN),
        &json!({"id": "vault", "text": "{{embed:vault}} The vault code is kept by team A.", "tenant": "team-a"}),
    )
    .await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    for stream in [false, true] {
        let (seen, header) = answer(
            &gateway,
            "sk-a",
            "{{embed:vault}} Who keeps the code?",
            stream,
        )
        .await;
        assert!(seen.contains("The vault code is kept by team A."), "{seen}");
        assert!(header.starts_with("passages=1,"), "{header}");
        let (seen, _) = answer(
            &gateway,
            "sk-b",
            "{{embed:vault}} Who keeps the code?",
            stream,
        )
        .await;
        assert!(
            !seen.contains("vault code"),
            "team A's passage reached team B: {seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_semantic_cache_in_redis_vector_search_is_shared_by_replicas() {
    let mock = mock().await;
    let redis = test_support::search::shared();
    let extra = format!("redis = [\"{}\"]|backend = \"redis\"", redis.url());
    let (one, two) = (
        gateway_with(&mock, &extra).await,
        gateway_with(&mock, &extra).await,
    );
    let plain = |q: &str| json!({"model": "chat", "messages": [{"role": "user", "content": q}]});
    let status = |res: &reqwest::Response| {
        res.headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // A question of this run only: the shared server outlives the test.
    let topic = format!("tides{}", std::process::id());
    let first = post(
        &one,
        "/v1/chat/completions",
        Some("sk-a"),
        &plain(&format!("{{{{embed:{topic}}}}} When is high tide?")),
    )
    .await;
    assert!(status(&first).contains("fwd=miss"), "{}", status(&first));
    // Indexed off the first replica's request path: the second replica is
    // asked paraphrases until one is answered from the shared cache.
    let mut seen = String::new();
    for n in 0..100 {
        let res = post(
            &two,
            "/v1/chat/completions",
            Some("sk-a"),
            &plain(&format!(
                "{{{{embed:{topic}~0.97~p{n}}}}} At what time is the tide high?"
            )),
        )
        .await;
        seen = status(&res);
        if seen.contains("detail=semantic") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.contains("; hit;") && seen.contains("similarity=0.97"),
        "{seen}"
    );
    // Never for another tenant, on either replica.
    for (n, gateway) in [&one, &two].into_iter().enumerate() {
        let other = post(
            gateway,
            "/v1/chat/completions",
            Some("sk-b"),
            &plain(&format!(
                "{{{{embed:{topic}~0.97~b{n}}}}} At what time is the tide high?"
            )),
        )
        .await;
        assert!(status(&other).contains("fwd=miss"), "{}", status(&other));
    }
}
