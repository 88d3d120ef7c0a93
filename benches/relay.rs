//! The SSE relay's added latency per event, over loopback sockets.
//!
//! An upstream (axum) streams one OpenAI-style chunk each time the bench
//! hands it one; a reqwest client reads the stream and the bench times each
//! event from the hand-over to its arrival at the client. Four paths, on one
//! long-lived stream each:
//!
//! - `direct`: the client reads the upstream itself (the baseline);
//! - `proxy`: through an axum app proxying with the gateway's upstream client
//!   (`hyper-util`), no relay: the cost of the hop alone;
//! - `relay_direct`: the same app with `SseRelayLayer` (direct mode: decode,
//!   number, re-encode each event);
//! - `relay_resumable`: the same with the resumable relay on the memory store
//!   (each event appended to the store by the generation task and read back
//!   by the client's body).
//!
//! Everything runs on one current-thread runtime, over loopback TCP with
//! `TCP_NODELAY`, so the figures are the work on each path, free of the
//! thread wake-ups that dominate a multi-threaded run on a shared machine.
//!
//! The relay's added latency is `relay_* - direct` (what a client sees
//! compared with a direct connection) and `relay_* - proxy` (the layer's own
//! part). Target: at most 50 µs at the median over a direct connection.
//!
//! Run: `cargo bench --bench relay` (add `-- --quick` for a short run);
//! medians are in `target/criterion/relay_event_latency/*/new/estimates.json`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::serve::ListenerExt;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::Layer;
use tower_ai::sse::store::MemoryStore;
use tower_ai::sse::{SseRelayBody, SseRelayLayer};
use tower_ai_gateway::Upstream;

/// One chunk as OpenAI streams it (~230 bytes).
const CHUNK: &[u8] = br#"data: {"id":"chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}

"#;

/// The upstream: each request streams what the bench sends on the channel
/// registered before it.
#[derive(Clone, Default)]
struct Upstream0 {
    next: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
}

async fn stream_handler(State(up): State<Upstream0>) -> Response<Body> {
    let rx = up.next.lock().ok().and_then(|mut next| next.take());
    let body = futures_util::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(chunk), Some(rx)))
    });
    let mut res = Response::new(Body::from_stream(body));
    res.headers_mut().insert(
        "content-type",
        "text/event-stream".parse().expect("a header"),
    );
    res
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// An app proxying the chat route to `upstream` through `layer` (or none).
async fn proxy_app<L>(upstream: &str, layer: L) -> String
where
    L: Layer<Upstream>,
    L::Service: tower::Service<
            Request<Body>,
            Response = Response<SseRelayBody<Body>>,
            Error = <Upstream as tower::Service<Request<Body>>>::Error,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    let upstream = Upstream::new(upstream, Duration::from_secs(10)).expect("an upstream URL");
    let svc = BadGateway(layer.layer(upstream));
    serve(Router::new().route_service("/v1/chat/completions", svc)).await
}

/// Answers the upstream client's errors with `502`, as the gateway does, so
/// the service is infallible for axum.
#[derive(Clone)]
struct BadGateway<S>(S);

impl<S> tower::Service<Request<Body>> for BadGateway<S>
where
    S: tower::Service<Request<Body>, Response = Response<SseRelayBody<Body>>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // The upstream client is always ready; an error would show in `call`.
        self.0.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(res) => res.map(Body::new),
                Err(_) => {
                    let mut res = Response::new(Body::empty());
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    res
                }
            })
        })
    }
}

/// No relay: the proxied body wrapped as-is, so every path has one type.
#[derive(Clone)]
struct NoRelay;

impl<S> Layer<S> for NoRelay {
    type Service = tower::util::MapResponse<S, fn(Response<Body>) -> Response<SseRelayBody<Body>>>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapResponse::new(inner, |res: Response<Body>| {
            res.map(SseRelayBody::passthrough)
        })
    }
}

/// A stream open on `url`, fed through `tx`.
struct OpenStream {
    tx: mpsc::Sender<Bytes>,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    pending: Vec<u8>,
}

impl OpenStream {
    async fn open(client: &reqwest::Client, upstream: &Upstream0, url: &str) -> Self {
        let (tx, rx) = mpsc::channel(16);
        *upstream.next.lock().expect("the lock") = Some(rx);
        let res = client
            .post(format!("{url}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .expect("a response");
        assert_eq!(res.status(), StatusCode::OK);
        let mut stream = Self {
            tx,
            body: Box::pin(res.bytes_stream()),
            pending: Vec::new(),
        };
        // Warm the path: the first event goes through before timing.
        stream.round().await;
        stream
    }

    /// Hands one event to the upstream and waits until the client has it.
    async fn round(&mut self) -> Duration {
        let start = Instant::now();
        self.tx
            .send(Bytes::from_static(CHUNK))
            .await
            .expect("the upstream reads");
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                self.pending.drain(..end + 2);
                return start.elapsed();
            }
            let chunk = self
                .body
                .next()
                .await
                .expect("the stream goes on")
                .expect("no error");
            self.pending.extend_from_slice(&chunk);
        }
    }
}

fn latency(c: &mut Criterion) {
    // One thread for the client, the apps and the upstream: what is timed
    // is the work each path adds per event, not how fast a parked worker
    // thread wakes up (tens of microseconds on a shared machine, and it
    // swamps the difference).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (upstream, mut streams) = rt.block_on(async {
        let upstream = Upstream0::default();
        let upstream_url = serve(
            Router::new()
                .route("/v1/chat/completions", post(stream_handler))
                .with_state(upstream.clone()),
        )
        .await;
        let relay_direct = SseRelayLayer::builder()
            .no_heartbeat()
            .build()
            .expect("a relay");
        let relay_resumable = SseRelayLayer::builder()
            .no_heartbeat()
            .resumable(MemoryStore::new())
            .build()
            .expect("a relay");
        let urls = [
            ("direct", upstream_url.clone()),
            ("proxy", proxy_app(&upstream_url, NoRelay).await),
            ("relay_direct", proxy_app(&upstream_url, relay_direct).await),
            (
                "relay_resumable",
                proxy_app(&upstream_url, relay_resumable).await,
            ),
        ];
        let client = reqwest::Client::new();
        let mut streams = Vec::new();
        for (name, url) in urls {
            streams.push((name, OpenStream::open(&client, &upstream, &url).await));
        }
        (upstream, streams)
    });
    let _ = upstream;

    let mut group = c.benchmark_group("relay_event_latency");
    for (name, stream) in &mut streams {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += stream.round().await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, latency);
criterion_main!(benches);
