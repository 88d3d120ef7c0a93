use super::*;

fn sse_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers
}

fn json_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers
}

/// Runs `body` through a tap gathering content, in pieces of `step`
/// bytes (so events are split at every place).
fn tap(headers: &http::HeaderMap, body: &str, step: usize) -> AnswerSummary {
    let mut tap = AnswerTap::for_response(headers, 1 << 20).gather_content(1 << 16);
    for piece in body.as_bytes().chunks(step) {
        tap.observe(piece);
    }
    tap.finish().clone()
}

/// Like [`tap`], for every split size from 1 to 64 bytes and the whole
/// body; asserts they all agree and returns the summary.
fn tap_all_splits(headers: &http::HeaderMap, body: &str) -> AnswerSummary {
    let whole = tap(headers, body, body.len().max(1));
    for step in 1..64 {
        assert_eq!(tap(headers, body, step), whole, "split every {step} bytes");
    }
    whole
}

#[test]
fn reads_request_fields() {
    let req = ChatRequest::from_json(
        br#"{"model":"m","max_tokens":10,"max_completion_tokens":20,"n":2,
            "stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"abcd"},
                        {"role":"user","content":[{"type":"text","text":"efgh"},{"type":"image_url"}]},
                        {"role":"assistant","content":null}]}"#,
    )
    .unwrap_or_default();
    assert_eq!(req.model.as_deref(), Some("m"));
    assert_eq!(req.max_output_tokens, Some(20));
    assert!(req.stream && req.include_usage);
    assert_eq!(req.n, 2);
    assert_eq!(req.messages, 3);
    assert_eq!(req.inputs, 0);
    assert_eq!(req.prompt_bytes, 8);
    assert_eq!(req.estimated_prompt_tokens(), 2 + 3 * 4);
    assert_eq!(req.estimated_total_tokens(100), 14 + 40);
}

#[test]
fn rejects_what_is_not_json() {
    assert!(ChatRequest::from_json(b"not json").is_err());
    assert!(ChatRequest::from_json(br#"{"messages": 5}"#).is_err());
    assert!(ChatRequest::from_json(br#"{"messages": ["hi"]}"#).is_err());
    assert!(ChatRequest::from_json(br#"{"messages": null}"#).is_ok());
    assert!(ChatRequest::from_json(br#"{}"#).is_ok());
}

#[test]
fn chat_request_counts_tool_calls_and_escaped_text() {
    let req = ChatRequest::from_json(
        br#"{"model":"gpt-4o","messages":[
            {"role":"user","content":"a\"b\\c\u00e9"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18C"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]}"#,
    )
    .unwrap_or_default();
    assert_eq!(req.messages, 3);
    // `a"b\cé` is 7 bytes; the arguments 16; the result 3. Tool
    // definitions and names are not prompt text here.
    assert_eq!(req.prompt_bytes, 7 + 16 + 3);
    assert_eq!(req.max_output_tokens, None);
}

#[test]
fn completions_request() {
    let req = ChatRequest::from_json(
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"temperature":0}"#,
    )
    .unwrap_or_default();
    assert_eq!((req.messages, req.inputs, req.prompt_bytes), (0, 1, 18));
    assert_eq!(req.max_output_tokens, Some(7));
    assert_eq!(req.estimated_prompt_tokens(), 5);

    let req = ChatRequest::from_json(br#"{"model":"m","prompt":["abcd","efgh","ij"],"n":3}"#)
        .unwrap_or_default();
    assert_eq!((req.inputs, req.prompt_bytes, req.n), (3, 10, 3));

    let req = ChatRequest::from_json(br#"{"model":"m","prompt":[1212,318,257,1332]}"#)
        .unwrap_or_default();
    assert_eq!(
        (req.inputs, req.prompt_bytes, req.prompt_token_ids),
        (1, 0, 4)
    );
    assert_eq!(req.estimated_prompt_tokens(), 4);
}

#[test]
fn embeddings_request() {
    let req = ChatRequest::from_json(
        br#"{"input":"The food was delicious and the waiter...","model":"text-embedding-ada-002","encoding_format":"float"}"#,
    )
    .unwrap_or_default();
    assert_eq!(req.model.as_deref(), Some("text-embedding-ada-002"));
    assert_eq!((req.messages, req.inputs, req.prompt_bytes), (0, 1, 40));
    assert_eq!(req.max_output_tokens, None);
    assert!(!req.stream);

    let req = ChatRequest::from_json(
        br#"{"model":"text-embedding-3-small","input":["first text","second"],"dimensions":256}"#,
    )
    .unwrap_or_default();
    assert_eq!(
        (req.inputs, req.prompt_bytes, req.prompt_token_ids),
        (2, 16, 0)
    );

    let req = ChatRequest::from_json(
        br#"{"model":"text-embedding-3-small","input":[[1,2,3],[4,5],[6]]}"#,
    )
    .unwrap_or_default();
    assert_eq!(
        (req.inputs, req.prompt_bytes, req.prompt_token_ids),
        (3, 0, 6)
    );
    assert_eq!(req.estimated_prompt_tokens(), 6);

    let req = ChatRequest::from_json(br#"{"model":"m","input":[]}"#).unwrap_or_default();
    assert_eq!((req.inputs, req.prompt_token_ids), (0, 0));
}

#[test]
fn responses_request() {
    let req = ChatRequest::from_json(
        br#"{"model":"gpt-4.1","input":"Tell me a three sentence bedtime story about a unicorn."}"#,
    )
    .unwrap_or_default();
    assert_eq!((req.messages, req.inputs, req.prompt_bytes), (0, 1, 55));

    let req = ChatRequest::from_json(
        br#"{"model":"gpt-4.1","instructions":"You are a helpful assistant.",
            "input":[
              {"role":"user","content":[{"type":"input_text","text":"what is in this image?"},
                {"type":"input_image","image_url":"https://example.com/a-very-long-image-url.jpg"}]},
              {"type":"message","role":"assistant","content":[{"type":"output_text","text":"A cat."}]},
              {"type":"function_call","call_id":"call_1","name":"lookup","arguments":"{\"q\":1}"},
              {"type":"function_call_output","call_id":"call_1","output":"found"},
              {"role":"user","content":"And now?"}],
            "max_output_tokens":100,"stream":true}"#,
    )
    .unwrap_or_default();
    assert_eq!(req.messages, 0);
    assert_eq!(req.inputs, 5);
    assert_eq!(req.prompt_bytes, 28 + 22 + 6 + 7 + 5 + 8);
    assert_eq!(req.max_output_tokens, Some(100));
    assert!(req.stream);
    assert_eq!(req.n, 1);
}

#[test]
fn anthropic_request() {
    let req = ChatRequest::from_json(
        br#"{"model":"claude-sonnet-4-5","max_tokens":1024,
            "system":[{"type":"text","text":"You are an AI assistant.","cache_control":{"type":"ephemeral"}}],
            "messages":[
              {"role":"user","content":"Hello, world"},
              {"role":"assistant","content":[{"type":"text","text":"Hi!"},
                {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"location":"Paris"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"18C"},
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}],
            "stream":true}"#,
    )
    .unwrap_or_default();
    assert_eq!(req.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(req.max_output_tokens, Some(1024));
    assert_eq!((req.messages, req.inputs), (3, 0));
    assert_eq!(req.prompt_bytes, 24 + 12 + 3 + 3);
    assert!(req.stream && !req.include_usage);

    let req = ChatRequest::from_json(
        br#"{"model":"claude-sonnet-4-5","max_tokens":8,"system":"Be brief",
            "messages":[{"role":"user","content":"Hi"}]}"#,
    )
    .unwrap_or_default();
    assert_eq!(req.prompt_bytes, 8 + 2);
    assert_eq!(req.estimated_prompt_tokens(), 3 + 4);
}

#[test]
fn last_user_message_reads_every_conversation_shape() {
    assert_eq!(
        last_user_message(br#"{"model":"m","input":"Tell me a story"}"#).as_deref(),
        Some("Tell me a story")
    );
    assert_eq!(
        last_user_message(
            br#"{"input":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},
                {"type":"function_call_output","call_id":"c","output":"y"},
                {"role":"user","content":[{"type":"input_text","text":"second"}]}]}"#
        )
        .as_deref(),
        Some("second")
    );
    assert_eq!(last_user_message(br#"{"input":[[1,2],[3]]}"#), None);
    assert_eq!(last_user_message(br#"{"input":["a","b"]}"#), None);
    assert_eq!(
        last_user_message(
            br#"{"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#
        )
        .as_deref(),
        Some("Hi")
    );
}

#[test]
fn reads_completions_and_chunks() {
    let c = Completion::from_json(
        br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"length"}],
            "usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
    )
    .unwrap_or_default();
    assert_eq!(c.finish_reason, Some(FinishReason::Length));
    assert_eq!(c.usage.map(|u| u.total()), Some(8));
    assert!(!c.error);
    assert_eq!(c.content.as_deref(), Some("hi"));

    let chunk = StreamChunk::parse(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#);
    assert_eq!(chunk.finish_reason, Some(FinishReason::Stop));
    assert!(chunk.finish_reason.is_some_and(|r| r.is_complete()));
    let err = StreamChunk::parse(r#"{"error":{"message":"overloaded","type":"server_error"}}"#);
    assert!(err.error);
    assert!(StreamChunk::parse("{oops").malformed);
    assert!(StreamChunk::parse(" [DONE] ").done);
}

#[test]
fn chat_fields_of_an_unexpected_shape_hide_nothing() {
    // Some providers send content as parts, or an `error: null`.
    let chunk = StreamChunk::parse(
        r#"{"error":null,"choices":[{"index":0,"delta":{"content":[{"type":"thinking","thinking":"..."}]},
            "finish_reason":"stop"},{"index":1}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    );
    assert!(!chunk.error && !chunk.malformed);
    assert_eq!(chunk.finish_reason, Some(FinishReason::Stop));
    assert_eq!(chunk.usage, Some(Usage::new(1, 2)));
    let chunk = StreamChunk::parse(
        r#"{"choices":[{"delta":{"role":"assistant","content":"error"},"finish_reason":null}]}"#,
    );
    assert_eq!(chunk, StreamChunk::default());
}

#[test]
fn chat_stream_content_and_usage() {
    let body = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Line\\none \\\"q\\\" \\u00e9\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
        data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n\
        data: [DONE]\n\n";
    let summary = tap_all_splits(&sse_headers(), body);
    assert_eq!(summary.content.as_deref(), Some("Line\none \"q\" é"));
    assert_eq!(summary.usage, Some(Usage::new(9, 4)));
    assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    assert!(summary.done && !summary.error);
    assert_eq!(summary.events, 5);
}

#[test]
fn text_completions_json_and_stream() {
    let body = br#"{"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7","object":"text_completion","created":1589478378,
        "model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb",
        "choices":[{"text":"\n\nThis is indeed a test","index":0,"logprobs":null,"finish_reason":"length"}],
        "usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
    let c = Completion::from_json(body).unwrap_or_default();
    assert_eq!(c.usage, Some(Usage::new(5, 7)));
    assert_eq!(c.finish_reason, Some(FinishReason::Length));
    assert_eq!(c.content.as_deref(), Some("\n\nThis is indeed a test"));
    assert!(!c.error);

    let stream = "data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[{\"text\":\"This\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"system_fingerprint\":\"fp_44709d6fcb\"}\n\n\
        data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[{\"text\":\" is a test\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"system_fingerprint\":\"fp_44709d6fcb\"}\n\n\
        data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}],\"model\":\"gpt-3.5-turbo-instruct\",\"system_fingerprint\":\"fp_44709d6fcb\"}\n\n\
        data: {\"id\":\"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe\",\"object\":\"text_completion\",\"created\":1690759702,\"choices\":[],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":4,\"total_tokens\":8}}\n\n\
        data: [DONE]\n\n";
    let summary = tap_all_splits(&sse_headers(), stream);
    assert_eq!(summary.content.as_deref(), Some("This is a test"));
    assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    assert_eq!(summary.usage.map(|u| u.total()), Some(8));
    assert!(summary.done && !summary.error);
}

#[test]
fn embeddings_answer() {
    let body = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.0023064255,-0.009327292,-0.0028842222],"index":0},
        {"object":"embedding","embedding":[0.1,2e-3,-1],"index":1}],
        "model":"text-embedding-ada-002","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let c = Completion::from_json(body.as_bytes()).unwrap_or_default();
    assert_eq!(
        c.usage
            .map(|u| (u.prompt_tokens, u.completion_tokens, u.total())),
        Some((8, 0, 8))
    );
    assert_eq!(c.finish_reason, None);
    assert!(!c.error);
    assert_eq!(c.content, None);

    let summary = tap(&json_headers(), body, 7);
    assert_eq!(summary.usage.map(|u| u.total()), Some(8));
    assert!(!summary.error && summary.finish_reason.is_none() && summary.content.is_none());
}

const RESPONSE_JSON: &str = r#"{
  "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
  "object": "response",
  "created_at": 1741476542,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4.1-2025-04-14",
  "output": [
    {
      "type": "reasoning",
      "id": "rs_1",
      "summary": [{"type": "summary_text", "text": "Thinking about unicorns."}]
    },
    {
      "type": "message",
      "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
      "status": "completed",
      "role": "assistant",
      "content": [
        {
          "type": "output_text",
          "text": "In a peaceful grove beneath a silver moon, a unicorn named Lumina discovered a hidden pool.",
          "annotations": []
        }
      ]
    }
  ],
  "parallel_tool_calls": true,
  "previous_response_id": null,
  "reasoning": {"effort": null, "summary": null},
  "store": true,
  "temperature": 1.0,
  "text": {"format": {"type": "text"}},
  "tool_choice": "auto",
  "tools": [],
  "top_p": 1.0,
  "truncation": "disabled",
  "usage": {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 123
  },
  "user": null,
  "metadata": {}
}"#;

#[test]
fn responses_json() {
    let c = Completion::from_json(RESPONSE_JSON.as_bytes()).unwrap_or_default();
    assert_eq!(c.usage, Some(Usage::new(36, 87)));
    assert_eq!(c.finish_reason, Some(FinishReason::Stop));
    assert!(!c.error, "`\"error\": null` is no error");
    assert_eq!(
        c.content.as_deref(),
        Some(
            "In a peaceful grove beneath a silver moon, a unicorn named Lumina discovered a hidden pool."
        )
    );
    let summary = tap(&json_headers(), RESPONSE_JSON, 13);
    assert_eq!(summary.usage.map(|u| u.total()), Some(123));
    assert_eq!(summary.content, c.content);

    let incomplete = RESPONSE_JSON
        .replace(r#""status": "completed","#, r#""status": "incomplete","#)
        .replace(
            r#""incomplete_details": null"#,
            r#""incomplete_details": {"reason": "max_output_tokens"}"#,
        );
    let c = Completion::from_json(incomplete.as_bytes()).unwrap_or_default();
    assert_eq!(c.finish_reason, Some(FinishReason::Length));
    assert!(!c.error);
    let filtered = incomplete.replace(
        r#""reason": "max_output_tokens""#,
        r#""reason": "content_filter""#,
    );
    let c = Completion::from_json(filtered.as_bytes()).unwrap_or_default();
    assert_eq!(c.finish_reason, Some(FinishReason::ContentFilter));

    let failed = RESPONSE_JSON
        .replace(r#""status": "completed","#, r#""status": "failed","#)
        .replace(
            r#""error": null"#,
            r#""error": {"code": "server_error", "message": "The model failed to generate a response."}"#,
        );
    let c = Completion::from_json(failed.as_bytes()).unwrap_or_default();
    assert!(c.error);
    assert_eq!(c.finish_reason, None);

    let queued = RESPONSE_JSON.replace(r#""status": "completed","#, r#""status": "queued","#);
    let c = Completion::from_json(queued.as_bytes()).unwrap_or_default();
    assert_eq!(
        c.finish_reason,
        Some(FinishReason::Other("queued".to_owned()))
    );
    assert!(!c.finish_reason.is_some_and(|r| r.is_complete()));
}

/// A Responses stream as the API documents it (a reasoning model's,
/// trimmed of repeated fields).
fn responses_stream(end: &str) -> String {
    let response = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"{status}","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":{output},"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}"#
        )
    };
    let mut body = String::new();
    let mut event = |name: &str, data: &str| {
        body.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "response.created",
        &format!(
            r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
            response("in_progress", "[]", "null")
        ),
    );
    event(
        "response.in_progress",
        &format!(
            r#"{{"type":"response.in_progress","sequence_number":1,"response":{}}}"#,
            response("in_progress", "[]", "null")
        ),
    );
    event(
        "response.output_item.added",
        r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
    );
    event(
        "response.content_part.added",
        r#"{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#,
    );
    for (i, delta) in [
        "Hi",
        " there",
        "! How can I \\\"help\\\"",
        " with \\u00e9rror\\n?",
    ]
    .iter()
    .enumerate()
    {
        event(
            "response.output_text.delta",
            &format!(
                r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"{delta}","logprobs":[]}}"#,
                4 + i
            ),
        );
    }
    event(
        "response.output_text.done",
        r#"{"type":"response.output_text.done","sequence_number":8,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"text":"Hi there! How can I \"help\" with \u00e9rror\n?"}"#,
    );
    event(
        "response.content_part.done",
        r#"{"type":"response.content_part.done","sequence_number":9,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hi there! How can I \"help\" with \u00e9rror\n?","annotations":[]}}"#,
    );
    event(
        "response.output_item.done",
        r#"{"type":"response.output_item.done","sequence_number":10,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I \"help\" with \u00e9rror\n?","annotations":[]}]}}"#,
    );
    let usage = r#"{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}"#;
    let output = r#"[{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I \"help\" with \u00e9rror\n?","annotations":[]}]}]"#;
    match end {
        "completed" => event(
            "response.completed",
            &format!(
                r#"{{"type":"response.completed","sequence_number":11,"response":{}}}"#,
                response("completed", output, usage)
            ),
        ),
        "incomplete" => event(
            "response.incomplete",
            &format!(
                r#"{{"type":"response.incomplete","sequence_number":11,"response":{}}}"#,
                response("incomplete", output, usage)
                    .replace(r#""incomplete_details":null"#, r#""incomplete_details":{"reason":"max_output_tokens"}"#)
            ),
        ),
        "failed" => event(
            "response.failed",
            &format!(
                r#"{{"type":"response.failed","sequence_number":11,"response":{}}}"#,
                response("failed", "[]", "null").replace(
                    r#""error":null"#,
                    r#""error":{"code":"server_error","message":"The model failed to generate a response."}"#
                )
            ),
        ),
        "error" => event(
            "error",
            r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":11}"#,
        ),
        _ => {}
    }
    body
}

#[test]
fn responses_stream_completed() {
    let summary = tap_all_splits(&sse_headers(), &responses_stream("completed"));
    assert_eq!(summary.usage, Some(Usage::new(37, 11)));
    assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    assert!(
        summary.done && !summary.error,
        "`\"error\":null` in every response is no error"
    );
    assert_eq!(summary.events, 12);
    assert_eq!(
        summary.content.as_deref(),
        Some("Hi there! How can I \"help\" with érror\n?"),
        "the deltas, once: not the `done` events' full text"
    );
}

#[test]
fn responses_stream_incomplete_failed_error_cut() {
    let summary = tap_all_splits(&sse_headers(), &responses_stream("incomplete"));
    assert_eq!(summary.finish_reason, Some(FinishReason::Length));
    assert_eq!(summary.usage.map(|u| u.total()), Some(48));
    assert!(summary.done && !summary.error);

    let summary = tap_all_splits(&sse_headers(), &responses_stream("failed"));
    assert!(summary.error && summary.done);
    assert_eq!(summary.finish_reason, None);
    assert_eq!(summary.usage, None);

    let summary = tap_all_splits(&sse_headers(), &responses_stream("error"));
    assert!(summary.error && !summary.done);

    // Cut before its last event: no end, no finish, no usage.
    let summary = tap_all_splits(&sse_headers(), &responses_stream(""));
    assert!(!summary.done && !summary.error);
    assert_eq!((summary.finish_reason, summary.usage), (None, None));

    let chunk = StreamChunk::parse(
        r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null}"#,
    );
    assert!(chunk.error && !chunk.malformed && !chunk.done);
}

const ANTHROPIC_JSON: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [
    {"type": "thinking", "thinking": "The user greets me.", "signature": "EqQBCgIYAhIM"},
    {"type": "text", "text": "Hi! My name is Claude."},
    {"type": "text", "text": " How can I help?"}
  ],
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 503,
    "service_tier": "standard"
  }
}"#;

#[test]
fn anthropic_json() {
    let c = Completion::from_json(ANTHROPIC_JSON.as_bytes()).unwrap_or_default();
    let usage = c.usage.unwrap_or_default();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3195, 503));
    assert_eq!(usage.total(), 3698);
    assert_eq!(c.finish_reason, Some(FinishReason::Stop));
    assert!(!c.error);
    assert_eq!(
        c.content.as_deref(),
        Some("Hi! My name is Claude. How can I help?")
    );
    assert_eq!(tap(&json_headers(), ANTHROPIC_JSON, 5).content, c.content);

    for (stop, reason) in [
        ("max_tokens", FinishReason::Length),
        ("stop_sequence", FinishReason::Stop),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::ContentFilter),
        ("pause_turn", FinishReason::Other("pause_turn".to_owned())),
    ] {
        let body = ANTHROPIC_JSON.replace(r#""end_turn""#, &format!("\"{stop}\""));
        let c = Completion::from_json(body.as_bytes()).unwrap_or_default();
        assert_eq!(c.finish_reason, Some(reason), "{stop}");
    }

    let c = Completion::from_json(
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
    )
    .unwrap_or_default();
    assert!(c.error);
    assert_eq!((c.usage, c.finish_reason, c.content), (None, None, None));
}

#[test]
fn a_shared_answer_is_read_once_for_the_same_bytes_only() {
    let answer = |prompt: u64| {
        format!(
            r#"{{"choices":[{{"message":{{"content":"Hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":1,"total_tokens":{}}}}}"#,
            prompt + 1
        )
    };
    let (below, above) = (answer(3), answer(30));
    let mut extensions = http::Extensions::new();
    let mut filler = AnswerTap::for_response(&json_headers(), 1 << 20).share(&mut extensions);
    let mut same = AnswerTap::for_response(&json_headers(), 1 << 20).share(&mut extensions);
    let mut other = AnswerTap::for_response(&json_headers(), 1 << 20).share(&mut extensions);
    let mut texts = AnswerTap::for_response(&json_headers(), 1 << 20)
        .gather_content(1 << 10)
        .share(&mut extensions);
    let shared = extensions
        .get::<SharedAnswer>()
        .cloned()
        .unwrap_or_default();
    for tap in [&mut filler, &mut same, &mut texts] {
        tap.observe(below.as_bytes());
    }
    other.observe(above.as_bytes());
    assert!(
        shared.summary_of(below.as_bytes()).is_none(),
        "filled at the end"
    );

    assert_eq!(filler.finish().usage, Some(Usage::new(3, 1)));
    let filled = shared.summary_of(below.as_bytes()).cloned();
    assert_eq!(
        filled.as_ref().and_then(|s| s.usage),
        Some(Usage::new(3, 1))
    );
    assert_eq!(filled.and_then(|s| s.content), None);
    assert!(shared.summary_of(above.as_bytes()).is_none());
    assert_eq!(same.finish().usage, Some(Usage::new(3, 1)));
    // Other bytes (a layer between changed them) are read anew.
    assert_eq!(other.finish().usage, Some(Usage::new(30, 1)));
    assert_eq!(texts.finish().content.as_deref(), Some("Hi"));
    // A stream isn't shared.
    let mut sse = AnswerTap::for_response(&sse_headers(), 1 << 20).share(&mut extensions);
    sse.observe(b"data: [DONE]\n\n");
    assert!(sse.finish().done);
}

#[test]
fn without_content_reads_all_but_the_text() {
    let error = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let incomplete = RESPONSE_JSON.replace(r#""status": "completed""#, r#""status": "incomplete""#);
    for body in [RESPONSE_JSON, ANTHROPIC_JSON, error, &incomplete] {
        let full = Completion::from_json(body.as_bytes()).unwrap_or_default();
        let skimmed = Completion::without_content(body.as_bytes()).unwrap_or_default();
        assert_eq!(
            skimmed,
            Completion {
                content: None,
                ..full
            },
            "{body}"
        );
    }
    assert!(Completion::without_content(b"not json").is_err());
}

/// An Anthropic stream as the API documents it: text, then a tool call.
const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2000,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\",\\nlet's check \\\"the weather\\\"\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

#[test]
fn anthropic_stream() {
    let summary = tap_all_splits(&sse_headers(), ANTHROPIC_STREAM);
    let usage = summary.usage.unwrap_or_default();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2472, 89));
    assert_eq!(usage.total(), 2561);
    assert_eq!(summary.finish_reason, Some(FinishReason::ToolCalls));
    assert!(summary.done && !summary.error);
    assert_eq!(summary.events, 12);
    assert_eq!(
        summary.content.as_deref(),
        Some("Okay,\nlet's check \"the weather\"")
    );

    // A later report of a field that was reported before keeps the
    // larger count (newer API versions repeat the input in
    // `message_delta`).
    let repeated = ANTHROPIC_STREAM.replace(
        r#""usage":{"output_tokens":89}"#,
        r#""usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2000,"output_tokens":89}"#,
    );
    assert_eq!(tap(&sse_headers(), &repeated, 100).usage, summary.usage);

    let ended = ANTHROPIC_STREAM.replace(
        r#""stop_reason":"tool_use""#,
        r#""stop_reason":"max_tokens""#,
    );
    assert_eq!(
        tap(&sse_headers(), &ended, 100).finish_reason,
        Some(FinishReason::Length)
    );
}

#[test]
fn anthropic_stream_error_and_cut() {
    let cut = ANTHROPIC_STREAM
        .split("event: content_block_stop")
        .next()
        .unwrap_or_default();
    let errored = format!(
        "{cut}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n"
    );
    let summary = tap_all_splits(&sse_headers(), &errored);
    assert!(summary.error && !summary.done);
    assert_eq!(summary.finish_reason, None);
    assert_eq!(summary.usage.map(|u| u.prompt_tokens), Some(2472));

    let summary = tap_all_splits(&sse_headers(), cut);
    assert!(!summary.error && !summary.done && summary.finish_reason.is_none());

    // An event named `error` is one, whatever its data.
    let summary = tap(&sse_headers(), "event: error\ndata: overloaded\n\n", 100);
    assert!(summary.error);
}

#[test]
fn usage_reads_every_shape_and_merges() {
    let read = |json: &str| serde_json::from_str::<Usage>(json).unwrap_or_default();
    assert_eq!(
        read(
            r#"{"prompt_tokens":3,"completion_tokens":5,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":0}}"#
        ),
        Usage {
            prompt_tokens: 3,
            completion_tokens: 5,
            total_tokens: 9
        }
    );
    assert_eq!(
        read(r#"{"input_tokens":3,"output_tokens":5,"total_tokens":8}"#),
        Usage::new(3, 5)
    );
    let anthropic = read(
        r#"{"input_tokens":3,"cache_creation_input_tokens":null,"cache_read_input_tokens":4,"output_tokens":5}"#,
    );
    assert_eq!(
        (
            anthropic.prompt_tokens,
            anthropic.completion_tokens,
            anthropic.total()
        ),
        (7, 5, 12)
    );
    assert_eq!(read("{}"), Usage::default());

    let mut usage = Usage {
        prompt_tokens: 5,
        completion_tokens: 1,
        total_tokens: 6,
    };
    usage.merge(Usage {
        prompt_tokens: 0,
        completion_tokens: 9,
        total_tokens: 0,
    });
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens, usage.total()),
        (5, 9, 14)
    );
    let mut usage = Usage::default();
    usage.merge(Usage {
        prompt_tokens: 2,
        completion_tokens: 3,
        total_tokens: 0,
    });
    assert_eq!((usage.total_tokens, usage.total()), (0, 5));
}

#[test]
fn content_limits_hold() {
    let mut tap = AnswerTap::for_response(&json_headers(), 1 << 20).gather_content(24);
    tap.observe(ANTHROPIC_JSON.as_bytes());
    assert_eq!(
        tap.finish().content.as_deref(),
        Some("Hi! My name is Claude. H")
    );

    let mut tap = AnswerTap::for_response(&sse_headers(), 1 << 20).gather_content(4);
    tap.observe(ANTHROPIC_STREAM.as_bytes());
    assert_eq!(tap.finish().content.as_deref(), Some("Okay"));

    let mut tap = AnswerTap::for_response(&sse_headers(), 1 << 20);
    tap.observe(ANTHROPIC_STREAM.as_bytes());
    assert_eq!(tap.finish().content, None, "not gathered unless asked");
}
