//! The context layer, driven directly (no sockets): what is injected, where
//! and in what order; tenants' passages never cross; a failing or late
//! source costs the request nothing; what isn't a chat turn passes as is.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::{Service, ServiceExt};
use tower_ai_context::{
    BoxFuture, CONTEXT_HEADER, ContextLayer, EmbedError, Embedder, HistorySource, IndexRetriever,
    MemoryIndex, Message, PUBLIC, ProfileSource, SourceError, TenantScope, VectorIndex,
};
use tower_ai_core::key::ClientKey;

const DIMS: usize = 8;

/// An embedding model whose vectors the test sets text by text.
#[derive(Debug, Default)]
struct Table(Mutex<HashMap<String, Vec<f32>>>);

impl Table {
    fn set(&self, text: &str, axis: usize) {
        let mut v = vec![0.0; DIMS];
        v[axis] = 1.0;
        self.0.lock().insert(text.to_owned(), v);
    }
}

impl Embedder for Table {
    fn model(&self) -> &str {
        "table"
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(async move {
            let table = self.0.lock();
            texts
                .iter()
                .map(|t| {
                    table
                        .get(t)
                        .cloned()
                        .ok_or_else(|| EmbedError::Malformed(format!("no vector for {t:?}")))
                })
                .collect()
        })
    }
}

/// History and profile fixed per test, or never answering.
#[derive(Clone, Default)]
struct Fixed {
    history: Vec<Message>,
    profile: Vec<(String, String)>,
    hang: bool,
    fail: bool,
}

impl HistorySource for Fixed {
    fn history<'a>(
        &'a self,
        _: &'a Parts,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, SourceError>> {
        Box::pin(async move {
            if self.hang {
                pending::<()>().await;
            }
            if self.fail {
                return Err(SourceError("the store is down".into()));
            }
            let skip = self.history.len().saturating_sub(n);
            Ok(self.history[skip..].to_vec())
        })
    }
}

impl ProfileSource for Fixed {
    fn profile<'a>(
        &'a self,
        _: &'a Parts,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, SourceError>> {
        Box::pin(async move {
            if self.hang {
                pending::<()>().await;
            }
            Ok(self.profile.clone())
        })
    }
}

/// An upstream that answers with the body it received.
fn echo()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let body = req.into_body().collect().await?.to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    })
}

struct Got {
    header: Option<String>,
    body: Value,
    raw: Bytes,
}

async fn send(layer: &ContextLayer, path: &str, tenant: &str, body: Value) -> Got {
    let req = Request::post(path)
        .header("authorization", format!("Bearer {tenant}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request");
    let res = tower::Layer::layer(layer, echo())
        .oneshot(req)
        .await
        .expect("answered");
    let header = res
        .headers()
        .get(CONTEXT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let raw = res.into_body().collect().await.expect("a body").to_bytes();
    Got {
        header,
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    }
}

fn roles_and_texts(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    (
                        m["role"].as_str().unwrap_or("").to_owned(),
                        m["content"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn retriever(table: &Arc<Table>) -> (IndexRetriever, Arc<MemoryIndex>) {
    let index = Arc::new(MemoryIndex::builder("table", DIMS).build());
    let retriever = IndexRetriever::new(
        Arc::clone(table) as Arc<dyn Embedder>,
        Arc::clone(&index) as Arc<dyn VectorIndex>,
    );
    (retriever, index)
}

fn tenant_scope(key: &str) -> String {
    TenantScope::of(&ClientKey::digest("api-key", key))
        .0
        .to_string()
}

#[tokio::test]
async fn context_goes_after_the_system_prompt_in_priority_order_and_the_client_messages_are_untouched()
 {
    let table = Arc::new(Table::default());
    table.set("Refunds take five days.", 0);
    table.set("How long do refunds take?", 0);
    let (retriever, _index) = retriever(&table).await;
    let scope = tenant_scope("sk-a");
    retriever
        .ingest(&scope, "policy", "Refunds take five days.")
        .await
        .expect("ingested");
    let sources = Fixed {
        history: vec![
            Message::new("user", "I bought a lamp."),
            Message::new("assistant", "Noted."),
        ],
        profile: vec![("name".into(), "Ada".into()), ("plan".into(), "pro".into())],
        ..Fixed::default()
    };
    let layer = ContextLayer::builder()
        .history(sources.clone())
        .profile(sources)
        .retriever(retriever)
        .build();
    let client = json!({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How long do refunds take?"}
    ]});
    let got = send(&layer, "/v1/chat/completions", "sk-a", client.clone()).await;
    let messages = roles_and_texts(&got.body);
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert_eq!(messages[0], ("system".into(), "Be brief.".into()));
    assert_eq!(messages[1].0, "system");
    assert!(
        messages[1]
            .1
            .starts_with("About the user:\nname: Ada\nplan: pro"),
        "{}",
        messages[1].1
    );
    assert!(
        messages[2].1.contains("[1] Refunds take five days."),
        "{}",
        messages[2].1
    );
    assert!(
        messages[3]
            .1
            .ends_with("user: I bought a lamp.\nassistant: Noted."),
        "{}",
        messages[3].1
    );
    assert_eq!(
        got.body["messages"][4], client["messages"][1],
        "the client's turn as it came"
    );
    let header = got.header.expect("the header");
    assert!(
        header.starts_with("passages=1, history=2, profile=2, tokens="),
        "{header}"
    );

    // A budget the client's own messages fill: nothing goes in, and the
    // body goes on byte for byte.
    let tight = ContextLayer::builder()
        .profile(Fixed {
            profile: vec![("name".into(), "Ada".into())],
            ..Fixed::default()
        })
        .budget(10)
        .build();
    let got = send(&tight, "/v1/chat/completions", "sk-a", client.clone()).await;
    assert_eq!(got.raw, Bytes::from(client.to_string()));
    assert_eq!(
        got.header.as_deref(),
        Some("passages=0, history=0, profile=0, tokens=0")
    );
}

#[tokio::test]
async fn history_the_client_sent_again_is_not_repeated_and_anthropic_gets_it_in_system() {
    let sources = Fixed {
        history: vec![
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Older question"),
        ],
        ..Fixed::default()
    };
    let layer = ContextLayer::builder().history(sources).build();
    let body = json!({"model": "m", "max_tokens": 10, "system": "Be brief.", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Next?"}
    ]});
    let got = send(&layer, "/v1/messages", "sk-a", body.clone()).await;
    assert_eq!(got.body["messages"], body["messages"], "messages untouched");
    let system = got.body["system"].as_str().unwrap_or("");
    assert!(
        system.starts_with("Be brief.\n\nEarlier in this conversation"),
        "{system}"
    );
    assert!(system.ends_with("user: Older question"), "{system}");
    assert!(!system.contains("Hello!"), "sent by the client already");
    assert_eq!(
        got.header
            .as_deref()
            .map(|h| h.starts_with("passages=0, history=1, profile=0")),
        Some(true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_late_source_costs_the_request_nothing() {
    let late = Fixed {
        history: vec![Message::new("user", "x")],
        hang: true,
        ..Fixed::default()
    };
    let failing = Fixed {
        fail: true,
        ..Fixed::default()
    };
    let layer = ContextLayer::builder()
        .history(failing)
        .profile(late)
        .timeout(Duration::from_millis(200))
        .build();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Q"}]});
    let started = tokio::time::Instant::now();
    let got = send(&layer, "/v1/chat/completions", "sk-a", body.clone()).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(200),
        "the source's deadline"
    );
    assert_eq!(got.raw, Bytes::from(body.to_string()));
    assert_eq!(
        got.header.as_deref(),
        Some("passages=0, history=0, profile=0, tokens=0")
    );
}

#[tokio::test]
async fn what_is_not_a_user_turn_passes_as_it_came() {
    let layer = ContextLayer::builder()
        .profile(Fixed {
            profile: vec![("name".into(), "Ada".into())],
            ..Fixed::default()
        })
        .build();
    for body in [
        json!({"model": "m", "input": "embed me"}),
        json!({"model": "m", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}),
        json!({"model": "m", "messages": []}),
    ] {
        let got = send(&layer, "/v1/chat/completions", "sk-a", body.clone()).await;
        assert_eq!(got.raw, Bytes::from(body.to_string()));
        assert_eq!(got.header, None);
    }
    let malformed = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .expect("a request");
    let res = tower::Layer::layer(&layer, echo())
        .oneshot(malformed)
        .await
        .expect("answered");
    assert_eq!(
        res.into_body().collect().await.expect("a body").to_bytes(),
        "{not json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_tenant_question_pairs_never_see_another_tenants_passages() {
    let table = Arc::new(Table::default());
    let (retriever, index) = retriever(&table).await;
    let tenants = 20;
    let questions = 6;
    for q in 0..questions {
        // The same question, and the same document text, for every tenant:
        // only the scope keeps them apart.
        table.set(&format!("question {q}"), q);
        for t in 0..tenants {
            table.set(&format!("fact {q} of tenant {t}"), q);
        }
        table.set(&format!("public fact {q}"), q);
    }
    for t in 0..tenants {
        let scope = tenant_scope(&format!("sk-{t}"));
        for q in 0..questions {
            retriever
                .ingest(
                    &scope,
                    &format!("doc-{q}"),
                    &format!("fact {q} of tenant {t}"),
                )
                .await
                .expect("ingested");
        }
    }
    retriever
        .ingest(PUBLIC, "faq-0", "public fact 0")
        .await
        .expect("ingested");
    assert_eq!(index.len(), tenants * questions + 1);
    let layer = ContextLayer::builder()
        .retriever(retriever)
        .top_k(3)
        .build();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut public_seen = 0;
    for _ in 0..1_000 {
        let t = next(tenants as u64);
        let q = next(questions as u64);
        let body = json!({"model": "m", "messages": [{"role": "user", "content": format!("question {q}")}]});
        let got = send(&layer, "/v1/chat/completions", &format!("sk-{t}"), body).await;
        let injected = roles_and_texts(&got.body)
            .into_iter()
            .filter(|(role, _)| role == "system")
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            injected.contains(&format!("fact {q} of tenant {t}")),
            "{injected}"
        );
        for line in injected.lines().filter(|l| l.starts_with('[')) {
            assert!(
                line.ends_with(&format!("of tenant {t}")) || line.contains("public fact"),
                "tenant {t} was shown {line:?}"
            );
        }
        public_seen += usize::from(injected.contains("public fact 0"));
    }
    assert!(public_seen > 0, "public passages reach every tenant");
}
