use std::path::Path;
use std::time::Duration;

use super::apply;
use crate::config::{
    BalanceStrategy, CacheTtls, Config, ConfigError, Provider, Secret, key_digest,
};

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-up".into()),
        "GATEWAY_ADMIN_TOKEN" => Some("admin-secret".into()),
        _ => None,
    }
}

fn read(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    apply(&mut config, Path::new("gateway.toml"), text, &env).map(|()| config)
}

const FULL: &str = r#"
listen = "127.0.0.1:9090"
redis = ["redis://127.0.0.1:6379"]

[admin]
token_env = "GATEWAY_ADMIN_TOKEN"

[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
upstream_model = "gpt-4o-mini-2024-07-18"
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[[keys]]
key = "sk-team-a"
tier = "pro"
budget = { usd = 5.0, per = "day" }

[[keys]]
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"

[[limits]]
route = "/v1/chat/completions"
tier = "pro"
requests = { capacity = 100, per_second = 10.0 }
tokens = { capacity = 200000, per_minute = 200000.0 }

[cache]
chat_ttl_s = 0
"#;

#[test]
fn reads_every_key() {
    let c = read(FULL);
    let Ok(c) = c else {
        panic!("a valid file: {c:?}")
    };
    assert_eq!(c.listen.port(), 9090);
    assert_eq!(c.redis.len(), 1);
    assert!(c.admin_token.is_some());
    assert_eq!(c.models.len(), 1);
    let m = &c.models[0];
    assert_eq!(m.provider, Provider::OpenAi);
    assert_eq!(m.deployments.len(), 1);
    let d = &m.deployments[0];
    assert_eq!(d.name, "gpt-4o-mini");
    assert_eq!(d.base_url, "https://api.openai.com/v1");
    assert_eq!(d.api_key.as_ref().map(Secret::expose), Some("sk-up"));
    assert_eq!((d.weight, d.max_concurrency), (1, 256));
    assert_eq!(m.balance, BalanceStrategy::CacheAware);
    assert_eq!(m.upstream_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.keys[0].sha256, key_digest("sk-team-a"));
    assert_eq!(c.keys[0].tier.as_deref(), Some("pro"));
    assert_eq!(c.keys[1].name, "key-2");
    assert_eq!(c.keys[1].sha256[31], 1);
    assert_eq!(c.limits[0].requests.map(|b| b.capacity), Some(100));
    let per_second = c.limits[0].tokens.map(|b| b.per_second).unwrap_or_default();
    assert!((per_second - 200_000.0 / 60.0).abs() < 1e-9);
    assert_eq!(c.cache.chat, Duration::ZERO);
    assert_eq!(c.cache.embeddings, CacheTtls::default().embeddings);
    // Secrets never show in debug output.
    assert!(!format!("{c:?}").contains("sk-up"));
    assert!(!format!("{c:?}").contains("admin-secret"));
}

#[test]
fn reads_deployments_balance_and_fallbacks() {
    let c = read(
        r#"
[[models]]
name = "llama"
provider = "openai"
api_key_env = "OPENAI_API_KEY"
balance = "least_loaded"
retries = 1
fallbacks = ["gpt"]
sticky_header = "X-Session-Id"
deployments = [
  { base_url = "http://10.0.0.1:8000/v1", max_concurrency = 64, max_starting_tokens = 2048 },
  { name = "big", base_url = "http://10.0.0.2:8000", weight = 3 },
]

[[models]]
name = "gpt"
provider = "openai"
base_url = "https://api.openai.com/v1"
"#,
    );
    let Ok(c) = c else {
        panic!("a valid file: {c:?}")
    };
    let m = &c.models[0];
    assert_eq!(m.balance, BalanceStrategy::LeastLoaded);
    assert_eq!(m.retries, Some(1));
    assert_eq!(m.fallbacks, ["gpt"]);
    assert_eq!(
        m.sticky_header.as_ref().map(|h| h.as_str()),
        Some("x-session-id")
    );
    let names: Vec<_> = m.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["llama/0", "llama/big"]);
    assert_eq!(
        (m.deployments[0].max_concurrency, m.deployments[0].weight),
        (64, 1)
    );
    assert_eq!(
        (m.deployments[1].max_concurrency, m.deployments[1].weight),
        (256, 3)
    );
    assert_eq!(
        (
            m.deployments[0].max_starting_tokens,
            m.deployments[1].max_starting_tokens
        ),
        (Some(2048), None)
    );
    assert!(
        m.deployments
            .iter()
            .all(|d| d.api_key.as_ref().map(Secret::expose) == Some("sk-up")),
        "a deployment takes the model's key unless it names its own"
    );
    assert_eq!(c.models[1].fallbacks, Vec::<String>::new());
}

#[test]
fn the_example_file_is_valid() {
    let text = include_str!("../../../../examples/gateway.toml");
    let mut config = Config::default();
    let every_variable_set = |_: &str| Some("set".to_owned());
    let read = apply(
        &mut config,
        Path::new("gateway.toml"),
        text,
        &every_variable_set,
    );
    assert!(read.is_ok(), "{read:?}");
    assert!(
        config
            .models
            .iter()
            .any(|m| m.deployments.len() > 1 && !m.fallbacks.is_empty())
    );
}

#[track_caller]
fn refused(text: &str, line: usize, says: &str) {
    match read(text) {
        Err(ConfigError::File {
            line: Some(l),
            reason,
            ..
        }) => {
            assert_eq!(l, line, "{reason}");
            assert!(reason.contains(says), "{reason}");
        }
        other => panic!("expected a refusal at line {line}: {other:?}"),
    }
}

#[test]
fn context_and_the_semantic_cache_are_checked() {
    let model = "[[models]]\nname = \"e\"\nprovider = \"openai\"\nbase_url = \"http://h\"\n";
    refused(
        &format!("{model}[context]\nembeddings_model = \"nope\"\n"),
        6,
        "not a model of [[models]]",
    );
    refused(
        &format!("{model}[context]\nembeddings_model = \"e\"\nbackend = \"disk\"\n"),
        7,
        "expected \"memory\" or \"redis\"",
    );
    refused(
        &format!("{model}[cache]\nsemantic = true\nsimilarity = 1.5\n"),
        7,
        "expected 0 to 1",
    );
    assert!(
        read(&format!("{model}[cache]\nsemantic = true\n")).is_err(),
        "needs [context]"
    );
    let config = read(&format!(
        "{model}[context]\nembeddings_model = \"e\"\ntop_k = 2\n[cache]\nsemantic = true\n"
    ))
    .expect("valid");
    assert_eq!(config.semantic_cache, Some(0.95));
    let context = config.context.expect("a context");
    assert_eq!(
        (context.top_k, context.dimensions, context.budget_tokens),
        (2, 1536, 4096)
    );
}

#[test]
fn persistence_is_checked() {
    refused("[persistence]\nevery_turns = 2\n", 1, "one of postgres_url");
    refused(
        "[persistence]\npostgres_url_env = \"NOPE\"\n",
        2,
        "NOPE is not set",
    );
    refused(
        "[persistence]\npostgres_url = \"postgres://h/db\"\nevery_turns = 0\n",
        3,
        "at least 1",
    );
    refused(
        "[persistence]\npostgres_url = \"postgres://h/db\"\ntable = \"x; drop\"\n",
        1,
        "table",
    );
    let config = read("[persistence]\npostgres_url = \"postgres://u@h:5/db\"\nevery_turns = 2\n")
        .expect("valid");
    let persistence = config.persistence.expect("persistence");
    assert_eq!(persistence.postgres_url.expose(), "postgres://u@h:5/db");
    assert_eq!(persistence.every_turns, 2);
    assert_eq!(persistence.table, "tower_ai_conversation_turns");
}

#[test]
fn refuses_a_bad_file_with_the_line_and_the_reason() {
    refused("listen = 5\n", 1, "string");
    refused("\n\nfrobnicate = true\n", 3, "frobnicate");
    refused(
        "[[models]]\nname = \"m\"\nprovider = \"azure\"\nbase_url = \"http://h\"\n",
        3,
        "azure",
    );
    refused(
        "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"ftp://h\"\n",
        4,
        "http",
    );
    refused(
        "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"http://h\"\napi_key_env = \"NOPE\"\n",
        5,
        "NOPE",
    );
    refused("[admin]\ntoken_env = \"NOPE\"\n", 2, "NOPE");
    refused("[[keys]]\nkey_sha256 = \"abc\"\n", 2, "64 hex");
    refused(
        &format!("[[keys]]\nkey_sha256 = \"+a{}\"\n", "0".repeat(62)),
        2,
        "64 hex",
    );
    refused(
        "[[keys]]\nname = \"a\"\nkey = \"k1\"\n[[keys]]\nname = \"a\"\nkey = \"k2\"\n",
        6,
        "two keys",
    );
    refused(
        "[[limits]]\nroute = \"/v1/\"\nrequests = { capacity = 5, per_second = 1.0 }\n[[limits]]\nroute = \"/v1/\"\nrequests = { capacity = 6, per_second = 1.0 }\n",
        5,
        "twice",
    );
    refused("\nupstream_timeout_ms = 0\n", 2, "at least 1");
    refused(
        "[[models]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"https://h/v1?x=1\"\n",
        4,
        "no query",
    );
    refused(
        "[[limits]]\nroute = \"/v1/\"\nrequests = { capacity = 5, per_second = 1.0, per_minute = 2.0 }\n",
        3,
        "exactly one",
    );
    refused("[[limits]]\nroute = \"/v1/\"\n", 2, "give requests");
    refused(
        "[[keys]]\nkey = \"a\"\nbudget = { usd = 1.0, per = \"fortnight\" }\n",
        3,
        "fortnight",
    );
    let model = "[[models]]\nname = \"m\"\nprovider = \"openai\"\n";
    refused(model, 2, "a base_url or deployments");
    refused(
        &format!("{model}base_url = \"http://h\"\ndeployments = [{{ base_url = \"http://i\" }}]\n"),
        4,
        "not both",
    );
    refused(
        &format!("{model}deployments = [{{ base_url = \"http://i\", weight = 0 }}]\n"),
        4,
        "at least 1",
    );
    refused(
        &format!("{model}deployments = [{{ base_url = \"http://i\", max_starting_tokens = 0 }}]\n"),
        4,
        "max_starting_tokens is at least 1",
    );
    refused(
        &format!(
            "{model}deployments = [{{ base_url = \"http://i\", name = \"x\" }}, {{ base_url = \"http://j\", name = \"x\" }}]\n"
        ),
        4,
        "two deployments",
    );
    refused(
        &format!("{model}deployments = [{{ base_url = \"ftp://i\" }}]\n"),
        4,
        "http",
    );
    refused(
        &format!("{model}base_url = \"http://h\"\nbalance = \"fastest\"\n"),
        5,
        "fastest",
    );
    refused(
        &format!("{model}base_url = \"http://h\"\nfallbacks = [\"nope\"]\n"),
        5,
        "nope is not another configured model",
    );
    refused(
        &format!("{model}base_url = \"http://h\"\nfallbacks = [\"m\"]\n"),
        5,
        "not another",
    );
    refused(
        &format!("{model}base_url = \"http://h\"\nsticky_header = \"a b\"\n"),
        5,
        "not a header name",
    );
}
