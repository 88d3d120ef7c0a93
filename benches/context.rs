//! The context layer's added latency per request, beside the same request
//! straight to the service, in the same run: history (8 turns), a profile
//! (4 fields) and the top 5 passages out of 10,000 and 100,000 of 384
//! dimensions in the embedded index, fitted and injected. The embedding
//! call is left out (the question's vector is looked up in a table), as the
//! target says; the sources answer from memory, as a session already
//! loaded by an earlier layer does.
//!
//! ```sh
//! cargo bench --bench context             # 2,001 requests a size
//! cargo bench --bench context -- --quick  # 201
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_ai::context::{
    BoxFuture, ContextLayer, EmbedError, Embedder, HistorySource, IndexRetriever, MemoryIndex,
    Message, ProfileSource, Record, SourceError, TenantScope, VectorIndex,
};
use tower_ai::core::key::ClientKey;

const DIMS: usize = 384;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn vector(&mut self) -> Vec<f32> {
        (0..DIMS)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }
}

/// Questions' vectors, precomputed.
struct Table(HashMap<String, Vec<f32>>);

impl Embedder for Table {
    fn model(&self) -> &str {
        "bench"
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(async move {
            texts
                .iter()
                .map(|t| {
                    self.0
                        .get(t)
                        .cloned()
                        .ok_or_else(|| EmbedError::Malformed(t.clone()))
                })
                .collect()
        })
    }
}

#[derive(Clone)]
struct Loaded {
    history: Vec<Message>,
    profile: Vec<(String, String)>,
}

impl HistorySource for Loaded {
    fn history<'a>(
        &'a self,
        _: &'a Parts,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, SourceError>> {
        Box::pin(async move { Ok(self.history.iter().rev().take(n).rev().cloned().collect()) })
    }
}

impl ProfileSource for Loaded {
    fn profile<'a>(
        &'a self,
        _: &'a Parts,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, SourceError>> {
        Box::pin(async move { Ok(self.profile.clone()) })
    }
}

fn request(question: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"model": "m", "messages": [
        {"role": "system", "content": "You are a support assistant."},
        {"role": "user", "content": question}
    ]});
    Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request")
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    times[((times.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let requests = if quick { 201 } else { 2_001 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!("| passages indexed | bare p50 | with context p50 | added p50 | with context p99 |");
    println!("|---|---|---|---|---|");
    for records in [10_000usize, 100_000] {
        runtime.block_on(async {
            let mut rng = Rng(records as u64);
            let index = Arc::new(MemoryIndex::builder("bench", DIMS).build());
            let scope = TenantScope::of(&ClientKey::digest("api-key", "sk-bench")).0;
            for start in (0..records).step_by(10_000) {
                let batch = (start..start + 10_000)
                    .map(|i| {
                        Record::new(
                            Arc::clone(&scope),
                            i.to_string(),
                            rng.vector(),
                            format!("Passage {i}: a paragraph of about sixty tokens of support documentation that the model may use to answer."),
                        )
                    })
                    .collect();
                index.upsert(batch).await.expect("upsert");
            }
            let questions: Vec<String> = (0..64).map(|i| format!("Question {i}?")).collect();
            let table = Table(questions.iter().map(|q| (q.clone(), rng.vector())).collect());
            // Random vectors are far apart: every passage may be taken.
            let retriever = IndexRetriever::new(Arc::new(table), index).min_score(-1.0);
            let loaded = Loaded {
                history: (0..8)
                    .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, format!("Turn {i} of an earlier exchange, a sentence or two long.")))
                    .collect(),
                profile: vec![
                    ("name".into(), "Ada".into()),
                    ("plan".into(), "pro".into()),
                    ("language".into(), "en".into()),
                    ("region".into(), "eu".into()),
                ],
            };
            let layer = ContextLayer::builder()
                .history(loaded.clone())
                .profile(loaded)
                .retriever(retriever)
                .top_k(5)
                .build();
            let bare = tower::service_fn(|req: Request<Full<Bytes>>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            });
            let mut with = tower::Layer::layer(&layer, bare);
            let mut bare = bare;
            let (mut plain, mut context) = (Vec::new(), Vec::new());
            for n in 0..requests {
                let question = &questions[n % questions.len()];
                let started = Instant::now();
                let res = bare.ready().await.expect("ready").call(request(question)).await.expect("ok");
                let _ = res.into_body().collect().await;
                plain.push(started.elapsed());
                let started = Instant::now();
                let res = with.ready().await.expect("ready").call(request(question)).await.expect("ok");
                assert!(res.headers()["x-context-injected"].to_str().unwrap_or("").starts_with("passages=5, history=8, profile=4"));
                let _ = res.into_body().collect().await;
                context.push(started.elapsed());
            }
            let bare50 = percentile(&mut plain, 0.5);
            let with50 = percentile(&mut context, 0.5);
            let with99 = percentile(&mut context, 0.99);
            println!(
                "| {records} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
                bare50.as_secs_f64() * 1e3,
                with50.as_secs_f64() * 1e3,
                (with50.saturating_sub(bare50)).as_secs_f64() * 1e3,
                with99.as_secs_f64() * 1e3,
            );
        });
    }
}
