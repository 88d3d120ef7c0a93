//! The rate limiter beside its peers, in one run:
//! - one keyed in-memory check, beside governor's keyed limiter used directly;
//! - one request through the layer (by peer IP, with rate-limit headers),
//!   beside tower_governor's layer and the bare service;
//! - checks per second on Redis with 32 concurrent callers, beside a plain
//!   EVALSHA loop of the same script on the same server.
//!
//! `cargo bench --bench ratelimit`

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use governor::{Quota, RateLimiter};
use http::{Request, Response};
use tower::{Layer, Service};
use tower_ai::core::key::{ClientKey, PeerIp};
use tower_ai::core::redis::{ConnectOptions, Degrade, DegradeConfig, connect};
use tower_ai::ratelimit::{Limiter, MemoryStore, Policy, Rate, RateLimitLayer, RedisStore};

#[path = "support/ratio.rs"]
mod ratio;

const KEYS: usize = 1_024;

fn ips() -> Vec<IpAddr> {
    (0..KEYS)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8)))
        .collect()
}

/// A quota no benchmark exhausts.
fn generous() -> Policy {
    Policy::token_bucket(1_000_000_000, Rate::per_second(1_000_000_000.0)).named("bench")
}

fn keyed_check(c: &mut Criterion) {
    let ips = ips();
    let keys: Vec<ClientKey> = ips.iter().map(|ip| ClientKey::ip(*ip)).collect();
    let governor = RateLimiter::keyed(Quota::per_second(
        NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MIN),
    ));
    let ours = Limiter::memory([generous()], MemoryStore::new()).expect("a valid policy");

    let mut group = c.benchmark_group("keyed check (1,024 keys)");
    group.bench_function("governor keyed", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(governor.check_key(&ips[i]).is_ok())
        })
    });
    group.bench_function("tower-ai memory", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(ours.check_now(&keys[i], 1).is_some_and(|v| v.allowed()))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("keyed check (1 key)");
    group.bench_function("governor keyed", |b| {
        b.iter(|| black_box(governor.check_key(&ips[0]).is_ok()))
    });
    group.bench_function("tower-ai memory", |b| {
        b.iter(|| black_box(ours.check_now(&keys[0], 1).is_some_and(|v| v.allowed())))
    });
    group.finish();
    for group in ["keyed check (1,024 keys)", "keyed check (1 key)"] {
        ratio::time_ratio(group, "tower-ai memory", "governor keyed", "≤ 1.0×");
    }
}

async fn hello(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::empty()))
}

/// Drives one request through `svc`, which answers at once.
fn one<S>(svc: &mut S, peer: SocketAddr) -> bool
where
    S: Service<Request<Body>>,
{
    let mut req = Request::new(Body::empty());
    req.extensions_mut().insert(peer);
    let ready = std::future::poll_fn(|cx| match svc.poll_ready(cx) {
        Poll::Ready(r) => Poll::Ready(r.is_ok()),
        Poll::Pending => Poll::Pending,
    })
    .now_or_never();
    ready == Some(true) && svc.call(req).now_or_never().is_some()
}

fn layer_by_ip(c: &mut Criterion) {
    let peers: Vec<SocketAddr> = ips()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 40_000))
        .collect();
    let mut bare = tower::service_fn(hello);
    let governor_config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1_000)
        .burst_size(1_000)
        .use_headers()
        .finish()
        .expect("a valid governor config");
    let mut governed = tower_governor::GovernorLayer::new(Arc::new(governor_config))
        .layer(tower::service_fn(hello));
    // A realistic capacity (headers carry three-digit numbers), refilled far
    // faster than 1,024 rotating clients can spend it.
    let mut ours = RateLimitLayer::builder()
        .key(PeerIp::new())
        .policy(Policy::token_bucket(1_000, Rate::per_second(1_000_000.0)).named("bench"))
        .build()
        .expect("a valid layer")
        .layer(tower::service_fn(hello));

    let mut group = c.benchmark_group("one request by peer IP");
    group.bench_function("bare service", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(one(&mut bare, peers[i]))
        })
    });
    group.bench_function("tower_governor layer", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(one(&mut governed, peers[i]))
        })
    });
    group.bench_function("tower-ai layer", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(one(&mut ours, peers[i]))
        })
    });
    group.finish();
    ratio::added(
        "one request by peer IP",
        "bare service",
        "tower-ai layer",
        Some("tower_governor layer"),
        "≤ tower_governor's added cost",
    );
}

const CALLERS: u64 = 32;

/// Runs `iters` calls of `check` spread over 32 concurrent tasks.
async fn concurrently<F, Fut>(iters: u64, check: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = iters.div_ceil(CALLERS);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|t| {
            let check = check.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    check(t).await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    started.elapsed()
}

fn redis_32_callers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = test_support::RedisServer::start();
    let client = runtime
        .block_on(connect(&[server.url()], &ConnectOptions::default()))
        .expect("connected");
    let store = RedisStore::builder(client.clone())
        .prefix("bench")
        .degrade(Degrade::new(
            "ratelimit",
            DegradeConfig::default().timeout(Duration::from_secs(5)),
        ))
        .build();
    let ours = Limiter::redis([generous()], store).expect("a valid policy");
    let leased = Limiter::redis(
        [generous()],
        RedisStore::builder(client.clone())
            .prefix("bench-lease")
            .degrade(Degrade::new(
                "ratelimit",
                DegradeConfig::default().timeout(Duration::from_secs(5)),
            ))
            .lease(100, Duration::from_secs(10))
            .build(),
    )
    .expect("a valid policy");
    let keys: Arc<Vec<ClientKey>> = Arc::new(
        (0..CALLERS)
            .map(|i| ClientKey::digest("bench", i.to_string()))
            .collect(),
    );
    // The same script, called as a user of fred would without the layer.
    let script = tower_ai::core::redis::Script::new(include_str!(
        "../crates/tower-ai-ratelimit/src/store/check.lua"
    ));

    let mut group = c.benchmark_group("Redis checks, 32 concurrent callers");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("raw EVALSHA loop", |b| {
        b.iter_custom(|iters| {
            let client = client.clone();
            let script = script.clone();
            runtime.block_on(concurrently(iters, move |t| {
                let client = client.clone();
                let script = script.clone();
                async move {
                    let key = format!("bench:raw:{{{t}}}:p");
                    let args: Vec<fred::types::Value> = vec![
                        "n".into(),
                        1.into(),
                        1.into(),
                        1_000_000_000i64.into(),
                        fred::types::Value::Double(0.001),
                        1.into(),
                    ];
                    let _: Result<Vec<i64>, _> = script.call(&client, key, args).await;
                }
            }))
        })
    });
    group.bench_function("tower-ai Redis store", |b| {
        b.iter_custom(|iters| {
            let ours = ours.clone();
            let keys = keys.clone();
            runtime.block_on(concurrently(iters, move |t| {
                let ours = ours.clone();
                let keys = keys.clone();
                async move {
                    black_box(ours.check(&keys[t as usize], 1).await.allowed());
                }
            }))
        })
    });
    group.bench_function("tower-ai Redis store + leases of 100", |b| {
        b.iter_custom(|iters| {
            let leased = leased.clone();
            let keys = keys.clone();
            runtime.block_on(concurrently(iters, move |t| {
                let leased = leased.clone();
                let keys = keys.clone();
                async move {
                    black_box(leased.check(&keys[t as usize], 1).await.allowed());
                }
            }))
        })
    });
    group.finish();
    let group = "Redis checks, 32 concurrent callers";
    ratio::time_ratio(
        group,
        "tower-ai Redis store",
        "raw EVALSHA loop",
        "≤ 1.11× the time, i.e. ≥ 0.9× the throughput",
    );
    ratio::time_ratio(
        group,
        "tower-ai Redis store + leases of 100",
        "raw EVALSHA loop",
        "≤ 0.2× the time, i.e. ≥ 5× the throughput",
    );
}

criterion_group!(benches, keyed_check, layer_by_ip, redis_32_callers);
criterion_main!(benches);
