//! What a test controls exactly: the embeddings (a bag of words, or the vector or the similarity
//! a `{{embed:…}}` directive asks for) and the echo of the system messages a request carried.

use std::error::Error;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mock_llm::{Config, MockHandle, MockLlm};
use serde_json::{Value, json};
use test_support::sse::SseReader;

type TestResult = Result<(), Box<dyn Error>>;

async fn mock(echo_system: bool) -> Result<MockHandle, Box<dyn Error>> {
    let config = Config {
        token_delay: Duration::from_millis(1),
        echo_system,
        ..Config::default()
    };
    Ok(MockLlm::spawn("127.0.0.1:0", config).await?)
}

async fn post(mock: &MockHandle, path: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}{path}", mock.base_url()))
        .json(body)
        .send()
        .await
}

async fn ok(mock: &MockHandle, path: &str, body: &Value) -> Result<Value, Box<dyn Error>> {
    let response = post(mock, path, body).await?;
    assert_eq!(response.status(), 200, "{path} {body}");
    Ok(response.json().await?)
}

/// The `data` of every event of a stream that must end cleanly.
async fn stream(mock: &MockHandle, path: &str, body: &Value) -> Result<Vec<Value>, Box<dyn Error>> {
    let response = post(mock, path, body).await?;
    assert_eq!(response.status(), 200, "{path} {body}");
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;
    assert!(reader.error().is_none(), "{:?}", reader.error());
    Ok(events
        .iter()
        .filter_map(|event| serde_json::from_str(&event.data).ok())
        .collect())
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    mock_llm::embedding(text, dimensions)
}

// ---------------------------------------------------------------- embeddings

#[test]
fn bag_of_words_ignores_order_case_and_punctuation() {
    for dimensions in [1, 16, 256] {
        let vector = embed("The quick brown fox jumps.", dimensions);
        assert_eq!(vector.len(), dimensions);
        assert!((dot(&vector, &vector) - 1.0).abs() < 1e-5);
        assert_eq!(vector, embed("jumps FOX, the  brown quick!", dimensions));
        assert_eq!(vector, embed("the\tquick\nbrown fox jumps", dimensions));
    }
    // Repeated words weigh more: a bag, not a set.
    assert_ne!(embed("fox fox dog", 64), embed("fox dog", 64));
    // A piece of punctuation alone is no word; a text of none gets a vector of its own.
    assert_eq!(embed("fox - dog", 64), embed("fox dog", 64));
    assert_ne!(embed("?!", 64), embed("...", 64));
    assert!((dot(&embed("?!", 64), &embed("?!", 64)) - 1.0).abs() < 1e-5);
}

#[test]
fn bag_of_words_similarity_follows_the_shared_words() {
    let base = embed("the quick brown fox jumps over the lazy dog", 256);
    let close = embed("the quick brown fox leaps over the lazy dog", 256);
    let half = embed("the quick brown fox sleeps under a warm blanket", 256);
    let unrelated = embed("tower middleware caches model answers", 256);
    let (close, half, unrelated) = (
        cosine(&base, &close),
        cosine(&base, &half),
        cosine(&base, &unrelated),
    );
    assert!(close > 0.8, "{close}");
    assert!(
        close > half && half > unrelated,
        "{close} {half} {unrelated}"
    );
    assert!(unrelated.abs() < 0.3, "{unrelated}");
}

#[test]
fn a_key_directive_is_the_key_vector_whatever_the_text() {
    for dimensions in [2, 16, 1536] {
        let key = embed("{{embed:refunds}}", dimensions);
        assert_eq!(key.len(), dimensions);
        assert!((dot(&key, &key) - 1.0).abs() < 1e-5);
        assert_eq!(
            key,
            embed("How do I get {{embed:refunds}} my money back?", dimensions)
        );
        assert_eq!(key, embed("{{embed:refunds}} something else", dimensions));
        assert_ne!(key, embed("{{embed:shipping}}", dimensions));
        // Not the bag of words of the key's name.
        assert_ne!(key, embed("refunds", dimensions));
    }
    // Only the first directive counts.
    assert_eq!(
        embed("{{embed:a}} {{embed:b}}", 16),
        embed("{{embed:a}}", 16)
    );
}

#[test]
fn a_similarity_directive_has_exactly_that_cosine() {
    for dimensions in [2, 3, 16, 64, 1536, 4096] {
        let key = embed("{{embed:K}}", dimensions);
        for similarity in [0.96, 0.999, 0.5, 0.0, -0.3, -1.0, 1.0] {
            let text = format!("passage {{{{embed:K~{similarity}~S}}}}");
            let near = embed(&text, dimensions);
            assert_eq!(near.len(), dimensions);
            assert!(
                (dot(&near, &near) - 1.0).abs() < 1e-6,
                "{dimensions} {similarity}"
            );
            let cos = cosine(&key, &near);
            assert!(
                (cos - similarity).abs() <= 1e-6,
                "{dimensions} dims, {similarity}: {cos}"
            );
        }
        // Another salt at the same similarity: another vector, as close to the key.
        let a = embed("{{embed:K~0.96~S}}", dimensions);
        let b = embed("{{embed:K~0.96~T}}", dimensions);
        assert_ne!(a, b);
        assert!((cosine(&key, &b) - 0.96).abs() <= 1e-6);
        // The same salt, the same vector.
        assert_eq!(a, embed("other words {{embed:K~0.96~S}}", dimensions));
        // A salt equal to the key still finds a direction.
        let own = embed("{{embed:K~0.5~K}}", dimensions);
        assert!((cosine(&key, &own) - 0.5).abs() <= 1e-6);
    }
    // One dimension: only the key's vector or its opposite.
    let key = embed("{{embed:K}}", 1);
    assert_eq!(embed("{{embed:K~0.5~S}}", 1), key);
    assert_eq!(embed("{{embed:K~-0.5~S}}", 1), vec![-key[0]]);
}

#[tokio::test]
async fn the_route_sends_the_controlled_vectors() -> TestResult {
    let mock = mock(false).await?;
    let texts = [
        "{{embed:refunds}} How do refunds work?",
        "{{embed:refunds~0.96~policy}} Refunds take five days.",
        "Refunds take five days",
    ];
    for (format, dimensions) in [("float", 16), ("base64", 64)] {
        let body = ok(
            &mock,
            "/v1/embeddings",
            &json!({"model": "m", "input": texts, "encoding_format": format,
                    "dimensions": dimensions}),
        )
        .await?;
        let vectors: Vec<Vec<f32>> = (0..texts.len())
            .map(|index| {
                let value = &body["data"][index]["embedding"];
                match value.as_str() {
                    Some(encoded) => STANDARD
                        .decode(encoded)
                        .expect("base64")
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    None => floats(value),
                }
            })
            .collect();
        for (text, vector) in texts.iter().zip(&vectors) {
            assert_eq!(vector, &embed(text, dimensions), "{format} {text}");
        }
        assert!((cosine(&vectors[0], &vectors[1]) - 0.96).abs() <= 1e-6);
    }
    Ok(())
}

#[tokio::test]
async fn a_malformed_directive_is_refused() -> TestResult {
    let mock = mock(false).await?;
    for bad in [
        "{{embed:}}",
        "{{embed:K",
        "{{embed:K~0.9}}",
        "{{embed:K~0.9~}}",
        "{{embed:K~x~S}}",
        "{{embed:K~1.5~S}}",
        "{{embed:K~0.9~S~T}}",
    ] {
        let response = post(
            &mock,
            "/v1/embeddings",
            &json!({"model": "m", "input": ["fine", bad]}),
        )
        .await?;
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("input[1]"), "{message}");
        assert!(message.contains("embed directive"), "{message}");
    }
    // Braces that don't open a directive are ordinary text.
    ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "m", "input": "{{embedding}} {embed:K}"}),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- echo of system messages

fn conversation() -> Value {
    json!({"model": "m", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": [
            {"type": "text", "text": "Context: "},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "refunds take 5 days."}
        ]},
        {"role": "assistant", "content": "Hello."},
        {"role": "system", "content": "Cite  sources.\n"}
    ]})
}

const ECHO: &str = "You are terse.\n---\nContext: refunds take 5 days.\n---\nCite  sources.\n";

#[tokio::test]
async fn chat_echoes_the_system_messages() -> TestResult {
    let mock = mock(true).await?;
    let body = ok(&mock, "/v1/chat/completions", &conversation()).await?;
    assert_eq!(body["choices"][0]["message"]["content"], ECHO);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "You", " are", " terse.", "\n---", "\nContext:", " refunds", " take", " 5", " days.",
    // "\n---", "\nCite", "  sources.", "\n".
    assert_eq!(body["usage"]["completion_tokens"], 13);

    // Streamed: the same text, in the usual chunks.
    let mut request = conversation();
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let chunks = stream(&mock, "/v1/chat/completions", &request).await?;
    let deltas: Vec<&str> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .filter(|delta| !delta.is_empty())
        .collect();
    assert_eq!(deltas.len(), 13);
    assert_eq!(deltas[..3], ["You", " are", " terse."]);
    assert_eq!(deltas.concat(), ECHO);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let usage = chunks.iter().find(|c| !c["usage"].is_null());
    assert_eq!(
        usage.map(|c| &c["usage"]["completion_tokens"]),
        Some(&json!(13))
    );

    // Cut by `max_tokens` as any answer.
    let mut cut = conversation();
    cut["max_tokens"] = json!(3);
    let body = ok(&mock, "/v1/chat/completions", &cut).await?;
    assert_eq!(body["choices"][0]["message"]["content"], "You are terse.");
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // No system message: an empty answer.
    let bare = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
    let body = ok(&mock, "/v1/chat/completions", &bare).await?;
    assert_eq!(body["choices"][0]["message"]["content"], "");
    assert_eq!(body["usage"]["completion_tokens"], 0);

    // The other routes still generate.
    let completion = ok(
        &mock,
        "/v1/completions",
        &json!({"model": "m", "prompt": "Hi"}),
    )
    .await?;
    let expected = mock_llm::answer_for(
        mock_llm::Api::Completions,
        &json!({"model": "m", "prompt": "Hi"}),
    )
    .map(|answer| answer.content);
    assert_eq!(
        completion["choices"][0]["text"].as_str(),
        expected.as_deref()
    );
    Ok(())
}

#[tokio::test]
async fn without_the_option_chat_generates_words() -> TestResult {
    let mock = mock(false).await?;
    let request = conversation();
    let body = ok(&mock, "/v1/chat/completions", &request).await?;
    let expected = mock_llm::answer(&request).map(|answer| answer.content);
    assert_eq!(
        body["choices"][0]["message"]["content"].as_str(),
        expected.as_deref()
    );
    assert_ne!(body["choices"][0]["message"]["content"], ECHO);
    Ok(())
}

#[tokio::test]
async fn messages_echo_the_system_field() -> TestResult {
    let mock = mock(true).await?;
    let user = json!([{"role": "user", "content": "Hi"}]);
    let blocks = json!({"model": "claude", "max_tokens": 100, "messages": user, "system": [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Context: refunds take 5 days."}
    ]});
    let body = ok(&mock, "/v1/messages", &blocks).await?;
    let echo = "You are terse.\n---\nContext: refunds take 5 days.";
    assert_eq!(body["content"][0]["text"], echo);
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["output_tokens"], 9);

    let mut streamed = blocks.clone();
    streamed["stream"] = json!(true);
    let events = stream(&mock, "/v1/messages", &streamed).await?;
    let text: String = events
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .filter_map(|event| event["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, echo);
    let last = events
        .iter()
        .rev()
        .find(|event| event["type"] == "message_delta");
    assert_eq!(last.map(|e| &e["usage"]["output_tokens"]), Some(&json!(9)));

    let string = json!({"model": "claude", "max_tokens": 100, "messages": user,
                        "system": "Be brief."});
    let body = ok(&mock, "/v1/messages", &string).await?;
    assert_eq!(body["content"][0]["text"], "Be brief.");
    let none = json!({"model": "claude", "max_tokens": 100, "messages": user});
    let body = ok(&mock, "/v1/messages", &none).await?;
    assert_eq!(body["content"][0]["text"], "");
    Ok(())
}
