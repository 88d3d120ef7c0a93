//! The routes beyond chat completions, over a real socket: legacy completions, embeddings, the
//! Responses API, Anthropic's Messages API and the model list; their usage numbers, their
//! stream events, their errors, and what the stats say about them.

use std::error::Error;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mock_llm::{Api, Fault, LastRequest, MockHandle, Stats, StatsReport, answer_for};
use serde_json::{Value, json};
use test_support::sse::{SseEvent, SseReader};

type TestResult = Result<(), Box<dyn Error>>;

async fn mock() -> MockHandle {
    test_support::mock_llm(Duration::from_millis(1)).await
}

async fn post(mock: &MockHandle, path: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}{path}", mock.base_url()))
        .json(body)
        .send()
        .await
}

/// Posts `body` and expects a `200` JSON answer.
async fn ok(mock: &MockHandle, path: &str, body: &Value) -> Result<Value, Box<dyn Error>> {
    let response = post(mock, path, body).await?;
    assert_eq!(response.status(), 200, "{path} {body}");
    assert_eq!(
        response.headers()["content-type"].to_str()?,
        "application/json"
    );
    Ok(response.json().await?)
}

/// Posts `body` and expects `status` with a JSON error body.
async fn refused(
    mock: &MockHandle,
    path: &str,
    body: &Value,
    status: u16,
) -> Result<Value, Box<dyn Error>> {
    let response = post(mock, path, body).await?;
    assert_eq!(response.status(), status, "{path} {body}");
    Ok(response.json().await?)
}

/// Every event of a stream, and the body error if it failed.
async fn sse(response: reqwest::Response) -> (Vec<SseEvent>, Option<reqwest::Error>) {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let mut reader = SseReader::new(response);
    let events = reader.rest().await;
    (events, reader.into_error())
}

/// A whole stream that must end cleanly.
async fn stream(
    mock: &MockHandle,
    path: &str,
    body: &Value,
) -> Result<Vec<SseEvent>, Box<dyn Error>> {
    let (events, error) = sse(post(mock, path, body).await?).await;
    assert!(error.is_none(), "{error:?}");
    Ok(events)
}

fn parse(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
}

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|event| event.event.as_str()).collect()
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

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

// ---------------------------------------------------------------- /v1/completions

fn completion(prompt: Value) -> Value {
    json!({"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "temperature": 0.3})
}

#[tokio::test]
async fn completions_answer_in_text_completion_shape() -> TestResult {
    let mock = mock().await;
    let request = completion(json!("Say something about towers"));
    let first = ok(&mock, "/v1/completions", &request).await?;
    let again = ok(&mock, "/v1/completions", &request).await?;
    assert_eq!(first["choices"], again["choices"]);
    assert_eq!(first["id"], again["id"]);

    assert!(
        first["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("cmpl-"))
    );
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["model"], "gpt-3.5-turbo-instruct");
    assert!(first["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
    let choice = &first["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(first["choices"].as_array().map(Vec::len), Some(1));
    let text = choice["text"].as_str().ok_or("no text")?;
    assert!(text.starts_with(' '));

    let expected = answer_for(Api::Completions, &request).ok_or("refused")?;
    assert_eq!(text, expected.content);
    // The prompt's words, no per-prompt overhead.
    assert_eq!(expected.prompt_tokens, 4);
    assert_eq!(first["usage"]["prompt_tokens"], 4);
    assert_eq!(first["usage"]["completion_tokens"], words(text));
    assert_eq!(first["usage"]["total_tokens"], 4 + words(text));

    // An array of prompts counts the words of all; token ids count one each.
    let many = ok(
        &mock,
        "/v1/completions",
        &completion(json!(["one two", "three"])),
    )
    .await?;
    assert_eq!(many["usage"]["prompt_tokens"], 3);
    let ids = ok(
        &mock,
        "/v1/completions",
        &completion(json!([1, 2, 3, 4, 5])),
    )
    .await?;
    assert_eq!(ids["usage"]["prompt_tokens"], 5);

    // `max_tokens` cuts: a prefix, finish_reason "length".
    let mut cut = request.clone();
    cut["max_tokens"] = json!(3);
    let cut = ok(&mock, "/v1/completions", &cut).await?;
    let cut_text = cut["choices"][0]["text"].as_str().ok_or("no text")?;
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert_eq!(cut["usage"]["completion_tokens"], 3);
    assert_eq!(words(cut_text), 3);
    assert!(text.starts_with(cut_text));
    Ok(())
}

#[tokio::test]
async fn completions_stream_one_chunk_per_token() -> TestResult {
    let mock = mock().await;
    let plain = completion(json!("Stream a completion"));
    let whole = ok(&mock, "/v1/completions", &plain).await?;
    let text = whole["choices"][0]["text"].as_str().ok_or("no text")?;
    let n = words(text) as usize;

    let mut request = plain.clone();
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = stream(&mock, "/v1/completions", &request).await?;
    // n tokens + finish + usage + [DONE]
    assert_eq!(events.len(), n + 3, "{events:#?}");
    let mut streamed = String::new();
    for event in &events[..n] {
        let chunk = parse(&event.data);
        assert_eq!(chunk["id"], whole["id"]);
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["model"], "gpt-3.5-turbo-instruct");
        assert_eq!(chunk["choices"][0]["index"], 0);
        assert_eq!(chunk["choices"][0]["logprobs"], Value::Null);
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(chunk["usage"], Value::Null);
        let piece = chunk["choices"][0]["text"].as_str().ok_or("no text")?;
        assert_eq!(words(piece), 1);
        streamed.push_str(piece);
    }
    assert_eq!(streamed, text);
    let finish = parse(&events[n].data);
    assert_eq!(finish["choices"][0]["text"], "");
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = parse(&events[n + 1].data);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    assert_eq!(events[n + 2].data, "[DONE]");

    // Without include_usage: no usage field, no usage chunk.
    let mut request = plain.clone();
    request["stream"] = json!(true);
    request["max_tokens"] = json!(2);
    let events = stream(&mock, "/v1/completions", &request).await?;
    assert_eq!(events.len(), 2 + 2);
    assert!(
        events[..3]
            .iter()
            .all(|e| parse(&e.data).get("usage").is_none())
    );
    assert_eq!(
        parse(&events[2].data)["choices"][0]["finish_reason"],
        "length"
    );

    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_completed, 2);
    assert_eq!(stats.tokens_sent, 2 * n as u64 + 2);
    Ok(())
}

// ---------------------------------------------------------------- /v1/embeddings

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

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() -> TestResult {
    let mock = mock().await;
    let request = json!({"model": "text-embedding-3-small", "input": "hello tower world"});
    let body = ok(&mock, "/v1/embeddings", &request).await?;
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let vector = floats(&body["data"][0]["embedding"]);
    assert_eq!(vector.len(), 16);
    let norm: f64 = vector.iter().map(|x| f64::from(*x).powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    assert_eq!(vector, mock_llm::embedding("hello tower world", 16));

    // Same text, same vector, whatever the model; another text, another vector.
    let again = ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "other", "input": ["hello tower world", "something else"]}),
    )
    .await?;
    assert_eq!(floats(&again["data"][0]["embedding"]), vector);
    assert_eq!(again["data"][1]["index"], 1);
    assert_ne!(floats(&again["data"][1]["embedding"]), vector);
    assert_eq!(again["usage"]["prompt_tokens"], 3 + 2);

    // `dimensions`.
    let small = ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "m", "input": "hello tower world", "dimensions": 8}),
    )
    .await?;
    assert_eq!(floats(&small["data"][0]["embedding"]).len(), 8);

    // Token ids: one per id, embedded as their decimal text.
    let ids = ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "m", "input": [[1, 2, 3], [4]]}),
    )
    .await?;
    assert_eq!(ids["usage"]["prompt_tokens"], 4);
    assert_eq!(
        floats(&ids["data"][0]["embedding"]),
        mock_llm::embedding("1 2 3", 16)
    );
    Ok(())
}

#[tokio::test]
async fn base64_embeddings_decode_to_the_float_vector() -> TestResult {
    let mock = mock().await;
    let texts = ["first input", "the second one"];
    let request = |format: &str| {
        json!({"model": "m", "input": texts,
               "encoding_format": format, "dimensions": 24})
    };
    let float = ok(&mock, "/v1/embeddings", &request("float")).await?;
    let base64 = ok(&mock, "/v1/embeddings", &request("base64")).await?;
    assert_eq!(float["usage"], base64["usage"]);
    for index in 0..texts.len() {
        let encoded = base64["data"][index]["embedding"]
            .as_str()
            .ok_or("base64 embedding is not a string")?;
        let bytes = STANDARD.decode(encoded)?;
        assert_eq!(bytes.len(), 24 * 4);
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(decoded, floats(&float["data"][index]["embedding"]));
        assert_eq!(decoded, mock_llm::embedding(texts[index], 24));
    }
    Ok(())
}

#[tokio::test]
async fn embeddings_refuse_bad_input_in_openai_shape() -> TestResult {
    let mock = mock().await;
    let too_many: Vec<&str> = vec!["x"; 2049];
    for bad in [
        json!({"model": "m", "input": ""}),
        json!({"model": "m", "input": []}),
        json!({"model": "m", "input": ["ok", ""]}),
        json!({"model": "m", "input": [[]]}),
        json!({"model": "m", "input": too_many}),
        json!({"model": "m", "input": ["a", 1]}),
        json!({"model": "m", "input": [-1]}),
        json!({"model": "m", "input": {"text": "x"}}),
        json!({"model": "m"}),
        json!({"input": "x"}),
        json!({"model": "m", "input": "x", "dimensions": 0}),
        json!({"model": "m", "input": "x", "dimensions": 4097}),
        json!({"model": "m", "input": "x", "dimensions": "8"}),
        json!({"model": "m", "input": "x", "encoding_format": "hex"}),
    ] {
        let error = refused(&mock, "/v1/embeddings", &bad, 400).await?;
        assert_eq!(error["error"]["type"], "invalid_request_error", "{bad}");
        assert!(error["error"]["message"].is_string());
    }
    let fine: Vec<&str> = vec!["x"; 2048];
    let body = ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "m", "input": fine}),
    )
    .await?;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2048));
    assert_eq!(body["usage"]["prompt_tokens"], 2048);
    let widest = json!({"model": "m", "input": "x", "dimensions": 4096});
    let body = ok(&mock, "/v1/embeddings", &widest).await?;
    assert_eq!(floats(&body["data"][0]["embedding"]).len(), 4096);

    let not_json = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", mock.base_url()))
        .body("{nope")
        .send()
        .await?;
    assert_eq!(not_json.status(), 400);
    let error: Value = not_json.json().await?;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(mock.stats().invalid, 15);
    Ok(())
}

// ---------------------------------------------------------------- /v1/responses

fn responses_request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "instructions": "Be terse.",
        "input": [
            {"role": "user", "content": "What is a tower layer?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "A wrapper."}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "And a service?"}]}
        ],
        "stream": stream,
    })
}

#[tokio::test]
async fn responses_answer_with_a_response_object() -> TestResult {
    let mock = mock().await;
    let request = responses_request(false);
    let body = ok(&mock, "/v1/responses", &request).await?;
    let expected = answer_for(Api::Responses, &request).ok_or("refused")?;
    // 3 items at 4 + (5, 2, 3) words, instructions at 4 + 2.
    assert_eq!(expected.prompt_tokens, 12 + 10 + 6);

    let id = body["id"].as_str().ok_or("no id")?;
    assert!(id.starts_with("resp_"));
    assert_eq!(body["object"], "response");
    assert!(
        body["created_at"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000)
    );
    assert_eq!(body["status"], "completed");
    assert_eq!(body["incomplete_details"], Value::Null);
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["instructions"], "Be terse.");
    assert_eq!(body["max_output_tokens"], Value::Null);
    assert_eq!(body["tools"], json!([]));
    assert_eq!(body["text"], json!({"format": {"type": "text"}}));
    assert_eq!(body["reasoning"], json!({"effort": null, "summary": null}));
    assert_eq!(body["metadata"], json!({}));
    assert_eq!(body["truncation"], "disabled");
    assert_eq!(body["parallel_tool_calls"], true);
    assert_eq!(body["store"], true);

    let output = body["output"].as_array().ok_or("no output")?;
    assert_eq!(output.len(), 1);
    let item = &output[0];
    assert_eq!(item["type"], "message");
    assert!(item["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(item["status"], "completed");
    assert_eq!(item["role"], "assistant");
    let part = &item["content"][0];
    assert_eq!(part["type"], "output_text");
    assert_eq!(part["annotations"], json!([]));
    assert_eq!(part["text"], expected.content.as_str());

    let n = expected.completion_tokens;
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": 28,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 28 + n,
        })
    );

    // Same request, same response; a string input is one item.
    assert_eq!(
        ok(&mock, "/v1/responses", &request).await?["output"],
        body["output"]
    );
    let short = ok(
        &mock,
        "/v1/responses",
        &json!({"model": "m", "input": "one two three"}),
    )
    .await?;
    assert_eq!(short["usage"]["input_tokens"], 4 + 3);
    assert_eq!(short["instructions"], Value::Null);

    // `max_output_tokens` cuts: incomplete, with the reason.
    let mut cut = request.clone();
    cut["max_output_tokens"] = json!(2);
    let cut = ok(&mock, "/v1/responses", &cut).await?;
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(
        cut["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(cut["max_output_tokens"], 2);
    assert_eq!(cut["output"][0]["status"], "incomplete");
    assert_eq!(cut["usage"]["output_tokens"], 2);
    let cut_text = cut["output"][0]["content"][0]["text"]
        .as_str()
        .ok_or("no text")?;
    assert!(expected.content.starts_with(cut_text));
    Ok(())
}

#[tokio::test]
async fn responses_stream_named_events_in_order() -> TestResult {
    let mock = mock().await;
    let whole = ok(&mock, "/v1/responses", &responses_request(false)).await?;
    let n = whole["usage"]["output_tokens"].as_u64().ok_or("no usage")? as usize;
    let events = stream(&mock, "/v1/responses", &responses_request(true)).await?;

    let mut expected_names = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected_names.extend(std::iter::repeat_n("response.output_text.delta", n));
    expected_names.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names(&events), expected_names);

    let data: Vec<Value> = events.iter().map(|e| parse(&e.data)).collect();
    for (i, (event, data)) in events.iter().zip(&data).enumerate() {
        assert_eq!(data["type"], event.event.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let id = &whole["id"];
    let item_id = &whole["output"][0]["id"];

    let created = &data[0]["response"];
    assert_eq!(&created["id"], id);
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["usage"], Value::Null);
    assert_eq!(data[1]["response"]["status"], "in_progress");

    assert_eq!(data[2]["output_index"], 0);
    assert_eq!(
        data[2]["item"],
        json!({"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
               "content": []})
    );
    assert_eq!(&data[3]["item_id"], item_id);
    assert_eq!(data[3]["output_index"], 0);
    assert_eq!(data[3]["content_index"], 0);
    assert_eq!(
        data[3]["part"],
        json!({"type": "output_text", "text": "", "annotations": []})
    );

    let mut text = String::new();
    for delta in &data[4..4 + n] {
        assert_eq!(&delta["item_id"], item_id);
        assert_eq!(delta["output_index"], 0);
        assert_eq!(delta["content_index"], 0);
        text.push_str(delta["delta"].as_str().ok_or("no delta")?);
    }
    let whole_text = whole["output"][0]["content"][0]["text"]
        .as_str()
        .ok_or("no text")?;
    assert_eq!(text, whole_text);

    let done = &data[4 + n..];
    assert_eq!(done[0]["text"], whole_text);
    assert_eq!(done[1]["part"]["text"], whole_text);
    assert_eq!(done[2]["item"], whole["output"][0]);
    let completed = &done[3]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"], whole["output"]);
    assert_eq!(completed["usage"], whole["usage"]);
    // No `[DONE]` in this API.
    assert!(events.iter().all(|e| e.data != "[DONE]"));

    // A cut answer ends with `response.incomplete`.
    let mut cut = responses_request(true);
    cut["max_output_tokens"] = json!(1);
    let events = stream(&mock, "/v1/responses", &cut).await?;
    assert_eq!(names(&events).last(), Some(&"response.incomplete"));
    let last = parse(&events[events.len() - 1].data);
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["usage"]["output_tokens"], 1);

    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_completed, 2);
    assert_eq!(stats.tokens_sent, 2 * n as u64 + 1);
    Ok(())
}

// ---------------------------------------------------------------- /v1/messages

fn messages_request(stream: bool) -> Value {
    json!({
        "model": "claude-3-5-haiku",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [
            {"role": "user", "content": "What is a tower layer?"},
            {"role": "assistant", "content": [{"type": "text", "text": "A wrapper."}]},
            {"role": "user",
             "content": [{"type": "text", "text": "And a service?"},
                         {"type": "image", "source": {}}]}
        ],
        "stream": stream,
    })
}

#[tokio::test]
async fn messages_answer_in_anthropic_shape() -> TestResult {
    let mock = mock().await;
    let request = messages_request(false);
    let body = ok(&mock, "/v1/messages", &request).await?;
    let expected = answer_for(Api::Messages, &request).ok_or("refused")?;
    let n = expected.completion_tokens;
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-3-5-haiku");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": expected.content}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    // 3 messages at 4 + (5, 2, 3) words, system at 4 + 2.
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 28, "output_tokens": n})
    );
    assert_eq!(ok(&mock, "/v1/messages", &request).await?, body);

    let mut cut = request.clone();
    cut["max_tokens"] = json!(3);
    let cut = ok(&mock, "/v1/messages", &cut).await?;
    assert_eq!(cut["stop_reason"], "max_tokens");
    assert_eq!(cut["usage"]["output_tokens"], 3);
    let cut_text = cut["content"][0]["text"].as_str().ok_or("no text")?;
    assert!(expected.content.starts_with(cut_text));
    Ok(())
}

#[tokio::test]
async fn messages_stream_named_events_in_order() -> TestResult {
    let mock = mock().await;
    let whole = ok(&mock, "/v1/messages", &messages_request(false)).await?;
    let n = whole["usage"]["output_tokens"].as_u64().ok_or("no usage")? as usize;
    let events = stream(&mock, "/v1/messages", &messages_request(true)).await?;

    let mut expected_names = vec!["message_start", "content_block_start", "ping"];
    expected_names.extend(std::iter::repeat_n("content_block_delta", n));
    expected_names.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected_names);
    let data: Vec<Value> = events.iter().map(|e| parse(&e.data)).collect();
    for (event, data) in events.iter().zip(&data) {
        assert_eq!(data["type"], event.event.as_str());
    }

    assert_eq!(
        data[0]["message"],
        json!({
            "id": whole["id"], "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 28, "output_tokens": 1},
        })
    );
    assert_eq!(
        data[1],
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(data[2], json!({"type": "ping"}));
    let mut text = String::new();
    for delta in &data[3..3 + n] {
        assert_eq!(delta["index"], 0);
        assert_eq!(delta["delta"]["type"], "text_delta");
        text.push_str(delta["delta"]["text"].as_str().ok_or("no text")?);
    }
    assert_eq!(text, whole["content"][0]["text"].as_str().ok_or("no text")?);
    assert_eq!(
        data[3 + n],
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        data[4 + n],
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": n},
        })
    );
    assert_eq!(data[5 + n], json!({"type": "message_stop"}));
    Ok(())
}

#[tokio::test]
async fn messages_errors_have_the_anthropic_shape() -> TestResult {
    let mock = mock().await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    for bad in [
        json!({"model": "claude", "messages": messages}),
        json!({"model": "claude", "messages": messages, "max_tokens": 0}),
        json!({"model": "claude", "messages": messages, "max_tokens": "many"}),
        json!({"model": "claude", "max_tokens": 10}),
        json!({"model": "claude", "max_tokens": 10, "messages": [{"content": "no role"}]}),
        json!({"model": "claude", "max_tokens": 10, "messages": messages, "system": 3}),
        json!({"max_tokens": 10, "messages": messages}),
        json!(["not", "an", "object"]),
    ] {
        let error = refused(&mock, "/v1/messages", &bad, 400).await?;
        assert_eq!(error["type"], "error", "{bad}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"].is_string());
    }
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", mock.base_url());
    let not_json = client.post(&url).body("{nope").send().await?;
    assert_eq!(not_json.status(), 400);
    assert_eq!(not_json.json::<Value>().await?["type"], "error");
    let get = client.get(&url).send().await?;
    assert_eq!(get.status(), 405);
    assert_eq!(
        get.json::<Value>().await?["error"]["type"],
        "invalid_request_error"
    );
    Ok(())
}

// ---------------------------------------------------------------- /v1/models

#[tokio::test]
async fn models_are_a_fixed_list() -> TestResult {
    let mock = mock().await;
    let list: Value = reqwest::get(format!("{}/v1/models", mock.base_url()))
        .await?
        .json()
        .await?;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().ok_or("no data")?;
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    for id in ["mock", "gpt-4o-mini", "claude-3-5-haiku"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    for model in data {
        assert_eq!(model["object"], "model");
        assert_eq!(model["owned_by"], "mock");
        assert_eq!(model["created"], data[0]["created"]);
    }
    // A listing is not a model request.
    assert_eq!(mock.stats(), Stats::default());
    assert_eq!(mock.endpoints().models, 1);
    Ok(())
}

// ---------------------------------------------------------------- stats

#[tokio::test]
async fn stats_count_each_endpoint_and_keep_the_last_request() -> TestResult {
    let mock = mock().await;
    let client = reqwest::Client::new();
    let base = mock.base_url();
    assert_eq!(mock.last_request(), None);

    ok(&mock, "/v1/completions", &completion(json!("hi"))).await?;
    ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "e", "input": "hi"}),
    )
    .await?;
    ok(
        &mock,
        "/v1/responses",
        &json!({"model": "r", "input": "hi"}),
    )
    .await?;
    refused(&mock, "/v1/responses", &json!({"model": "r"}), 400).await?;
    client
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer sk-openai")
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(
        mock.last_request(),
        Some(LastRequest {
            path: "/v1/chat/completions".to_owned(),
            model: Some("gpt-x".to_owned()),
            authorization: Some("Bearer sk-openai".to_owned()),
            x_api_key: None,
            anthropic_version: None,
        })
    );
    let message = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "sk-ant-1")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-upstream", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(message.status(), 200);
    message.bytes().await?;

    let endpoints = mock.endpoints();
    assert_eq!(
        (
            endpoints.chat,
            endpoints.completions,
            endpoints.embeddings,
            endpoints.responses,
            endpoints.messages,
            endpoints.models
        ),
        (1, 1, 1, 2, 1, 0)
    );
    let stats = mock.stats();
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.completions, 5);
    assert_eq!(stats.invalid, 1);

    let raw: Value = client
        .get(format!("{base}/admin/stats"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(raw["requests"], 6);
    assert_eq!(
        raw["endpoints"],
        json!({"chat": 1, "completions": 1, "embeddings": 1, "responses": 2, "messages": 1,
               "models": 0})
    );
    assert_eq!(
        raw["last_request"],
        json!({
            "path": "/v1/messages",
            "model": "claude-upstream",
            "authorization": null,
            "x_api_key": "sk-ant-1",
            "anthropic_version": "2023-06-01",
        })
    );
    let report: StatsReport = serde_json::from_value(raw.clone())?;
    assert_eq!(report, mock.report());
    // A client that only knows `Stats` still reads the counters.
    let counters: Stats = serde_json::from_value(raw)?;
    assert_eq!(counters, mock.stats());

    // A malformed body is recorded too, without a model.
    client
        .post(format!("{base}/v1/embeddings"))
        .header("authorization", "Bearer other")
        .body("{nope")
        .send()
        .await?;
    let last = mock.last_request().ok_or("no last request")?;
    assert_eq!(last.path, "/v1/embeddings");
    assert_eq!(last.model, None);
    assert_eq!(last.authorization.as_deref(), Some("Bearer other"));

    let reset: StatsReport = client
        .post(format!("{base}/admin/reset"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(reset, StatsReport::default());
    assert_eq!(mock.report(), StatsReport::default());
    Ok(())
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn fail_rate_applies_to_every_route_in_its_shape() -> TestResult {
    let mock = mock().await;
    mock.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    for (path, body) in [
        ("/v1/completions", completion(json!("x"))),
        ("/v1/embeddings", json!({"model": "m", "input": "x"})),
        ("/v1/responses", json!({"model": "m", "input": "x"})),
    ] {
        let error = refused(&mock, path, &body, 500).await?;
        assert_eq!(error["error"]["type"], "server_error", "{path}");
    }
    let error = refused(&mock, "/v1/messages", &messages_request(false), 500).await?;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
    // Invalid requests are refused before the draw.
    refused(
        &mock,
        "/v1/embeddings",
        &json!({"model": "m", "input": []}),
        400,
    )
    .await?;
    let stats = mock.stats();
    assert_eq!((stats.requests, stats.failed, stats.invalid), (5, 4, 1));

    // The draw is shared: at 0.5, every second request fails, whichever the route.
    mock.set_fault(Fault {
        fail_rate: 0.5,
        ..Fault::default()
    });
    let mut statuses = Vec::new();
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "m", "input": "x"})),
        ("/v1/messages", messages_request(false)),
        ("/v1/responses", json!({"model": "m", "input": "x"})),
        ("/v1/completions", completion(json!("x"))),
    ] {
        statuses.push(post(&mock, path, &body).await?.status().as_u16());
    }
    assert_eq!(statuses, [200, 500, 200, 500]);
    Ok(())
}

#[tokio::test]
async fn latency_stalls_embeddings_too() -> TestResult {
    let mock = mock().await;
    mock.set_fault(Fault {
        latency_ms: 200,
        ..Fault::default()
    });
    let started = Instant::now();
    ok(
        &mock,
        "/v1/embeddings",
        &json!({"model": "m", "input": "slow"}),
    )
    .await?;
    assert!(started.elapsed() >= Duration::from_millis(200));
    Ok(())
}

#[tokio::test]
async fn error_events_are_in_band_in_each_api() -> TestResult {
    let mock = mock().await;
    mock.set_fault(Fault {
        error_event: true,
        break_after_tokens: Some(2),
        ..Fault::default()
    });

    let events = stream(&mock, "/v1/responses", &responses_request(true)).await?;
    // created, in_progress, item added, part added, 2 deltas, error
    assert_eq!(events.len(), 7, "{events:#?}");
    let error = &events[6];
    assert_eq!(error.event, "error");
    let data = parse(&error.data);
    assert_eq!(data["type"], "error");
    assert_eq!(data["code"], "server_error");
    assert_eq!(data["sequence_number"], 6);
    assert!(data["message"].is_string());

    let events = stream(&mock, "/v1/messages", &messages_request(true)).await?;
    // message_start, block start, ping, 2 deltas, error
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    let data = parse(&events[5].data);
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(data["error"]["message"].is_string());

    let mut request = completion(json!("x"));
    request["stream"] = json!(true);
    let events = stream(&mock, "/v1/completions", &request).await?;
    assert_eq!(events.len(), 3);
    assert_eq!(parse(&events[2].data)["error"]["type"], "server_error");

    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_errored, 3);
    assert_eq!(stats.tokens_sent, 6);
    Ok(())
}

#[tokio::test]
async fn break_after_tokens_cuts_every_stream() -> TestResult {
    let mock = mock().await;
    mock.set_fault(Fault {
        break_after_tokens: Some(3),
        ..Fault::default()
    });
    let mut completions = completion(json!("x"));
    completions["stream"] = json!(true);
    for (path, body, head) in [
        ("/v1/completions", completions, 0),
        ("/v1/responses", responses_request(true), 4),
        ("/v1/messages", messages_request(true), 3),
    ] {
        let (events, error) = sse(post(&mock, path, &body).await?).await;
        assert!(error.is_some(), "{path}: the body should fail");
        assert_eq!(events.len(), head + 3, "{path}: {events:#?}");
    }
    let stats = wait_for(&mock, |s| s.in_flight == 0).await;
    assert_eq!(stats.streams_broken, 3);
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.tokens_sent, 9);

    // Non-streaming answers are whole.
    ok(&mock, "/v1/messages", &messages_request(false)).await?;
    Ok(())
}

#[tokio::test]
async fn a_client_leaving_an_anthropic_stream_is_counted_as_cancelled() -> TestResult {
    let mock = test_support::mock_llm(Duration::from_millis(30)).await;
    let response = post(&mock, "/v1/messages", &messages_request(true)).await?;
    let mut reader = SseReader::new(response);
    reader.take(4).await;
    drop(reader);
    let stats = wait_for(&mock, |s| s.streams_cancelled == 1 && s.in_flight == 0).await;
    assert_eq!(stats.streams_cancelled, 1, "{stats:?}");
    assert_eq!(stats.streams_completed, 0);
    Ok(())
}
