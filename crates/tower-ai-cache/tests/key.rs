//! The cache key: every output-affecting parameter is in it, formatting is
//! not, tenants never share one, and no input makes it panic.

use http::Method;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower_ai_cache::{CacheKey, IgnoreList, KeyScope, canonical_json};
use tower_ai_core::key::ClientKey;

fn tenant(name: &str) -> KeyScope {
    KeyScope::Caller(ClientKey::digest("api-key", name))
}

fn key_of(body: &Value) -> CacheKey {
    key_with(&tenant("t1"), body.to_string().as_bytes())
}

fn key_with(scope: &KeyScope, body: &[u8]) -> CacheKey {
    CacheKey::for_request(
        &Method::POST,
        "/v1/chat/completions",
        body,
        scope,
        &IgnoreList::default(),
    )
}

fn base() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a prime."}
        ],
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "seed": 7,
        "max_tokens": 64,
        "stream": false,
        "stop": ["\n\n"],
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logit_bias": {"50256": -100},
        "logprobs": false,
        "response_format": {"type": "text"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
    })
}

/// Every parameter of the OpenAI chat request that can change the answer,
/// changed alone, gives a different key.
#[test]
fn every_output_affecting_parameter_changes_the_key() {
    type Change = fn(&mut Value);
    let table: &[(&str, Change)] = &[
        ("model", |v| v["model"] = json!("gpt-4o")),
        ("messages: content", |v| {
            v["messages"][1]["content"] = json!("Name a composite.")
        }),
        ("messages: role", |v| {
            v["messages"][0]["role"] = json!("developer")
        }),
        ("messages: order", |v| {
            if let Some(m) = v["messages"].as_array_mut() {
                m.reverse();
            }
        }),
        ("messages: one more", |v| {
            if let Some(m) = v["messages"].as_array_mut() {
                m.push(json!({"role": "assistant", "content": "2"}));
            }
        }),
        ("messages: name", |v| {
            v["messages"][1]["name"] = json!("alice")
        }),
        ("temperature", |v| v["temperature"] = json!(0.7)),
        ("top_p", |v| v["top_p"] = json!(0.9)),
        ("n", |v| v["n"] = json!(2)),
        ("seed", |v| v["seed"] = json!(8)),
        ("seed: beyond 2^53", |v| {
            v["seed"] = json!(9_007_199_254_740_993u64)
        }),
        ("max_tokens", |v| v["max_tokens"] = json!(65)),
        ("max_completion_tokens", |v| {
            v["max_completion_tokens"] = json!(64)
        }),
        ("stream", |v| v["stream"] = json!(true)),
        ("stream_options", |v| {
            v["stream_options"] = json!({"include_usage": true})
        }),
        ("stop", |v| v["stop"] = json!(["END"])),
        ("presence_penalty", |v| v["presence_penalty"] = json!(0.5)),
        ("frequency_penalty", |v| v["frequency_penalty"] = json!(0.5)),
        ("logit_bias", |v| v["logit_bias"] = json!({"50256": -50})),
        ("logprobs", |v| v["logprobs"] = json!(true)),
        ("top_logprobs", |v| v["top_logprobs"] = json!(3)),
        ("response_format", |v| {
            v["response_format"] = json!({"type": "json_object"})
        }),
        (
            "response_format: schema",
            |v| {
                v["response_format"] =
                    json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
            },
        ),
        ("tools", |v| v["tools"][0]["function"]["name"] = json!("g")),
        ("tools: parameters", |v| {
            v["tools"][0]["function"]["parameters"] =
                json!({"type": "object", "properties": {"a": {}}})
        }),
        ("tool_choice", |v| v["tool_choice"] = json!("required")),
        ("parallel_tool_calls", |v| {
            v["parallel_tool_calls"] = json!(false)
        }),
        ("reasoning_effort", |v| {
            v["reasoning_effort"] = json!("high")
        }),
        ("modalities", |v| v["modalities"] = json!(["text", "audio"])),
        ("audio", |v| {
            v["audio"] = json!({"voice": "alloy", "format": "wav"})
        }),
        ("prediction", |v| {
            v["prediction"] = json!({"type": "content", "content": "x"})
        }),
        ("functions (legacy)", |v| {
            v["functions"] = json!([{"name": "f"}])
        }),
        ("function_call (legacy)", |v| {
            v["function_call"] = json!("auto")
        }),
        ("web_search_options", |v| {
            v["web_search_options"] = json!({})
        }),
        ("service_tier", |v| v["service_tier"] = json!("flex")),
        ("an unknown, future parameter", |v| {
            v["verbosity"] = json!("low")
        }),
    ];
    let original = key_of(&base());
    let mut seen = std::collections::HashMap::new();
    for (name, change) in table {
        let mut body = base();
        change(&mut body);
        let key = key_of(&body);
        assert_ne!(key, original, "changing {name} alone must change the key");
        if let Some(other) = seen.insert(key, *name) {
            panic!("{name} and {other} gave the same key");
        }
    }
}

#[test]
fn key_order_and_whitespace_do_not_change_the_key() {
    let compact = r#"{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#;
    let reordered = r#"{
        "messages" : [ { "content" : "hi" , "role" : "user" } ],
        "temperature" : 5e-1,
        "model" : "m"
    }"#;
    let scope = tenant("t1");
    assert_eq!(
        key_with(&scope, compact.as_bytes()),
        key_with(&scope, reordered.as_bytes())
    );
    // Numbers are normalised: 1, 1.0 and 1e0 are the same temperature.
    let one = |t: &str| {
        key_with(
            &scope,
            format!(r#"{{"model":"m","temperature":{t},"messages":[]}}"#).as_bytes(),
        )
    };
    assert_eq!(one("1"), one("1.0"));
    assert_eq!(one("1"), one("1e0"));
    assert_eq!(one("0"), one("-0.0"));
    assert_ne!(one("1"), one("1.5"));
}

#[test]
fn a_different_model_or_temperature_changes_the_key() {
    let mut other_model = base();
    other_model["model"] = json!("gpt-4.1");
    let mut other_temperature = base();
    other_temperature["temperature"] = json!(0.2);
    assert_ne!(key_of(&base()), key_of(&other_model));
    assert_ne!(key_of(&base()), key_of(&other_temperature));
    assert_ne!(key_of(&other_model), key_of(&other_temperature));
}

#[test]
fn only_the_ignore_list_is_left_out() {
    let mut with_user = base();
    with_user["user"] = json!("end-user-42");
    assert_eq!(
        key_of(&base()),
        key_of(&with_user),
        "`user` is ignored by default"
    );

    let ignore = IgnoreList::new(["user", "stream_options", "metadata.trace_id"]);
    let key = |v: &Value| {
        CacheKey::for_request(
            &Method::POST,
            "/v1/chat/completions",
            v.to_string().as_bytes(),
            &tenant("t1"),
            &ignore,
        )
    };
    let mut a = base();
    a["stream_options"] = json!({"include_usage": true});
    a["metadata"] = json!({"trace_id": "1", "team": "x"});
    let mut b = base();
    b["metadata"] = json!({"trace_id": "2", "team": "x"});
    assert_eq!(key(&a), key(&b));
    b["metadata"]["team"] = json!("y");
    assert_ne!(key(&a), key(&b), "only the listed path is ignored");
    let none = CacheKey::for_request(
        &Method::POST,
        "/v1/chat/completions",
        with_user.to_string().as_bytes(),
        &tenant("t1"),
        &IgnoreList::none(),
    );
    assert_ne!(none, key_of(&with_user));
}

#[test]
fn scope_method_and_path_are_in_the_key() {
    let body = base().to_string();
    let k = |scope: &KeyScope, method: Method, path: &str| {
        CacheKey::for_request(
            &method,
            path,
            body.as_bytes(),
            scope,
            &IgnoreList::default(),
        )
    };
    let a = k(&tenant("t1"), Method::POST, "/v1/chat/completions");
    assert_ne!(a, k(&tenant("t2"), Method::POST, "/v1/chat/completions"));
    assert_ne!(
        a,
        k(&KeyScope::Public, Method::POST, "/v1/chat/completions")
    );
    assert_ne!(a, k(&tenant("t1"), Method::PUT, "/v1/chat/completions"));
    assert_ne!(a, k(&tenant("t1"), Method::POST, "/v1/completions"));
    assert_ne!(
        k(&tenant("t1"), Method::GET, "/v1/content/a?x=1"),
        k(&tenant("t1"), Method::GET, "/v1/content/a?x=2")
    );
}

/// Malformed JSON is keyed as its bytes: deterministic, distinct from any
/// JSON body, never a panic.
#[test]
fn malformed_json_is_keyed_as_bytes() {
    let scope = tenant("t1");
    let broken = br#"{"model":"m","messages":[{"role":"user""#;
    assert_eq!(key_with(&scope, broken), key_with(&scope, broken));
    assert_ne!(key_with(&scope, broken), key_with(&scope, b"{}"));
    // Reformatting a broken body changes its key: no canonical form.
    assert_ne!(
        key_with(&scope, broken),
        key_with(&scope, br#"{ "model":"m","messages":[{"role":"user""#)
    );
    let deep = "[".repeat(100_000);
    let _ = key_with(&scope, deep.as_bytes());
    let _ = key_with(&scope, b"\xff\xfe\x00");
    let _ = key_with(&scope, b"");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z\\u{e9}\\u{1f600}\"\\\\\n]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_\\u{ff61}\\u{1f600}]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Compact, pretty and re-parsed forms of a value have one key.
    #[test]
    fn formatting_never_changes_the_key(value in arb_json()) {
        let scope = tenant("t");
        let compact = serde_json::to_vec(&value).unwrap_or_default();
        let pretty = serde_json::to_vec_pretty(&value).unwrap_or_default();
        prop_assert_eq!(key_with(&scope, &compact), key_with(&scope, &pretty));
        let canonical = canonical_json(&value);
        prop_assert_eq!(key_with(&scope, &compact), key_with(&scope, canonical.as_bytes()));
        // The canonical form is a fixed point.
        let reparsed: Value = serde_json::from_str(&canonical).unwrap_or(Value::Null);
        prop_assert_eq!(canonical_json(&reparsed), canonical);
    }

    /// Any bytes make a key; none panics.
    #[test]
    fn any_bytes_make_a_key(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = key_with(&tenant("t"), &bytes);
    }

    /// Two tenants never share a key for the same request.
    #[test]
    fn tenants_never_share_a_key(a in "[a-z0-9]{1,12}", b in "[a-z0-9]{1,12}", prompt in ".{0,40}") {
        prop_assume!(a != b);
        let body = json!({"model": "m", "messages": [{"role": "user", "content": prompt}]}).to_string();
        prop_assert_ne!(key_with(&tenant(&a), body.as_bytes()), key_with(&tenant(&b), body.as_bytes()));
    }
}
