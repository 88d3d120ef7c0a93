//! The response cache beside the uncached service, in one run:
//! - one chat request in process: the bare service, an L1 hit, the miss path
//!   (key, flight, upstream call, recording, store); with `--features redis`
//!   also an L2 hit (L1 off) and the miss path with Redis (a `GET`, the lock
//!   script, the store off the request's path);
//! - with `--features redis`: an L2 lookup beside a raw `fred` `GET` of the
//!   same value on the same server (a `redis-server` of its own);
//! - axum over loopback, 32 concurrent clients: the bare app beside the app
//!   behind the cache answering from L1.
//!
//! `cargo bench --bench cache --features redis`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_ai::cache::{CacheLayer, Route};

#[path = "support/ratio.rs"]
mod ratio;

const PATH: &str = "/v1/chat/completions";

/// A chat completion, as an upstream answers it (about 400 bytes).
fn completion() -> Bytes {
    Bytes::from(
        serde_json::json!({
            "id": "chatcmpl-0123456789abcdef",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "The quick brown fox jumps over the lazy dog, twice, for the benchmark."},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 17, "total_tokens": 38}
        })
        .to_string(),
    )
}

fn prompt(n: u64) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": "gpt-4o-mini",
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": format!("Benchmark question number {n}: what is a cache?")}
            ]
        })
        .to_string(),
    )
}

fn request(body: Bytes) -> Request<Full<Bytes>> {
    Request::post(PATH)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench-tenant")
        .body(Full::new(body))
        .unwrap_or_default()
}

/// The upstream: answers at once.
fn upstream() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let body = completion();
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let body = body.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap_or_default(),
            )
        }
    })
}

/// Times `iters` requests made by two tasks at once.
fn pair<S, B>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    iters: u64,
    make: fn() -> Request<Full<Bytes>>,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: axum::body::HttpBody<Data = Bytes> + Send,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..iters / 2 {
                        black_box(send(&mut svc, make()).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        start.elapsed()
    })
}

/// Sends one request and reads the whole answer (which is when a miss is
/// stored).
async fn one<S, B>(svc: &mut S, body: Bytes) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    B: axum::body::HttpBody<Data = Bytes>,
{
    send(svc, request(body)).await
}

async fn send<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    B: axum::body::HttpBody<Data = Bytes>,
{
    let Ok(svc) = svc.ready().await else { return 0 };
    let Ok(res) = svc.call(req).await else {
        return 0;
    };
    res.into_body()
        .collect()
        .await
        .map_or(0, |c| c.to_bytes().len())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Times `iters` sequential runs of an async expression.
macro_rules! timed {
    ($rt:expr, $iters:expr, $each:expr) => {
        $rt.block_on(async {
            let start = Instant::now();
            for _ in 0..$iters {
                black_box($each.await);
            }
            start.elapsed()
        })
    };
}

fn in_process(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let hot = prompt(0);
    let fresh = Arc::new(AtomicU64::new(1_000_000));

    let mut bare = upstream();
    let mut l1 = CacheLayer::builder()
        .route(Route::post(PATH))
        .build()
        .expect("a valid layer")
        .layer_service(upstream());
    rt.block_on(one(&mut l1, hot.clone()));

    #[cfg(feature = "redis")]
    let redis = test_support::RedisServer::start();
    #[cfg(feature = "redis")]
    let (mut l2, mut l2_miss) = {
        let layer = |prefix: &str, l1_ttl: Duration| {
            let client = rt
                .block_on(tower_ai::core::redis::connect(
                    &[redis.url()],
                    &tower_ai::core::redis::ConnectOptions::default(),
                ))
                .expect("connected");
            CacheLayer::builder()
                .route(Route::post(PATH))
                // L1 off: every lookup goes to Redis.
                .l1_ttl(l1_ttl)
                .redis(
                    tower_ai::cache::RedisStore::builder(client)
                        .prefix(prefix)
                        .degrade(tower_ai::core::redis::Degrade::new(
                            "cache",
                            tower_ai::core::redis::DegradeConfig::default()
                                .timeout(Duration::from_secs(2)),
                        ))
                        .build(),
                )
                .build()
                .expect("a valid layer")
        };
        let mut l2 = layer("bench", Duration::from_nanos(1)).layer_service(upstream());
        rt.block_on(one(&mut l2, hot.clone()));
        std::thread::sleep(Duration::from_millis(200));
        let l2_miss = layer("bench-miss", Duration::from_secs(60)).layer_service(upstream());
        (l2, l2_miss)
    };
    // Before any miss is measured: the stores those leave behind would
    // share the server with the lookups.
    #[cfg(feature = "redis")]
    l2_beside_raw_get(c, &rt, &redis, &mut l2, &hot);

    let mut group = c.benchmark_group("one chat request, in process");
    group.bench_function("uncached service", |b| {
        b.iter_custom(|iters| timed!(rt, iters, one(&mut bare, hot.clone())))
    });
    group.bench_function("L1 hit", |b| {
        b.iter_custom(|iters| timed!(rt, iters, one(&mut l1, hot.clone())))
    });
    let mut l1_get = CacheLayer::builder()
        .route(Route::get("/hello"))
        .build()
        .expect("a valid layer")
        .layer_service(upstream());
    let get = || -> Request<Full<Bytes>> {
        Request::get("/hello")
            .header("authorization", "Bearer sk-bench-tenant")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    };
    rt.block_on(send(&mut l1_get, get()));
    group.bench_function("GET, uncached service", |b| {
        b.iter_custom(|iters| timed!(rt, iters, send(&mut bare, get())))
    });
    group.bench_function("GET, L1 hit (answered in `call`)", |b| {
        b.iter_custom(|iters| timed!(rt, iters, send(&mut l1_get, get())))
    });
    // Two tasks at once on the two workers: what sharing L1 costs.
    group.bench_function("GET, uncached service, 2 tasks", |b| {
        b.iter_custom(|iters| pair(&rt, &bare, iters, get))
    });
    group.bench_function("GET, L1 hit, 2 tasks", |b| {
        b.iter_custom(|iters| pair(&rt, &l1_get, iters, get))
    });
    group.bench_function("miss, stored in L1", |b| {
        b.iter_custom(|iters| {
            timed!(
                rt,
                iters,
                one(&mut l1, prompt(fresh.fetch_add(1, Ordering::Relaxed)))
            )
        })
    });
    #[cfg(feature = "redis")]
    {
        group.bench_function("L2 hit (L1 off)", |b| {
            b.iter_custom(|iters| timed!(rt, iters, one(&mut l2, hot.clone())))
        });
        group.bench_function("miss, stored in L1 and Redis", |b| {
            b.iter_custom(|iters| {
                timed!(
                    rt,
                    iters,
                    one(&mut l2_miss, prompt(fresh.fetch_add(1, Ordering::Relaxed)))
                )
            })
        });
    }
    group.finish();
}

/// The L2 lookup beside a raw `fred` `GET` of the same value.
#[cfg(feature = "redis")]
fn l2_beside_raw_get<S>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    redis: &test_support::RedisServer,
    through_layer: &mut S,
    hot: &Bytes,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<tower_ai::cache::CacheBody<Full<Bytes>>>>,
{
    use fred::interfaces::KeysInterface;

    let client = rt
        .block_on(tower_ai::core::redis::connect(
            &[redis.url()],
            &tower_ai::core::redis::ConnectOptions::default(),
        ))
        .expect("connected");
    let layer = CacheLayer::builder()
        .route(Route::post(PATH))
        .l1_ttl(Duration::from_nanos(1))
        .redis(
            tower_ai::cache::RedisStore::builder(client.clone())
                .prefix("bench")
                .degrade(tower_ai::core::redis::Degrade::new(
                    "cache",
                    tower_ai::core::redis::DegradeConfig::default().timeout(Duration::from_secs(2)),
                ))
                .build(),
        )
        .build()
        .expect("a valid layer");
    let handle = layer.handle();
    let req = request(prompt(0));
    let key = handle.key_for(&req, &prompt(0)).expect("a key");
    assert!(
        rt.block_on(handle.lookup_key(&key)).is_some(),
        "the entry is in Redis"
    );
    // The same value, by its key name (`{prefix}:cache:{digest}:v`).
    let mut digest = String::new();
    for b in &key.as_bytes()[..16] {
        digest.push_str(&format!("{b:02x}"));
    }
    let name = format!("bench:cache:{{{digest}}}:v");

    let mut group = c.benchmark_group("L2 hit beside a raw GET of the same value");
    group.bench_function("raw fred GET", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, async {
                client
                    .get::<Option<Bytes>, _>(name.as_str())
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |b| b.len())
            })
        })
    });
    group.bench_function("one request through the layer, L2 hit (L1 off)", |b| {
        b.iter_custom(|iters| timed!(rt, iters, one(through_layer, hot.clone())))
    });
    group.bench_function("CacheHandle::lookup_key (GET + decode)", |b| {
        b.iter_custom(|iters| {
            timed!(rt, iters, async {
                handle.lookup_key(&key).await.map_or(0, |a| a.body().len())
            })
        })
    });
    group.finish();
    ratio::time_ratio(
        "L2 hit beside a raw GET of the same value",
        "one request through the layer, L2 hit (L1 off)",
        "raw fred GET",
        "≤ 1.1×",
    );
}

/// What making a key costs (the JSON body is parsed and hashed in its
/// canonical form).
fn key(c: &mut Criterion) {
    use tower_ai::cache::{CacheKey, IgnoreList, KeyScope};
    let body = prompt(0);
    let scope = KeyScope::Caller(tower_ai::core::key::ClientKey::digest("api-key", "sk-1"));
    let ignore = IgnoreList::default();
    let mut group = c.benchmark_group("cache key");
    group.bench_function("CacheKey::for_request (230-byte chat body)", |b| {
        b.iter(|| {
            black_box(CacheKey::for_request(
                &http::Method::POST,
                PATH,
                black_box(&body),
                &scope,
                &ignore,
            ))
        })
    });
    group.bench_function("serde_json::Value parse of the same body", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).is_ok()))
    });
    group.finish();
}

/// Requests per second over loopback with 32 concurrent clients: the bare
/// axum app beside the same app behind the cache (every request an L1 hit).
fn axum_loopback(c: &mut Criterion) {
    let rt = runtime();
    let apps = apps(&rt);
    let (bare_url, cached_url) = (apps.bare_post, apps.cached_post);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("a client");
    let hot = prompt(0);
    let send = move |url: String| {
        let client = client.clone();
        let hot = hot.clone();
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("authorization", "Bearer sk-bench-tenant")
                .body(hot)
                .send()
                .await
                .ok()?
                .bytes()
                .await
                .ok()
                .map(|b| b.len())
        }
    };
    rt.block_on(send(cached_url.clone()));

    let concurrently = |url: String, iters: u64| {
        rt.block_on(async {
            let per_task = iters.div_ceil(32);
            let start = Instant::now();
            let tasks: Vec<_> = (0..32)
                .map(|_| {
                    let url = url.clone();
                    let send = send.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            black_box(send(url.clone()).await);
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            start.elapsed()
        })
    };
    let mut group = c.benchmark_group("axum over loopback, 32 concurrent clients");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("bare app", |b| {
        b.iter_custom(|iters| concurrently(bare_url.clone(), iters))
    });
    group.bench_function("behind the cache (L1 hits)", |b| {
        b.iter_custom(|iters| concurrently(cached_url.clone(), iters))
    });
    group.bench_function("bare app (again)", |b| {
        b.iter_custom(|iters| concurrently(bare_url.clone(), iters))
    });
    group.finish();
    ratio::time_ratio(
        "axum over loopback, 32 concurrent clients",
        "behind the cache (L1 hits)",
        "bare app",
        "≤ 1.11× the time, i.e. ≥ 0.9× the throughput",
    );
}

/// `layer.layer(svc)` without importing `tower::Layer` everywhere.
trait LayerService {
    fn layer_service<S>(&self, inner: S) -> tower_ai::cache::Cache<S>;
}

impl LayerService for CacheLayer {
    fn layer_service<S>(&self, inner: S) -> tower_ai::cache::Cache<S> {
        tower::Layer::layer(self, inner)
    }
}

/// Where the apps of [`apps`] listen.
struct Apps {
    /// `POST /v1/chat/completions`: the handler reads the body (as a real
    /// one parses its JSON); then the same behind the cache.
    bare_post: String,
    cached_post: String,
    /// `GET /hello`: hello-world; then the same behind the cache.
    bare_get: String,
    cached_get: String,
}

/// The bare app and the app behind the cache (answering from L1), served on
/// loopback ports.
fn apps(rt: &tokio::runtime::Runtime) -> Apps {
    let body = completion();
    let chat = move |request: Bytes| {
        let body = body.clone();
        async move {
            black_box(request);
            ([("content-type", "application/json")], body)
        }
    };
    let hello = || async { "Hello, World!" };
    let app = || {
        axum::Router::new()
            .route(PATH, axum::routing::post(chat.clone()))
            .route("/hello", axum::routing::get(hello))
    };
    let bare = app();
    let cached = app().route_layer(
        CacheLayer::builder()
            .route(Route::post(PATH))
            .route(Route::get("/hello"))
            .build()
            .expect("a valid layer"),
    );
    let serve = |app: axum::Router| {
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port");
            let addr = listener.local_addr().expect("an address");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            format!("http://{addr}")
        })
    };
    let (bare, cached) = (serve(bare), serve(cached));
    Apps {
        bare_post: format!("{bare}{PATH}"),
        cached_post: format!("{cached}{PATH}"),
        bare_get: format!("{bare}/hello"),
        cached_get: format!("{cached}/hello"),
    }
}

/// `wrk -t1 -c32 -d5s` (when installed) against the bare app, the app behind
/// the cache (L1 hits) and the bare app again, as PERFORMANCE.md measures
/// HTTP throughput: for `GET /hello` and for the chat `POST`. Prints
/// requests per second and the ratios.
fn wrk_comparison() {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("wrk is not installed: skipping the wrk comparison");
        return;
    }
    let rt = runtime();
    let apps = apps(&rt);
    let dir = std::env::temp_dir();
    let write = |name: &str, lua: String| {
        let path = dir.join(format!("tower-ai-cache-{name}-{}.lua", std::process::id()));
        std::fs::write(&path, lua).ok().map(|()| path)
    };
    let body = String::from_utf8_lossy(&prompt(0)).replace('\'', "\\'");
    let post = write(
        "post",
        format!(
            "wrk.method = 'POST'\nwrk.body = '{body}'\n\
             wrk.headers['Content-Type'] = 'application/json'\n\
             wrk.headers['Authorization'] = 'Bearer sk-bench-tenant'\n"
        ),
    );
    let get = write(
        "get",
        "wrk.headers['Authorization'] = 'Bearer sk-bench-tenant'\n".to_owned(),
    );
    let run = |script: &Option<std::path::PathBuf>, url: &str| -> Option<f64> {
        let out = std::process::Command::new("wrk")
            .args(["-t1", "-c32", "-d5s", "-s"])
            .arg(script.as_ref()?)
            .arg(url)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
    };
    for (what, script, bare, cached) in [
        ("GET /hello", &get, &apps.bare_get, &apps.cached_get),
        (
            "POST /v1/chat/completions",
            &post,
            &apps.bare_post,
            &apps.cached_post,
        ),
    ] {
        // Plain first and last, ours between, twice.
        let runs: Vec<Option<f64>> = [bare, cached, bare, cached, bare]
            .iter()
            .map(|url| run(script, url))
            .collect();
        let Some(runs) = runs.into_iter().collect::<Option<Vec<f64>>>() else {
            continue;
        };
        let plain = (runs[0] + runs[2] + runs[4]) / 3.0;
        let ours = (runs[1] + runs[3]) / 2.0;
        println!(
            "wrk -t1 -c32 -d5s, {what}: bare {:.0} / {:.0} / {:.0} req/s, \
             behind the cache (L1 hits) {:.0} / {:.0} req/s: {:.2}x plain",
            runs[0],
            runs[2],
            runs[4],
            runs[1],
            runs[3],
            ours / plain
        );
    }
    for script in [post, get].into_iter().flatten() {
        let _ = std::fs::remove_file(script);
    }
}

criterion_group!(benches, key, in_process, axum_loopback);

fn main() {
    benches();
    wrk_comparison();
    Criterion::default().configure_from_args().final_summary();
}
