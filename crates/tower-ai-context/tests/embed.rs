//! `HttpEmbedder` against the mock LLM over a loopback socket (through
//! hyper's client, as a gateway would plug its own), and against tiny
//! in-process upstreams for the answers the mock never gives: the exact
//! vectors, the cache, the batches, and every error mapped.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mock_llm::{Fault, MockHandle};
use serde_json::{Value, json};
use tower_ai_context::{EmbedError, Embedder, HttpEmbedder};
use tower_service::Service;

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

const MODEL: &str = "text-embedding-3-small";

async fn mock() -> MockHandle {
    test_support::mock_llm(Duration::from_millis(1)).await
}

/// hyper's pooled client, sending every request to `base` (its path and
/// query kept).
fn client(
    base: &str,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
+ Send
+ Sync
+ 'static {
    let base: Uri = base.parse().expect("the base URL");
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    tower::ServiceBuilder::new()
        .map_request(move |mut request: Request<Full<Bytes>>| {
            let mut parts = base.clone().into_parts();
            parts.path_and_query = request.uri().path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
            request
        })
        .service(client)
}

/// An upstream in process: `answer` gets the inputs of each request and
/// says the status and the body.
fn fake<F>(
    answer: F,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static
where
    F: Fn(Vec<String>) -> (u16, String) + Clone + Send + Sync + 'static,
{
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let answer = answer.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let (status, body) = answer(inputs(&body));
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))?,
            )
        }
    })
}

fn inputs(body: &[u8]) -> Vec<String> {
    let asked: Value = serde_json::from_slice(body).expect("a JSON request");
    asked["input"]
        .as_array()
        .expect("an input array")
        .iter()
        .map(|text| text.as_str().expect("a text").to_owned())
        .collect()
}

/// The mock's answer to `inputs`, in reverse order (the indices say where
/// each vector goes), as floats or base64.
fn reversed_answer(inputs: &[String], base64: bool) -> String {
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| {
            let vector = mock_llm::embedding(text, 8);
            let embedding = if base64 {
                json!(encode(
                    &vector
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<u8>>()
                ))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": MODEL}).to_string()
}

fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |word, (i, b)| word | u32::from(*b) << (16 - 8 * i));
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((word >> (18 - 6 * position)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn texts(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|text| (*text).to_owned()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    };
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_are_the_mocks_exact_vectors() -> TestResult {
    let mock = mock().await;
    let asked = texts(&[
        "{{embed:refunds}} How do I get my money back?",
        "{{embed:refunds~0.96~policy}} Refunds take five days.",
        "The quick brown fox.",
    ]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-secret"),
    );
    let embedder = HttpEmbedder::builder(client(&mock.base_url()), MODEL)
        .headers(headers)
        .build();
    assert_eq!(embedder.model(), MODEL);
    let vectors = embedder.embed(&asked).await?;
    assert_eq!(vectors.len(), 3);
    for (text, vector) in asked.iter().zip(&vectors) {
        assert_eq!(vector, &mock_llm::embedding(text, 16), "{text}");
    }
    assert!((cosine(&vectors[0], &vectors[1]) - 0.96).abs() <= 1e-6);
    let last = mock.last_request().expect("a request");
    assert_eq!(last.path, "/v1/embeddings");
    assert_eq!(last.model.as_deref(), Some(MODEL));
    assert_eq!(last.authorization.as_deref(), Some("Bearer sk-secret"));
    let debug = format!("{embedder:?}");
    assert!(
        debug.contains("authorization") && !debug.contains("sk-secret"),
        "{debug}"
    );

    // `dimensions` is sent, and the answer checked against it.
    let wide = HttpEmbedder::builder(client(&mock.base_url()), MODEL)
        .dimensions(Some(64))
        .build();
    let vectors = wide.embed(&asked).await?;
    for (text, vector) in asked.iter().zip(&vectors) {
        assert_eq!(vector, &mock_llm::embedding(text, 64), "{text}");
    }
    assert!(wide.embed(&[]).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_is_served_from_the_cache() -> TestResult {
    let mock = mock().await;
    let embedder = HttpEmbedder::builder(client(&mock.base_url()), MODEL).build();
    let asked = texts(&["alpha beta", "gamma", "alpha beta"]);
    let first = embedder.embed(&asked).await?;
    assert_eq!(mock.endpoints().embeddings, 1);
    assert_eq!(first[0], first[2]);
    assert_eq!(first[1], mock_llm::embedding("gamma", 16));

    let again = embedder.embed(&asked).await?;
    assert_eq!(again, first);
    assert_eq!(mock.endpoints().embeddings, 1, "served from the cache");
    assert_eq!(embedder.cached(), 2);

    // Only the new text is asked for; a clone shares the cache.
    let mixed = embedder.clone().embed(&texts(&["gamma", "delta"])).await?;
    assert_eq!(mock.endpoints().embeddings, 2);
    assert_eq!(mixed[0], first[1]);
    assert_eq!(mixed[1], mock_llm::embedding("delta", 16));

    // Without a cache every call asks.
    let uncached = HttpEmbedder::builder(client(&mock.base_url()), MODEL)
        .cache_entries(0)
        .build();
    uncached.embed(&asked).await?;
    uncached.embed(&asked).await?;
    assert_eq!(mock.endpoints().embeddings, 4);
    assert_eq!(uncached.cached(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_texts_take_three_requests_in_order() -> TestResult {
    let mock = mock().await;
    let embedder = HttpEmbedder::builder(client(&mock.base_url()), MODEL)
        .max_batch(256)
        .build();
    let asked: Vec<String> = (0..600).map(|i| format!("passage number {i}")).collect();
    let vectors = embedder.embed(&asked).await?;
    assert_eq!(mock.endpoints().embeddings, 3);
    assert_eq!(vectors.len(), 600);
    for (text, vector) in asked.iter().zip(&vectors) {
        assert_eq!(vector, &mock_llm::embedding(text, 16), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_concurrently_up_to_the_bound() -> TestResult {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let (running, most, requests) = (running.clone(), most.clone(), requests.clone());
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let (running, most, requests) = (running.clone(), most.clone(), requests.clone());
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let body = request.into_body().collect().await?.to_bytes();
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                let answer = reversed_answer(&inputs(&body), false);
                Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(answer))))
            }
        })
    };
    let embedder = HttpEmbedder::builder(upstream, MODEL)
        .max_batch(10)
        .concurrency(3)
        .build();
    let asked: Vec<String> = (0..95).map(|i| format!("text {i}")).collect();
    let vectors = embedder.embed(&asked).await?;
    assert_eq!(requests.load(Ordering::SeqCst), 10);
    assert_eq!(most.load(Ordering::SeqCst), 3);
    for (text, vector) in asked.iter().zip(&vectors) {
        assert_eq!(vector, &mock_llm::embedding(text, 8), "{text}");
    }
    Ok(())
}

#[tokio::test]
async fn answers_are_mapped_by_index_floats_or_base64() -> TestResult {
    for base64 in [false, true] {
        let upstream = fake(move |inputs| (200, reversed_answer(&inputs, base64)));
        let embedder = HttpEmbedder::builder(upstream, MODEL).build();
        let asked = texts(&["one", "two", "three"]);
        let vectors = embedder.embed(&asked).await?;
        for (text, vector) in asked.iter().zip(&vectors) {
            assert_eq!(
                vector,
                &mock_llm::embedding(text, 8),
                "{text} base64: {base64}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_status() -> TestResult {
    let mock = mock().await;
    let embedder = HttpEmbedder::builder(client(&mock.base_url()), MODEL).build();
    mock.set_fault(Fault {
        fail_rate: 1.0,
        ..Fault::default()
    });
    match embedder.embed(&texts(&["hello"])).await {
        Err(EmbedError::Status(500, body)) => {
            assert!(body.contains("server_error"), "{body}");
        }
        other => panic!("expected a 500: {other:?}"),
    }
    mock.set_fault(Fault::default());
    // The mock refuses a malformed directive with a 400.
    match embedder.embed(&texts(&["fine", "{{embed:}}"])).await {
        Err(EmbedError::Status(400, body)) => {
            assert!(body.contains("embed directive"), "{body}");
            assert!(body.len() <= 200);
        }
        other => panic!("expected a 400: {other:?}"),
    }
    // Nothing failed was cached.
    assert_eq!(embedder.cached(), 0);
    Ok(())
}

#[tokio::test]
async fn malformed_answers_are_malformed() -> TestResult {
    let one = |vector: &str| format!(r#"{{"data":[{{"index":0,"embedding":{vector}}}]}}"#);
    let cases: Vec<(&str, String)> = vec![
        ("wrong count", one("[1.0, 0.0]")),
        ("not JSON", "<html>".to_owned()),
        ("no data", "{}".to_owned()),
        (
            "lengths differ",
            r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0,0.0]}]}"#
                .to_owned(),
        ),
        (
            "an index twice",
            r#"{"data":[{"index":0,"embedding":[1.0]},{"index":0,"embedding":[1.0]}]}"#.to_owned(),
        ),
        (
            "an index out of range",
            r#"{"data":[{"index":0,"embedding":[1.0]},{"index":7,"embedding":[1.0]}]}"#.to_owned(),
        ),
    ];
    for (case, body) in cases {
        let upstream = fake(move |_| (200, body.clone()));
        let embedder = HttpEmbedder::builder(upstream, MODEL).build();
        let result = embedder.embed(&texts(&["a", "b"])).await;
        assert!(
            matches!(result, Err(EmbedError::Malformed(_))),
            "{case}: {result:?}"
        );
    }
    // Vectors of another length than the `dimensions` asked for.
    let upstream = fake(|inputs| (200, reversed_answer(&inputs, false)));
    let embedder = HttpEmbedder::builder(upstream, MODEL)
        .dimensions(Some(16))
        .build();
    let result = embedder.embed(&texts(&["a"])).await;
    assert!(
        matches!(result, Err(EmbedError::Malformed(_))),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn one_failed_batch_fails_the_call() -> TestResult {
    let upstream = fake(|inputs| {
        if inputs.iter().any(|text| text == "poison") {
            (503, "overloaded".to_owned())
        } else {
            (200, reversed_answer(&inputs, false))
        }
    });
    let embedder = HttpEmbedder::builder(upstream, MODEL).max_batch(2).build();
    let result = embedder
        .embed(&texts(&["a", "b", "c", "poison", "e"]))
        .await;
    assert_eq!(
        result,
        Err(EmbedError::Status(503, "overloaded".to_owned()))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_unavailable() -> TestResult {
    // A port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let embedder = HttpEmbedder::builder(client(&format!("http://{addr}")), MODEL)
        .timeout(Duration::from_secs(2))
        .build();
    let started = Instant::now();
    let result = embedder.embed(&texts(&["hello"])).await;
    assert!(
        matches!(result, Err(EmbedError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out() -> TestResult {
    // Connections are accepted (by the kernel) and never answered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let timeout = Duration::from_millis(300);
    let embedder = HttpEmbedder::builder(client(&format!("http://{addr}")), MODEL)
        .timeout(timeout)
        .build();
    let started = Instant::now();
    let result = embedder.embed(&texts(&["hello"])).await;
    let elapsed = started.elapsed();
    match result {
        Err(EmbedError::Unavailable(reason)) => assert!(reason.contains("300ms"), "{reason}"),
        other => panic!("expected Unavailable: {other:?}"),
    }
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    drop(listener);
    Ok(())
}
