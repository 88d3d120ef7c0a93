//! The mock over a real socket.

use std::error::Error;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mock_llm::{Config, Fault, MockHandle, MockLlm, Stats};
use serde_json::{Value, json};
use test_support::chat::{content, delta};
use test_support::sse::SseReader;

type TestResult = Result<(), Box<dyn Error>>;

async fn mock(token_delay_ms: u64) -> Result<MockHandle, Box<dyn Error>> {
    Ok(test_support::mock_llm(Duration::from_millis(token_delay_ms)).await)
}

fn chat(prompt: &str) -> Value {
    test_support::chat::request(prompt)
        .model("gpt-test")
        .system("You are terse.")
        .text_parts()
        .set("temperature", 0.2)
        .json()
}

async fn post(mock: &MockHandle, body: &Value) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", mock.base_url()))
        .json(body)
        .send()
        .await
}

async fn complete(mock: &MockHandle, body: &Value) -> Result<Value, Box<dyn Error>> {
    let response = post(mock, body).await?;
    assert_eq!(response.status(), 200);
    Ok(response.json().await?)
}

/// The `data` payloads of a stream with their arrival times, and the body error if the body
/// failed.
struct Events {
    data: Vec<(String, Instant)>,
    error: Option<reqwest::Error>,
}

async fn events(response: reqwest::Response) -> Events {
    let mut reader = SseReader::new(response);
    let data = reader
        .rest()
        .await
        .into_iter()
        .map(|event| (event.data, event.at))
        .collect();
    assert!(
        !reader.ended_mid_event() || reader.broken(),
        "unterminated event: {reader:?}"
    );
    Events {
        data,
        error: reader.into_error(),
    }
}

fn parse(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
}

/// Polls the stats until `done` holds, for at most 2 s.
async fn wait_for(mock: &MockHandle, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stats = mock.stats();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn answers_are_deterministic() -> TestResult {
    let mock = mock(1).await?;
    let first = complete(&mock, &chat("What is a tower layer?")).await?;
    let again = complete(&mock, &chat("What is a tower layer?")).await?;
    assert_eq!(content(&first), content(&again));
    assert_eq!(first["id"], again["id"]);
    assert!(content(&first).starts_with(' '));

    let mut warmer = chat("What is a tower layer?");
    warmer["temperature"] = json!(0.9);
    let other = complete(&mock, &warmer).await?;
    assert_ne!(content(&first), content(&other));
    let other_prompt = complete(&mock, &chat("What is a tower service?")).await?;
    assert_ne!(content(&first), content(&other_prompt));

    // The shape of a chat.completion.
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["model"], "gpt-test");
    assert!(
        first["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert!(first["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
    assert_eq!(first["choices"][0]["index"], 0);
    assert_eq!(first["choices"][0]["message"]["role"], "assistant");
    assert_eq!(first["choices"][0]["finish_reason"], "stop");
    let words = content(&first).split_whitespace().count() as u64;
    assert!((8..=40).contains(&words), "{words} tokens");
    let usage = &first["usage"];
    assert_eq!(usage["completion_tokens"], words);
    // 3 + 5 words, 2 messages at 4 each.
    assert_eq!(usage["prompt_tokens"], 3 + 5 + 8);
    assert_eq!(usage["total_tokens"], 16 + words);

    // The library predicts the answer.
    let predicted = mock_llm::answer(&chat("What is a tower layer?"));
    assert_eq!(
        predicted.map(|a| a.content).as_deref(),
        Some(content(&first))
    );

    // The streamed answer is the same text.
    let mut streamed = chat("What is a tower layer?");
    streamed["stream"] = json!(true);
    let events = events(post(&mock, &streamed).await?).await;
    let text: String = events
        .data
        .iter()
        .filter(|(data, _)| data.as_str() != "[DONE]")
        .filter_map(|(data, _)| delta(&parse(data)).map(str::to_owned))
        .collect();
    assert_eq!(text, content(&first));
    Ok(())
}

#[tokio::test]
async fn non_streaming_is_json() -> TestResult {
    let mock = mock(1).await?;
    let response = post(&mock, &chat("hello")).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str()?,
        "application/json"
    );
    Ok(())
}

#[tokio::test]
async fn streams_in_openai_format_one_token_at_a_time() -> TestResult {
    let mock = mock(50).await?;
    let mut request = chat("Stream me something.");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let expected = mock_llm::answer(&request).ok_or("refused")?;

    let sent = Instant::now();
    let response = post(&mock, &request).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str()?,
        "text/event-stream"
    );
    assert_eq!(response.headers()["cache-control"].to_str()?, "no-cache");
    let Events { data, error } = events(response).await;
    assert!(error.is_none(), "{error:?}");

    let n = expected.completion_tokens as usize;
    assert!(n >= 8);
    // role + n tokens + finish + usage + [DONE]
    assert_eq!(data.len(), n + 4, "{data:#?}");

    let role = &data[0].0;
    assert!(
        role.contains(r#""object":"chat.completion.chunk""#)
            && role.ends_with(r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#),
        "{role}"
    );
    let first = parse(role);
    let id = first["id"].as_str().ok_or("no id")?;
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(first["model"], "gpt-test");

    let mut text = String::new();
    for (data, _) in &data[1..=n] {
        let chunk = parse(data);
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        assert!(chunk["choices"][0]["delta"].get("role").is_none());
        let token = delta(&chunk).ok_or("no content")?;
        assert!(token.starts_with(' ') && token.split_whitespace().count() == 1);
        text.push_str(token);
    }
    assert_eq!(text, expected.content);

    let finish = parse(&data[n + 1].0);
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = parse(&data[n + 2].0);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], n);
    assert_eq!(usage["usage"]["prompt_tokens"], expected.prompt_tokens);
    assert_eq!(
        usage["usage"]["total_tokens"],
        expected.prompt_tokens + n as u64
    );
    assert_eq!(data[n + 3].0, "[DONE]");

    // Chunks arrive as they are produced: the first long before the last.
    let first_at = data[0].1 - sent;
    let last_at = data[n + 3].1 - sent;
    assert!(
        first_at < last_at / 2,
        "first {first_at:?}, last {last_at:?}"
    );
    assert!(last_at >= Duration::from_millis(50) * n as u32);

    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_completed, 1);
    assert_eq!(stats.tokens_sent, n as u64);
    Ok(())
}

#[tokio::test]
async fn without_include_usage_there_is_no_usage_chunk() -> TestResult {
    let mock = mock(1).await?;
    let mut request = chat("no usage please");
    request["stream"] = json!(true);
    let Events { data, error } = events(post(&mock, &request).await?).await;
    assert!(error.is_none());
    assert_eq!(data.last().map(|(d, _)| d.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|(d, _)| parse(d))
        .collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| a.len() == 1))
    );
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(json!("stop"))
    );
    Ok(())
}

#[tokio::test]
async fn max_tokens_truncates_with_finish_reason_length() -> TestResult {
    let mock = mock(1).await?;
    let full = complete(&mock, &chat("truncate me")).await?;

    let mut request = chat("truncate me");
    request["max_tokens"] = json!(3);
    let cut = complete(&mock, &request).await?;
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["usage"]["completion_tokens"], 3);
    assert_eq!(content(&cut).split_whitespace().count(), 3);
    assert!(content(&full).starts_with(content(&cut)));

    let mut request = chat("truncate me");
    request["max_completion_tokens"] = json!(2);
    request["stream"] = json!(true);
    let Events { data, .. } = events(post(&mock, &request).await?).await;
    // role, 2 tokens, finish, [DONE]
    assert_eq!(data.len(), 5);
    assert_eq!(parse(&data[3].0)["choices"][0]["finish_reason"], "length");

    let mut generous = chat("truncate me");
    generous["max_tokens"] = json!(1000);
    let same = complete(&mock, &generous).await?;
    assert_eq!(same["choices"][0]["finish_reason"], "stop");
    assert_eq!(content(&same), content(&full));
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_400_in_openai_shape() -> TestResult {
    let mock = mock(1).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let not_json = client.post(&url).body("{not json").send().await?;
    assert_eq!(not_json.status(), 400);
    let error: Value = not_json.json().await?;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(error["error"]["param"], Value::Null);
    assert_eq!(error["error"]["code"], Value::Null);

    for bad in [
        json!({"model": "m"}),
        json!({"messages": []}),
        json!({"model": 3, "messages": []}),
        json!({"model": "m", "messages": "hi"}),
    ] {
        let response = post(&mock, &bad).await?;
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }

    let unknown = client
        .get(format!("{}/v1/nothing", mock.base_url()))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().await?;
    assert!(error["error"]["message"].is_string());

    let stats = mock.stats();
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.invalid, 5);
    Ok(())
}

#[tokio::test]
async fn stats_count_every_request() -> TestResult {
    let mock = mock(1).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", mock.base_url());
    client.post(&url).body("nope").send().await?;
    post(&mock, &json!({"model": "m"})).await?;
    complete(&mock, &chat("one")).await?;
    let mut streamed = chat("two");
    streamed["stream"] = json!(true);
    let tokens = mock_llm::answer(&chat("one"))
        .ok_or("refused")?
        .completion_tokens
        + mock_llm::answer(&streamed)
            .ok_or("refused")?
            .completion_tokens;
    let Events { error, .. } = events(post(&mock, &streamed).await?).await;
    assert!(error.is_none());

    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    let expected = Stats {
        requests: 4,
        completions: 1,
        invalid: 2,
        failed: 0,
        streams_started: 1,
        streams_completed: 1,
        streams_cancelled: 0,
        streams_broken: 0,
        streams_errored: 0,
        in_flight: 0,
        tokens_sent: tokens,
    };
    assert_eq!(stats, expected);

    let served: Stats = client
        .get(format!("{}/admin/stats", mock.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(served, expected);
    let raw: Value = client
        .get(format!("{}/admin/stats", mock.base_url()))
        .send()
        .await?
        .json()
        .await?;
    for key in [
        "requests",
        "streams_started",
        "streams_completed",
        "streams_cancelled",
        "in_flight",
        "tokens_sent",
    ] {
        assert!(raw[key].is_u64(), "{key} missing from {raw}");
    }

    let reset: Stats = client
        .post(format!("{}/admin/reset", mock.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(reset, Stats::default());
    assert_eq!(mock.stats(), Stats::default());
    Ok(())
}

async fn set_fault(mock: &MockHandle, fault: Value) -> Result<reqwest::Response, Box<dyn Error>> {
    Ok(reqwest::Client::new()
        .post(format!("{}/admin/fault", mock.base_url()))
        .json(&fault)
        .send()
        .await?)
}

#[tokio::test]
async fn fail_rate_is_deterministic() -> TestResult {
    let mock = mock(1).await?;
    let response = set_fault(&mock, json!({"fail_rate": 1.0})).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.fault().fail_rate, 1.0);
    for _ in 0..3 {
        let response = post(&mock, &chat("fail")).await?;
        assert_eq!(response.status(), 500);
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["type"], "server_error");
        assert!(error["error"]["message"].is_string());
    }

    set_fault(&mock, json!({"fail_rate": 0.5})).await?;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(post(&mock, &chat("half")).await?.status().as_u16());
    }
    assert_eq!(statuses, [200, 500, 200, 500, 200, 500]);

    set_fault(&mock, json!({})).await?;
    assert_eq!(mock.fault(), Fault::default());
    for _ in 0..3 {
        assert_eq!(post(&mock, &chat("fine")).await?.status(), 200);
    }

    let stats = mock.stats();
    assert_eq!(stats.requests, 12);
    assert_eq!(stats.failed, 6);

    // Out-of-range and unknown fields are refused.
    assert_eq!(
        set_fault(&mock, json!({"fail_rate": 1.5})).await?.status(),
        400
    );
    assert_eq!(set_fault(&mock, json!({"fail": 1})).await?.status(), 400);
    Ok(())
}

#[tokio::test]
async fn latency_stalls_and_is_counted() -> TestResult {
    let mock = mock(1).await?;
    mock.set_fault(Fault {
        latency_ms: 300,
        ..Fault::default()
    });
    let started = Instant::now();
    let request = tokio::spawn({
        let url = format!("{}/v1/chat/completions", mock.base_url());
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&chat("slow"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let stalled = wait_for(&mock, |s| s.in_flight == 1).await;
    assert_eq!(stalled.requests, 1);
    assert_eq!(stalled.in_flight, 1);
    assert_eq!(request.await??, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn break_after_tokens_ends_the_stream_abruptly() -> TestResult {
    let mock = mock(5).await?;
    set_fault(&mock, json!({"break_after_tokens": 3})).await?;
    let mut request = chat("break");
    request["stream"] = json!(true);
    let response = post(&mock, &request).await?;
    assert_eq!(response.status(), 200);
    let Events { data, error } = events(response).await;
    assert!(error.is_some(), "the body should fail");
    // role + 3 tokens, no finish, no [DONE]
    assert_eq!(data.len(), 4, "{data:#?}");
    assert!(data[1..].iter().all(|(d, _)| delta(&parse(d)).is_some()));
    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_broken, 1);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_cancelled, 0);
    assert_eq!(stats.tokens_sent, 3);

    // Non-streaming requests are not affected.
    complete(&mock, &chat("whole")).await?;
    Ok(())
}

#[tokio::test]
async fn error_event_replaces_the_end_of_the_stream() -> TestResult {
    let mock = mock(1).await?;
    set_fault(&mock, json!({"error_event": true, "break_after_tokens": 2})).await?;
    let mut request = chat("error event");
    request["stream"] = json!(true);
    let response = post(&mock, &request).await?;
    assert_eq!(response.status(), 200);
    let Events { data, error } = events(response).await;
    assert!(error.is_none());
    assert_eq!(data.len(), 4, "{data:#?}");
    let event = parse(&data[3].0);
    assert_eq!(event["error"]["type"], "server_error");
    assert!(event["error"]["message"].is_string());
    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_errored, 1);
    Ok(())
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_counted_as_cancelled() -> TestResult {
    let mock = mock(20).await?;
    let mut request = chat("I will leave early");
    request["stream"] = json!(true);
    let response = post(&mock, &request).await?;
    let mut body = response.bytes_stream();
    let mut received = 0;
    while received < 30 {
        match body.next().await {
            Some(chunk) => received += chunk?.len(),
            None => return Err("stream ended early".into()),
        }
    }
    drop(body);
    let stats = wait_for(&mock, |s| s.streams_cancelled == 1 && s.in_flight == 0).await;
    assert_eq!(stats.streams_cancelled, 1, "{stats:?}");
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.streams_completed, 0);
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_server() -> TestResult {
    let mock = mock(20).await?;
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let mut request = chat("interrupted");
    request["stream"] = json!(true);
    let response = post(&mock, &request).await?;
    let inner = mock.mock().clone();
    tokio::time::timeout(Duration::from_secs(2), mock.shutdown()).await??;
    let Events { error, .. } = events(response).await;
    assert!(error.is_some());
    assert_eq!(inner.stats().streams_broken, 1);
    assert!(
        reqwest::Client::new()
            .post(&url)
            .json(&chat("x"))
            .send()
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn router_serves_in_process() -> TestResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mock = MockLlm::new(Config {
        token_delay: Duration::ZERO,
        ..Config::default()
    });
    let app = mock.router();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&chat("in process"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.stats().completions, 1);
    server.abort();
    Ok(())
}
