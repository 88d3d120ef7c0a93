//! Simulate mode over real sockets: chat completions served by the mock's simulated vLLM
//! server, its prefix cache reported in the usage, its load on `GET /metrics`.

use std::error::Error;
use std::time::{Duration, Instant};

use mock_llm::fleet::{Costs, SimConfig};
use mock_llm::{Config, Fault, MockHandle, MockLlm};
use serde_json::{Value, json};
use test_support::chat::{content, delta};
use test_support::sse::{SseEvent, SseReader};
use test_support::{eventually, eventually_async};

type TestResult = Result<(), Box<dyn Error>>;

/// Bound on every wait for a condition.
const PATIENCE: Duration = Duration::from_secs(10);

/// A mock in simulate mode; `speed` scales the default (A100) costs: 0.05 is 20 times faster.
async fn simulated(speed: f64, slots: usize) -> Result<MockHandle, Box<dyn Error>> {
    let simulate = SimConfig {
        slots,
        costs: Costs::default().scaled(speed),
        ..SimConfig::default()
    };
    Ok(MockLlm::spawn(
        "127.0.0.1:0",
        Config {
            simulate: Some(simulate),
            ..Config::default()
        },
    )
    .await?)
}

/// A system prompt of 399 bytes: six full 16-token blocks and some.
fn system() -> String {
    "You are a helpful assistant; answer briefly and exactly. ".repeat(7)
}

fn chat(question: &str) -> Value {
    test_support::chat::request(question)
        .system(&system())
        .json()
}

fn streamed(question: &str) -> Value {
    test_support::chat::request(question)
        .system(&system())
        .stream(true)
        .include_usage()
        .json()
}

/// A question whose answer has at least `tokens` tokens, so that its stream lasts.
fn long_question(tokens: u64) -> String {
    (0..1000)
        .map(|i| format!("Tell me a long story, number {i}."))
        .find(|question| {
            mock_llm::answer(&chat(question)).is_some_and(|a| a.completion_tokens >= tokens)
        })
        .unwrap_or_else(|| panic!("no answer of {tokens} tokens"))
}

/// The simulator's tokens for a prompt: 4 bytes each, a last partial one included.
fn sim_tokens(prompt: &str) -> u64 {
    prompt.len().div_ceil(4) as u64
}

/// The cached tokens vLLM reports for `prompt` when the cache holds `prefix_bytes` bytes of it
/// (a whole number of 64-byte blocks is used): full 16-token blocks, never the last token.
fn cached_tokens(prompt: &str, prefix_bytes: usize) -> u64 {
    let hit_blocks = (prefix_bytes / 64) as u64;
    let most = (sim_tokens(prompt) - 1) / 16;
    hit_blocks.min(most) * 16
}

fn simulated_prompt(body: &Value) -> String {
    mock_llm::simulated_prompt(body).unwrap_or_else(|| panic!("invalid request: {body}"))
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

/// Every event of a stream, checked to end with `[DONE]`.
async fn stream(mock: &MockHandle, body: &Value) -> Result<Vec<SseEvent>, Box<dyn Error>> {
    let response = post(mock, body).await?;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;
    assert!(reader.error().is_none(), "{reader:?}");
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    Ok(events)
}

fn parse(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
}

/// The usage chunk of a stream: the last one before `[DONE]`.
fn usage_chunk(events: &[SseEvent]) -> Value {
    let chunk = parse(&events[events.len() - 2].data);
    assert_eq!(chunk["choices"], json!([]));
    chunk["usage"].clone()
}

fn text(events: &[SseEvent]) -> String {
    test_support::sse::text(events)
}

/// `GET /metrics`, checked to be Prometheus text.
async fn metrics_text(mock: &MockHandle) -> Result<String, Box<dyn Error>> {
    let response = reqwest::get(format!("{}/metrics", mock.base_url())).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4")
    );
    Ok(response.text().await?)
}

/// The value of `name` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// `GET /metrics`' value of `name`.
async fn scrape(mock: &MockHandle, name: &str) -> Result<f64, Box<dyn Error>> {
    Ok(metric(&metrics_text(mock).await?, name))
}

/// Waits until `/metrics` shows `name` at `value`.
async fn scrape_until(mock: &MockHandle, name: &str, value: f64) -> bool {
    eventually_async(PATIENCE, || async {
        scrape(mock, name).await.is_ok_and(|v| v == value)
    })
    .await
    .is_some()
}

const RUNNING: &str = "vllm:num_requests_running";
const WAITING: &str = "vllm:num_requests_waiting";
const HITS: &str = "vllm:prefix_cache_hits_total";
const QUERIES: &str = "vllm:prefix_cache_queries_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_chat_reports_its_cached_prompt_tokens() -> TestResult {
    let mock = simulated(0.05, 256).await?;
    let body = chat("What is a tower layer?");
    let prompt = simulated_prompt(&body);
    let predicted = mock_llm::answer(&body).ok_or("no answer")?;

    let first = complete(&mock, &body).await?;
    assert_eq!(content(&first), predicted.content);
    let usage = &first["usage"];
    assert_eq!(usage["prompt_tokens_details"], json!({"cached_tokens": 0}));
    // The mock's own counts are unchanged.
    assert_eq!(usage["prompt_tokens"], predicted.prompt_tokens);
    assert_eq!(usage["completion_tokens"], predicted.completion_tokens);
    assert_eq!(
        usage["total_tokens"],
        predicted.prompt_tokens + predicted.completion_tokens
    );

    let second = complete(&mock, &body).await?;
    assert_eq!(second, {
        let mut same = first.clone();
        same["created"] = second["created"].clone();
        same["usage"]["prompt_tokens_details"] = second["usage"]["prompt_tokens_details"].clone();
        same
    });
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .ok_or("no cached_tokens")?;
    // 422 bytes: 106 tokens, 6 full blocks; all 6 hit, the last token is in the 7th.
    assert_eq!(prompt.len(), 399 + 1 + 22);
    assert_eq!(cached, cached_tokens(&prompt, prompt.len()));
    assert_eq!(cached, 96);

    // What the simulator reports.
    let sim = mock.mock().simulator().ok_or("no simulator")?.metrics();
    assert_eq!(sim.prefix_hit_tokens, cached);
    assert_eq!(sim.prompt_tokens_total, 2 * sim_tokens(&prompt));
    let text = metrics_text(&mock).await?;
    assert_eq!(metric(&text, HITS), cached as f64);
    assert_eq!(metric(&text, QUERIES), (2 * sim_tokens(&prompt)) as f64);

    // Another question after the same system prompt hits the blocks they share.
    let other = chat("How do I retry a request?");
    let other_prompt = simulated_prompt(&other);
    let shared = prompt
        .bytes()
        .zip(other_prompt.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let third = complete(&mock, &other).await?;
    assert_eq!(
        third["usage"]["prompt_tokens_details"]["cached_tokens"],
        cached_tokens(&other_prompt, shared)
    );
    assert_eq!(third["usage"]["prompt_tokens_details"]["cached_tokens"], 96);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_stream_reports_its_cached_prompt_tokens() -> TestResult {
    let mock = simulated(0.05, 256).await?;
    let body = streamed("What is a tower layer?");
    let prompt = simulated_prompt(&body);
    let predicted = mock_llm::answer(&body).ok_or("no answer")?;

    let first = stream(&mock, &body).await?;
    // Today's chunks: the role, one per token, the finish, the usage, [DONE].
    assert_eq!(first.len() as u64, 1 + predicted.completion_tokens + 3);
    let role = parse(&first[0].data);
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(text(&first), predicted.content);
    for event in &first[1..=predicted.completion_tokens as usize] {
        assert!(delta(&parse(&event.data)).is_some_and(|token| token.starts_with(' ')));
    }
    let usage = usage_chunk(&first);
    assert_eq!(
        usage,
        json!({
            "prompt_tokens": predicted.prompt_tokens,
            "completion_tokens": predicted.completion_tokens,
            "total_tokens": predicted.prompt_tokens + predicted.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        })
    );

    let second = stream(&mock, &body).await?;
    assert_eq!(text(&second), predicted.content);
    let cached = cached_tokens(&prompt, prompt.len());
    assert!(cached > 0);
    assert_eq!(
        usage_chunk(&second)["prompt_tokens_details"],
        json!({"cached_tokens": cached})
    );
    let sim = mock.mock().simulator().ok_or("no simulator")?.metrics();
    assert_eq!(sim.prefix_hit_tokens, cached);
    assert_eq!(sim.generated_tokens_total, 2 * predicted.completion_tokens);

    // A non-streamed request of the same prompt hits too (`stream` is not in the prompt), and
    // a stream without `include_usage` has no usage chunk.
    let mut json_body = body.clone();
    json_body["stream"] = json!(false);
    let third = complete(&mock, &json_body).await?;
    assert_eq!(
        third["usage"]["prompt_tokens_details"]["cached_tokens"],
        cached
    );
    let mut no_usage = body.clone();
    no_usage["stream_options"] = json!({"include_usage": false});
    let fourth = stream(&mock, &no_usage).await?;
    assert_eq!(fourth.len() as u64, 1 + predicted.completion_tokens + 2);
    assert!(
        fourth
            .iter()
            .filter(|e| e.data != "[DONE]")
            .all(|e| parse(&e.data).get("usage").is_none())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_running_request_and_the_prefix_cache() -> TestResult {
    // A 12 ms decode step, and an answer of at least 30 tokens: a stream of 360 ms or more.
    let mock = simulated(1.0, 256).await?;
    let idle = metrics_text(&mock).await?;
    for name in [RUNNING, WAITING, HITS, QUERIES] {
        assert_eq!(metric(&idle, name), 0.0, "{name}");
    }

    let body = streamed(&long_question(30));
    let prompt = simulated_prompt(&body);
    let tokens = sim_tokens(&prompt) as f64;
    let response = post(&mock, &body).await?;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let head = reader.take(2).await;
    assert!(delta(&parse(&head[1].data)).is_some(), "a token: {head:?}");
    assert!(scrape_until(&mock, RUNNING, 1.0).await, "never running");
    assert_eq!(scrape(&mock, QUERIES).await?, tokens);
    assert_eq!(scrape(&mock, HITS).await?, 0.0);

    let rest = reader.rest().await;
    assert_eq!(rest.last().map(|e| e.data.as_str()), Some("[DONE]"));
    // `[DONE]` comes once the sequence left the batch.
    let text = metrics_text(&mock).await?;
    assert_eq!(metric(&text, RUNNING), 0.0);
    let predicted = mock_llm::answer(&body).ok_or("no answer")?;
    assert_eq!(
        metric(&text, "vllm:generation_tokens_total"),
        predicted.completion_tokens as f64
    );

    let mut again = body.clone();
    again["stream"] = json!(false);
    let answer = complete(&mock, &again).await?;
    let cached = cached_tokens(&prompt, prompt.len());
    assert_eq!(
        answer["usage"]["prompt_tokens_details"]["cached_tokens"],
        cached
    );
    let text = metrics_text(&mock).await?;
    assert_eq!(metric(&text, QUERIES), 2.0 * tokens);
    assert_eq!(metric(&text, HITS), cached as f64);
    assert_eq!(metric(&text, RUNNING), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_queues_the_next_request() -> TestResult {
    // One slot; a 24 ms decode step and at least 30 tokens: the first stream holds the slot
    // for 700 ms or more.
    let mock = simulated(2.0, 1).await?;
    let first = streamed(&long_question(30));
    let second = streamed("A second question, queued behind the first.");

    let mut a = SseReader::new(post(&mock, &first).await?);
    a.take(2).await;
    // The head of the second stream comes at once; its events wait for the slot.
    let b = post(&mock, &second).await?;
    assert_eq!(b.status(), 200);
    assert!(scrape_until(&mock, WAITING, 1.0).await, "never queued");
    assert_eq!(scrape(&mock, RUNNING).await?, 1.0);

    let a_rest = a.rest().await;
    let a_end = a_rest.last().ok_or("no end")?;
    assert_eq!(a_end.data, "[DONE]");
    let mut b = SseReader::new(b);
    let b_events = b.rest().await;
    assert_eq!(b_events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    // The second stream's first event (the role, with its first token) came after the first
    // stream had ended.
    assert!(b_events[0].at >= a_end.at);
    let sim = mock.mock().simulator().ok_or("no simulator")?.metrics();
    assert_eq!((sim.peak_running, sim.requests_finished), (1, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_frees_its_slot() -> TestResult {
    // A 24 ms decode step and at least 30 tokens: the sequence would run for 700 ms or more.
    let mock = simulated(2.0, 256).await?;
    let body = streamed(&long_question(30));
    let predicted = mock_llm::answer(&body).ok_or("no answer")?;
    let response = post(&mock, &body).await?;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    reader.take(3).await;
    assert!(scrape_until(&mock, RUNNING, 1.0).await, "never running");

    drop(reader);
    let started = Instant::now();
    assert!(
        scrape_until(&mock, RUNNING, 0.0).await,
        "the slot stayed taken"
    );
    let sim = mock.mock().simulator().ok_or("no simulator")?.metrics();
    assert_eq!(
        sim.requests_cancelled,
        1,
        "{sim:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(sim.requests_finished, 0);
    assert!(sim.generated_tokens_total < predicted.completion_tokens);
    assert!(
        eventually(PATIENCE, || mock.stats().streams_cancelled == 1)
            .await
            .is_some()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_apply_to_simulated_requests() -> TestResult {
    let mock = simulated(1.0, 256).await?;
    let body = streamed(&long_question(30));

    // `fail_rate` answers before the simulator sees the request.
    mock.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    let failed = post(&mock, &body).await?;
    assert_eq!(failed.status(), 500);
    assert_eq!(scrape(&mock, QUERIES).await?, 0.0);

    // `break_after_tokens` cuts the simulated stream, which frees the slot.
    mock.set_fault(Fault {
        break_after_tokens: Some(3),
        ..Fault::default()
    });
    let response = post(&mock, &body).await?;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;
    assert!(reader.broken(), "{reader:?}");
    assert_eq!(events.len(), 1 + 3);
    assert!(
        scrape_until(&mock, RUNNING, 0.0).await,
        "the slot stayed taken"
    );
    let sim = mock.mock().simulator().ok_or("no simulator")?.metrics();
    assert_eq!((sim.requests_cancelled, sim.requests_finished), (1, 0));
    assert_eq!(mock.stats().streams_broken, 1);

    // `error_event` ends the simulated stream after its tokens, and the slot is freed.
    mock.set_fault(Fault {
        error_event: true,
        ..Fault::default()
    });
    let predicted = mock_llm::answer(&body).ok_or("no answer")?;
    let response = post(&mock, &body).await?;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;
    assert!(reader.error().is_none(), "{reader:?}");
    assert_eq!(events.len() as u64, 1 + predicted.completion_tokens + 1);
    let error = parse(&events[events.len() - 1].data);
    assert_eq!(error["error"]["type"], "server_error");
    assert!(
        scrape_until(&mock, RUNNING, 0.0).await,
        "the slot stayed taken"
    );
    assert_eq!(mock.stats().streams_errored, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_larger_than_the_cache_is_503() -> TestResult {
    // Two blocks: 32 tokens, less than the prompt alone.
    let mock = MockLlm::spawn(
        "127.0.0.1:0",
        Config {
            simulate: Some(SimConfig {
                kv_blocks: 2,
                ..SimConfig::default()
            }),
            ..Config::default()
        },
    )
    .await?;
    for body in [chat("Too long?"), streamed("Too long?")] {
        let response = post(&mock, &body).await?;
        assert_eq!(response.status(), 503);
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["type"], "server_error");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("KV-cache blocks")),
            "{error}"
        );
    }
    let sim = mock.mock().simulator().ok_or("no simulator")?.metrics();
    assert_eq!(sim.requests_rejected, 2);
    assert_eq!(mock.stats().streams_started, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_routes_are_not_simulated() -> TestResult {
    let mock = simulated(0.05, 256).await?;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/completions", mock.base_url()))
        .json(&json!({"model": "m", "prompt": "Say something."}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await?;
    assert!(completion["usage"]["prompt_tokens"].is_u64());
    assert!(completion["usage"].get("prompt_tokens_details").is_none());
    assert_eq!(scrape(&mock, QUERIES).await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_simulate_there_are_no_details_and_no_metrics() -> TestResult {
    let mock = MockLlm::spawn(
        "127.0.0.1:0",
        Config {
            token_delay: Duration::from_millis(1),
            ..Config::default()
        },
    )
    .await?;
    assert!(mock.mock().simulator().is_none());
    let body = chat("What is a tower layer?");
    let predicted = mock_llm::answer(&body).ok_or("no answer")?;
    let usage = json!({
        "prompt_tokens": predicted.prompt_tokens,
        "completion_tokens": predicted.completion_tokens,
        "total_tokens": predicted.prompt_tokens + predicted.completion_tokens,
    });
    for _ in 0..2 {
        let answer = complete(&mock, &body).await?;
        assert_eq!(answer["usage"], usage);
        let events = stream(&mock, &streamed("What is a tower layer?")).await?;
        assert_eq!(usage_chunk(&events), usage);
    }

    let client = reqwest::Client::new();
    let url = format!("{}/metrics", mock.base_url());
    for response in [
        client.get(&url).send().await?,
        client.post(&url).send().await?,
    ] {
        assert_eq!(response.status(), 404);
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["code"], "unknown_url");
    }
    Ok(())
}
