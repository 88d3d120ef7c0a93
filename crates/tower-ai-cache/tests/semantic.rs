//! The semantic cache, driven directly (no sockets), over the embedded
//! index: a paraphrase is answered from the cache; a negated question, a
//! different earlier turn, another tenant, a hot temperature or a distant
//! question are not; streams replay; a failing embedder costs nothing but
//! the lookup.
#![cfg(feature = "semantic")]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_ai_cache::{CacheBody, CacheLayer, Route, SemanticCache};
use tower_ai_context::{BoxFuture, EmbedError, Embedder, MemoryIndex, VectorIndex};

type Req = Request<Full<Bytes>>;
type Svc = BoxCloneService<Req, Response<CacheBody<Full<Bytes>>>, Infallible>;

const DIMS: usize = 16;

/// Unit vector `i`.
fn axis(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMS];
    v[i] = 1.0;
    v
}

/// A unit vector at cosine `similarity` from axis `i` (leaning towards axis
/// `j`).
fn near(i: usize, j: usize, similarity: f32) -> Vec<f32> {
    let mut v = vec![0.0; DIMS];
    v[i] = similarity;
    v[j] = (1.0 - similarity * similarity).sqrt();
    v
}

/// An embedding model whose vectors the test sets text by text; unknown
/// texts get a vector of their own (far from every other).
#[derive(Debug, Default)]
struct Table {
    vectors: Mutex<HashMap<String, Vec<f32>>>,
    calls: AtomicUsize,
    failing: AtomicBool,
}

impl Table {
    fn set(&self, text: &str, vector: Vec<f32>) {
        self.vectors.lock().insert(text.to_owned(), vector);
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
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(EmbedError::Unavailable("down for the test".into()));
            }
            let vectors = self.vectors.lock();
            Ok(texts
                .iter()
                .map(|t| {
                    vectors.get(t).cloned().unwrap_or_else(|| {
                        let i = t.len() % DIMS;
                        near(i, (i + 1) % DIMS, 0.5)
                    })
                })
                .collect())
        })
    }
}

/// An upstream that answers `{tenant}|{last user text}|{call number}`, as
/// a JSON completion or (with `"stream": true`) an SSE stream.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    fn service(&self) -> BoxCloneService<Req, Response<Full<Bytes>>, Infallible> {
        let calls = Arc::clone(&self.calls);
        BoxCloneService::new(tower::service_fn(move |req: Req| {
            let calls = Arc::clone(&calls);
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let tenant = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .trim_start_matches("Bearer ")
                    .to_owned();
                let body = req.into_body().collect().await?.to_bytes();
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let last = value["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or("")
                    .to_owned();
                let content = format!("{tenant}|{last}|{n}");
                let res = if value["stream"] == true {
                    let chunk = serde_json::json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]});
                    let end = serde_json::json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]});
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Full::new(Bytes::from(format!(
                            "data: {chunk}\n\ndata: {end}\n\ndata: [DONE]\n\n"
                        ))))
                } else {
                    let body = serde_json::json!({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
                    });
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                };
                Ok(res.unwrap_or_default())
            }
        }))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Setup {
    svc: Svc,
    upstream: Upstream,
    table: Arc<Table>,
    index: Arc<MemoryIndex>,
}

fn setup(route: Route, semantic: impl FnOnce(SemanticCache) -> SemanticCache) -> Setup {
    let table = Arc::new(Table::default());
    let index = Arc::new(MemoryIndex::builder("table", DIMS).build());
    let cache = semantic(SemanticCache::new(
        Arc::clone(&table) as Arc<dyn Embedder>,
        Arc::clone(&index) as Arc<dyn VectorIndex>,
    ));
    let layer = CacheLayer::builder()
        .route(route)
        .semantic(cache)
        .build()
        .expect("a layer");
    let upstream = Upstream::default();
    let svc = BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(upstream.service()),
    );
    Setup {
        svc,
        upstream,
        table,
        index,
    }
}

fn chat_route() -> Route {
    Route::post("/v1/chat/completions").semantic()
}

fn body(turns: &[(&str, &str)], extra: serde_json::Value) -> String {
    let messages: Vec<_> = turns
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let mut value = serde_json::json!({"model": "m", "messages": messages});
    if let (Some(obj), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    value.to_string()
}

fn ask(tenant: &str, question: &str) -> Req {
    post(tenant, body(&[("user", question)], serde_json::json!({})))
}

fn post(tenant: &str, body: String) -> Req {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {tenant}"))
        .body(Full::new(Bytes::from(body)))
        .expect("a request")
}

struct Got {
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn semantic(&self) -> bool {
        self.cache_status().contains("detail=semantic")
    }

    fn content(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        value["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

async fn send(svc: &mut Svc, req: Req) -> Got {
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("answered");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    Got {
        headers: parts.headers,
        body,
    }
}

/// Waits until the index holds `n` records (answers are indexed off the
/// request's path).
async fn indexed(index: &MemoryIndex, n: usize) {
    let done = test_support::eventually(Duration::from_secs(5), || index.len() == n).await;
    assert!(done.is_some(), "{n} records indexed (has {})", index.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_is_answered_from_the_cache() {
    let mut s = setup(chat_route(), |c| c);
    s.table.set("How do I reset my password?", axis(0));
    s.table.set("how can I reset my password", near(0, 1, 0.97));
    s.table
        .set("What is the capital of France?", near(0, 2, 0.80));

    let first = send(&mut s.svc, ask("sk-a", "How do I reset my password?")).await;
    assert!(first.cache_status().contains("fwd=miss"));
    indexed(&s.index, 1).await;

    let second = send(&mut s.svc, ask("sk-a", "how can I reset my password")).await;
    assert!(second.semantic(), "{}", second.cache_status());
    assert!(
        second.cache_status().contains("; hit;"),
        "{}",
        second.cache_status()
    );
    assert!(
        second.cache_status().contains("similarity=0.970"),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.content(), first.content());
    assert_eq!(s.upstream.calls(), 1);

    // Too far (0.80 < 0.95): asked upstream.
    let far = send(&mut s.svc, ask("sk-a", "What is the capital of France?")).await;
    assert!(far.cache_status().contains("fwd=miss"));
    assert_eq!(s.upstream.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negated_question_or_another_earlier_turn_misses() {
    let mut s = setup(chat_route(), |c| c);
    s.table.set("How do I enable dark mode?", axis(0));
    s.table.set("How do I disable dark mode?", near(0, 1, 0.97));
    s.table.set("How old is he?", axis(3));

    send(&mut s.svc, ask("sk-a", "How do I enable dark mode?")).await;
    indexed(&s.index, 1).await;
    let negated = send(&mut s.svc, ask("sk-a", "How do I disable dark mode?")).await;
    assert!(
        negated.cache_status().contains("fwd=miss"),
        "{}",
        negated.cache_status()
    );
    assert!(negated.content().contains("disable"));
    assert_eq!(s.upstream.calls(), 2);

    // The same last question after different earlier turns: another scope.
    let about = |who: &str| {
        post(
            "sk-a",
            body(
                &[
                    ("user", who),
                    ("assistant", "Noted."),
                    ("user", "How old is he?"),
                ],
                serde_json::json!({}),
            ),
        )
    };
    send(&mut s.svc, about("Tell me about Alan Turing")).await;
    indexed(&s.index, 3).await;
    let other = send(&mut s.svc, about("Tell me about Claude Shannon")).await;
    assert!(
        other.cache_status().contains("fwd=miss"),
        "{}",
        other.cache_status()
    );
    assert_eq!(s.upstream.calls(), 4);
    let same = send(&mut s.svc, about("Tell me about Alan Turing")).await;
    assert!(same.cache_status().contains("; hit;"));
    assert!(!same.semantic(), "an exact hit: {}", same.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_tenant_question_pairs_never_cross() {
    let mut s = setup(chat_route(), |c| c);
    let questions = 10;
    for q in 0..questions {
        // Every tenant asks the same questions and paraphrases: identical
        // vectors, so only the scope keeps them apart.
        s.table.set(&format!("question {q}?"), axis(q));
        s.table.set(
            &format!("question {q}, please"),
            near(q, (q + 5) % DIMS, 0.98),
        );
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    let mut stored = HashSet::new();
    let mut semantic_hits = 0;
    for _ in 0..1_000 {
        let tenant = format!("sk-{}", next(20));
        let q = next(questions as u64);
        let text = if next(2) == 0 {
            format!("question {q}?")
        } else {
            format!("question {q}, please")
        };
        let got = send(&mut s.svc, ask(&tenant, &text)).await;
        let content = got.content();
        let mut parts = content.split('|');
        assert_eq!(parts.next(), Some(tenant.as_str()), "{content}");
        let answered = parts.next().unwrap_or("");
        assert!(
            answered == format!("question {q}?") || answered == format!("question {q}, please"),
            "{tenant} asked {text:?}, got {content:?}"
        );
        if got.semantic() {
            semantic_hits += 1;
        } else if got.cache_status().contains("fwd=miss") {
            stored.insert((tenant, text));
            indexed(&s.index, stored.len()).await;
        }
    }
    assert!(
        semantic_hits > 100,
        "the semantic path was taken ({semantic_hits})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_temperatures_and_failing_embedders_go_upstream() {
    let mut s = setup(chat_route(), |c| c.max_temperature(0.5));
    s.table.set("Q", axis(0));
    s.table.set("Q again", near(0, 1, 0.99));
    let hot = |q: &str| {
        post(
            "sk-a",
            body(&[("user", q)], serde_json::json!({"temperature": 0.9})),
        )
    };
    send(&mut s.svc, hot("Q")).await;
    let again = send(&mut s.svc, hot("Q again")).await;
    assert!(again.cache_status().contains("fwd=miss"));
    assert_eq!(s.table.calls.load(Ordering::SeqCst), 0, "never embedded");
    assert!(s.index.is_empty());

    let cool = |q: &str| {
        post(
            "sk-a",
            body(&[("user", q)], serde_json::json!({"temperature": 0.2})),
        )
    };
    send(&mut s.svc, cool("Q")).await;
    indexed(&s.index, 1).await;
    s.table.failing.store(true, Ordering::SeqCst);
    let failing = send(&mut s.svc, cool("Q again")).await;
    assert!(failing.cache_status().contains("fwd=miss"));
    assert!(failing.content().starts_with("sk-a|Q again|"));
    s.table.failing.store(false, Ordering::SeqCst);
    // Embedding works again: a paraphrase is answered from the cache.
    s.table.set("Q, once more", near(0, 2, 0.98));
    let found = send(&mut s.svc, cool("Q, once more")).await;
    assert!(found.semantic(), "{}", found.cache_status());
    assert_eq!(s.upstream.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_threshold_and_a_streamed_replay() {
    let mut s = setup(Route::post("/v1/chat/completions").similarity(0.85), |c| c);
    s.table.set("stream me", axis(0));
    s.table.set("please stream me", near(0, 1, 0.90));
    let streamed = |q: &str| {
        post(
            "sk-a",
            body(&[("user", q)], serde_json::json!({"stream": true})),
        )
    };
    let first = send(&mut s.svc, streamed("stream me")).await;
    assert!(first.cache_status().contains("fwd=miss"));
    indexed(&s.index, 1).await;
    let second = send(&mut s.svc, streamed("please stream me")).await;
    assert!(
        second.semantic(),
        "0.90 ≥ the route's 0.85: {}",
        second.cache_status()
    );
    assert_eq!(second.headers["content-type"], "text/event-stream");
    assert_eq!(second.body, first.body, "the same events replayed");
    assert_eq!(s.upstream.calls(), 1);
}
