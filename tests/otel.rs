//! The gateway's traces over OTLP/HTTP, end to end: a gateway configured
//! with an `[otel]` table, the mock LLM as its model server, and a fake
//! collector on loopback that decodes what it receives with the OTLP
//! protobuf types. One JSON and one streamed chat call must each arrive as
//! a span with the GenAI semantic conventions' attributes and the usage of
//! the answer the client got.
//!
//! A collector that takes connections and never answers must cost no
//! request anything: that test keeps its subscriber to its own thread (a
//! current-thread runtime), so the global one is installed once, by the
//! other.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_ai_gateway::{Config, Gateway, telemetry};

/// One export as received: its content type and body.
type Export = (Option<String>, Bytes);

/// What the fake collector received.
#[derive(Clone)]
struct Collector {
    exports: Arc<Mutex<Vec<Export>>>,
    received: watch::Sender<usize>,
}

impl Collector {
    /// Serves `POST /v1/traces` on a loopback port; answers each export
    /// with an empty `ExportTraceServiceResponse` (full success).
    async fn spawn() -> (Self, SocketAddr) {
        let collector = Collector {
            exports: Arc::default(),
            received: watch::Sender::new(0),
        };
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("the collector binds");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, addr)
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let exports = self.exports.lock().expect("not poisoned").clone();
        let mut spans = Vec::new();
        for (content_type, body) in exports {
            assert_eq!(content_type.as_deref(), Some("application/x-protobuf"));
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.expect("a resource");
                let service = string(&resource.attributes, "service.name").expect("service.name");
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        spans.push((service.clone(), span));
                    }
                }
            }
        }
        spans
    }
}

async fn export(
    State(collector): State<Collector>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    collector
        .exports
        .lock()
        .expect("not poisoned")
        .push((content_type, body));
    collector.received.send_modify(|n| *n += 1);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(AnyValue::IntValue(n)) => Some(*n),
        _ => None,
    }
}

fn boolean(attributes: &[KeyValue], key: &str) -> Option<bool> {
    match attribute(attributes, key) {
        Some(AnyValue::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

/// `(prompt_tokens, completion_tokens)` of an OpenAI `usage` object.
fn usage(usage: &Value) -> (i64, i64) {
    let tokens = |name: &str| {
        usage[name]
            .as_i64()
            .unwrap_or_else(|| panic!("usage.{name}: {usage}"))
    };
    (tokens("prompt_tokens"), tokens("completion_tokens"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_calls_are_exported_as_gen_ai_spans() {
    let (collector, collector_addr) = Collector::spawn().await;
    let mock = mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config::default(),
    )
    .await
    .expect("the mock starts");
    let toml_text = format!(
        r#"
[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "{}/v1"

[otel]
endpoint = "http://{collector_addr}"
service_name = "otel-test-gateway"
"#,
        mock.base_url()
    );
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
        .read_toml(&toml_text, Path::new("otel.toml"), |_| None)
        .expect("a valid config");
    let telemetry = telemetry::init(config.otel.as_ref()).expect("the subscriber installs");
    assert!(telemetry.is_exporting());
    let gateway = Gateway::start(config).await.expect("the gateway starts");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url());

    let res = client
        .post(&url)
        .json(&json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "user", "content": "Trace this answer." }],
        }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("a JSON answer");
    let answered = usage(&answer["usage"]);

    let res = client
        .post(&url)
        .json(&json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "user", "content": "Trace this stream." }],
            "stream": true,
            "stream_options": { "include_usage": true },
        }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(res.status(), 200);
    let events = res.text().await.expect("the stream to its end");
    let streamed = events
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str::<Value>(data).expect("a JSON chunk"))
        .find(|chunk| chunk["usage"].is_object())
        .map(|chunk| usage(&chunk["usage"]))
        .expect("a usage chunk");
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");

    // A span ends when the gateway drops the answer's body, just after the
    // client read its end: flush until both are in, within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut received = collector.received.subscribe();
    let spans = loop {
        tokio::task::block_in_place(|| telemetry.force_flush()).expect("the export succeeds");
        let spans = collector.spans();
        if spans.len() >= 2 {
            break spans;
        }
        // Wait for the next export, but a bounded while: a span may end
        // after a flush that found nothing to send.
        let _ = tokio::time::timeout(Duration::from_millis(50), received.changed()).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "two spans within 20 s; got {spans:#?}"
        );
    };

    assert_eq!(spans.len(), 2, "only the model calls' spans: {spans:#?}");
    let mut by_stream = [None, None];
    for (service, span) in &spans {
        let attributes = &span.attributes;
        assert_eq!(service, "otel-test-gateway");
        assert_eq!(span.name, "chat gpt-4o-mini");
        assert_eq!(span.kind, SpanKind::Client as i32, "{span:#?}");
        // Its HTTP request's tower-http span isn't exported: it's a root.
        assert!(span.parent_span_id.is_empty(), "{span:#?}");
        assert_eq!(
            string(attributes, "gen_ai.request.model").as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            string(attributes, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            string(attributes, "gen_ai.provider.name").as_deref(),
            Some("openai")
        );
        assert_eq!(
            string(attributes, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(string(attributes, "error.type"), None, "{span:#?}");
        let input = int(attributes, "gen_ai.usage.input_tokens")
            .unwrap_or_else(|| panic!("input tokens: {span:#?}"));
        let output = int(attributes, "gen_ai.usage.output_tokens").expect("output tokens");
        assert!(input > 0 && output > 0, "{span:#?}");
        let stream = boolean(attributes, "gen_ai.request.stream").expect("gen_ai.request.stream");
        by_stream[usize::from(stream)] = Some((input, output));
    }
    assert_eq!(by_stream[0], Some(answered), "the JSON call's span");
    assert_eq!(by_stream[1], Some(streamed), "the streamed call's span");

    gateway.shutdown().await.expect("the gateway stops");
    tokio::task::block_in_place(|| telemetry.shutdown()).expect("the exporter stops");
}

/// A collector that accepts connections and never answers, until released:
/// the exporter's worst case (a refused connection fails at once).
struct Stall {
    addr: SocketAddr,
    accepted: watch::Receiver<usize>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Stall {
    async fn spawn() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("the stall binds");
        let addr = listener.local_addr().expect("an address");
        let (accepted_tx, accepted) = watch::channel(0);
        let (release, mut released) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        if let Ok((conn, _)) = conn {
                            held.push(conn);
                            accepted_tx.send_modify(|n| *n += 1);
                        }
                    }
                    _ = &mut released => break,
                }
            }
            // Dropping the listener and the held connections: the export in
            // flight fails, and later ones are refused.
        });
        Stall {
            addr,
            accepted,
            release: Some(release),
        }
    }

    fn release(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_collector_that_never_answers_holds_up_no_request() {
    use tracing_subscriber::layer::SubscriberExt;

    let mut stall = Stall::spawn().await;
    let mock = mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config::default(),
    )
    .await
    .expect("the mock starts");
    let toml_text = format!(
        r#"
[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "{}/v1"

# Room for the calls below: this test is about time, not limits.
[[limits]]
route = "/v1/chat/completions"
requests = {{ capacity = 1000, per_second = 1000.0 }}
tokens = {{ capacity = 10000000, per_second = 1000000.0 }}

[otel]
endpoint = "http://{}"
"#,
        mock.base_url(),
        stall.addr
    );
    let mut config = Config::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
        .read_toml(&toml_text, Path::new("stall.toml"), |_| None)
        .expect("a valid config");
    let otel = config.otel.clone().expect("an [otel] table");
    assert_eq!(otel.service_name, "tower-ai-gateway");
    let (layer, telemetry) =
        telemetry::otel_layer::<tracing_subscriber::Registry>(&otel).expect("the exporter");
    // This thread runs the whole test (a current-thread runtime): its
    // spans go to this subscriber, whatever the other test installed.
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    let gateway = Gateway::start(config).await.expect("the gateway starts");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url());
    let chat = json!({
        "model": "gpt-4o-mini",
        "messages": [{ "role": "user", "content": "Is anyone collecting?" }],
    });
    let call = || async {
        let res = client
            .post(&url)
            .json(&chat)
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(res.status(), 200);
        res.bytes().await.expect("the whole answer");
    };

    // One span, then flushes from another thread until an export is stuck
    // on the collector (a flush with nothing ended yet sends nothing).
    call().await;
    let telemetry = Arc::new(telemetry);
    let stuck = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (telemetry, stuck) = (telemetry.clone(), stuck.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !stuck.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                let _ = telemetry.force_flush();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut accepted = stall.accepted.clone();
    tokio::time::timeout(Duration::from_secs(10), accepted.wait_for(|n| *n > 0))
        .await
        .expect("an export reaches the collector")
        .expect("the stall runs");
    stuck.store(true, std::sync::atomic::Ordering::Relaxed);

    // The export hangs; the gateway doesn't.
    let started = tokio::time::Instant::now();
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(5), call())
            .await
            .expect("a request while the collector hangs");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "20 calls took {took:?} with a hung collector"
    );

    stall.release();
    gateway.shutdown().await.expect("the gateway stops");
    tokio::task::spawn_blocking(move || flusher.join())
        .await
        .expect("joined")
        .expect("the flusher ends");
    let telemetry = Arc::into_inner(telemetry).expect("the flusher let go");
    // The spans can't be delivered now (the SDK's shutdown doesn't report
    // the last export's failure). Shutting down still ends in bounded
    // time, even blocking this runtime's only thread: the exporter runs on
    // its own.
    let started = std::time::Instant::now();
    let _ = telemetry.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
}
