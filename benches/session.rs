//! The session layer beside its peers, in one run, over real loopback HTTP:
//! axum servers started here, keep-alive connections.
//!
//! - A route that reads and writes one session field (a counter): our Redis
//!   store (one `fred` client, and a pool of 6) beside `tower-sessions` +
//!   `tower-sessions-redis-store` (a `fred` pool of 6, as its docs suggest)
//!   on the same Redis.
//! - The same route on our memory store beside `tower-sessions`' memory
//!   store and beside the same route with no session at all ("plain").
//! - A route that never touches the session, with our layer (memory and
//!   Redis) beside no session layer.
//!
//! Each comparison runs one request at a time (latency) and with 32
//! connections (throughput: criterion's `thrpt` is requests per second).
//! The load generator is a minimal HTTP/1.1 keep-alive client (like `wrk`,
//! a few µs per request), so the figures measure the servers rather than the
//! client. `reqwest` only sets up the sessions.
//!
//! Because the machine is shared and noisy, the run ends with an
//! interleaved throughput table: several rounds, each running every server
//! in turn for a short burst; the medians and the median of the per-round
//! ratios are printed. Those ratios are the figures to quote.
//!
//! `cargo bench --bench session --features tower-session/redis`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::{Extension, Router};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fred::interfaces::ClientLike;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_ai::core::redis::{ConnectOptions, connect};
use tower_ai::session::{MemoryStore, RedisStore, Session, SessionLayer};

const CONNECTIONS: usize = 32;

/// Reads the counter and writes it back plus one: one field read and
/// written per request.
async fn ours_rw(Extension(session): Extension<Session>) -> String {
    let n: u64 = session.get("n").await.ok().flatten().unwrap_or(0);
    session.insert("n", n + 1).ok();
    (n + 1).to_string()
}

async fn peer_rw(session: tower_sessions::Session) -> String {
    let n: u64 = session.get("n").await.ok().flatten().unwrap_or(0);
    session.insert("n", n + 1).await.ok();
    (n + 1).to_string()
}

/// The read-write route without a session: the same kind of body.
async fn plain_rw() -> String {
    "1".to_owned()
}

async fn hello() -> &'static str {
    "hello"
}

fn ours(layer: SessionLayer) -> Router {
    Router::new()
        .route("/rw", post(ours_rw))
        .route("/hello", get(hello))
        .layer(layer)
}

fn peer<S>(store: S) -> Router
where
    S: tower_sessions::SessionStore + Clone,
{
    let layer = tower_sessions::SessionManagerLayer::new(store)
        .with_secure(false)
        .with_expiry(tower_sessions::Expiry::OnInactivity(
            tower_sessions::cookie::time::Duration::minutes(30),
        ));
    Router::new()
        .route("/rw", post(peer_rw))
        .route("/hello", get(hello))
        .layer(layer)
}

fn plain() -> Router {
    Router::new()
        .route("/rw", post(plain_rw))
        .route("/hello", get(hello))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A server, and the bytes of the request to send it (with the cookie of
/// one session made beforehand).
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    request: Arc<[u8]>,
}

impl Target {
    async fn new(http: &reqwest::Client, addr: SocketAddr, path: &str, session: bool) -> Self {
        let mut cookie = String::new();
        if session {
            let res = http
                .post(format!("http://{addr}/rw"))
                .send()
                .await
                .expect("the server answers");
            let set = res
                .headers()
                .get("set-cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .unwrap_or_else(|| panic!("{addr} set no cookie"));
            cookie = format!("cookie: {set}\r\n");
        }
        let method = if path == "/rw" { "POST" } else { "GET" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{cookie}content-length: 0\r\n\r\n"
        );
        Self {
            addr,
            request: request.into_bytes().into(),
        }
    }

    async fn connect(&self) -> Conn {
        let stream = TcpStream::connect(self.addr).await.expect("connected");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
            request: Arc::clone(&self.request),
        }
    }
}

/// One keep-alive HTTP/1.1 connection that sends the same request again and
/// again and reads `Content-Length` bodies.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    request: Arc<[u8]>,
}

impl Conn {
    async fn hit(&mut self) {
        self.stream
            .write_all(&self.request)
            .await
            .expect("request sent");
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 2048];
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(head_end) = find(&self.buf, b"\r\n\r\n") {
                let head = &self.buf[..head_end];
                assert!(
                    head.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(head)
                );
                let len = content_length(head);
                if self.buf.len() >= head_end + 4 + len {
                    return;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// `requests` requests over `CONNECTIONS` connections (opened before the
/// clock starts); the elapsed time.
async fn burst(target: &Target, requests: u64) -> Duration {
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        conns.push(target.connect().await);
    }
    let per_conn = requests.div_ceil(CONNECTIONS as u64).max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        tasks.spawn(async move {
            for _ in 0..per_conn {
                conn.hit().await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    started
        .elapsed()
        .mul_f64(requests as f64 / (per_conn * CONNECTIONS as u64) as f64)
}

/// Requests per second over `CONNECTIONS` connections during `time`.
async fn rate(target: &Target, time: Duration) -> f64 {
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        conns.push(target.connect().await);
    }
    let started = Instant::now();
    let until = started + time;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                conn.hit().await;
                done += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    _redis: test_support::RedisServer,
    plain_rw: Target,
    plain_hello: Target,
    ours_memory_rw: Target,
    ours_memory_hello: Target,
    ours_redis_rw: Target,
    ours_redis_hello: Target,
    ours_pool_rw: Target,
    peer_memory_rw: Target,
    peer_redis_rw: Target,
}

async fn pool(url: &str) -> fred::clients::Pool {
    let config = fred::types::config::Config::from_url(url).expect("a URL");
    let pool = fred::clients::Pool::new(config, None, None, None, 6).expect("a pool");
    pool.init().await.expect("the pool connects");
    pool
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let redis = test_support::RedisServer::start();
    let url = redis.url();
    let targets = rt.block_on(async {
        let http = reqwest::Client::new();
        let client = connect(&[url.as_str()], &ConnectOptions::default())
            .await
            .expect("Redis");
        let ours_redis = RedisStore::builder(client).prefix("bench").build();
        let ours_pool = RedisStore::builder(pool(&url).await)
            .prefix("bench-pool")
            .build();
        let peer_redis = tower_sessions_redis_store::RedisStore::new(pool(&url).await);

        let plain = serve(plain()).await;
        let ours_memory = serve(ours(SessionLayer::new(MemoryStore::new()))).await;
        let ours_redis = serve(ours(SessionLayer::new(ours_redis))).await;
        let ours_pool = serve(ours(SessionLayer::new(ours_pool))).await;
        let peer_memory = serve(peer(tower_sessions::MemoryStore::default())).await;
        let peer_redis = serve(peer(peer_redis)).await;
        [
            Target::new(&http, plain, "/rw", false).await,
            Target::new(&http, plain, "/hello", false).await,
            Target::new(&http, ours_memory, "/rw", true).await,
            Target::new(&http, ours_memory, "/hello", true).await,
            Target::new(&http, ours_redis, "/rw", true).await,
            Target::new(&http, ours_redis, "/hello", true).await,
            Target::new(&http, ours_pool, "/rw", true).await,
            Target::new(&http, peer_memory, "/rw", true).await,
            Target::new(&http, peer_redis, "/rw", true).await,
        ]
    });
    let [
        plain_rw,
        plain_hello,
        ours_memory_rw,
        ours_memory_hello,
        ours_redis_rw,
        ours_redis_hello,
        ours_pool_rw,
        peer_memory_rw,
        peer_redis_rw,
    ] = targets;
    Setup {
        rt,
        _redis: redis,
        plain_rw,
        plain_hello,
        ours_memory_rw,
        ours_memory_hello,
        ours_redis_rw,
        ours_redis_hello,
        ours_pool_rw,
        peer_memory_rw,
        peer_redis_rw,
    }
}

fn compare(c: &mut Criterion, s: &Setup, group: &str, targets: &[(&str, &Target)]) {
    let mut g = c.benchmark_group(format!("{group} (1 at a time)"));
    g.throughput(Throughput::Elements(1));
    for (name, target) in targets {
        let mut conn = s.rt.block_on(target.connect());
        g.bench_function(*name, |b| b.iter(|| s.rt.block_on(conn.hit())));
    }
    g.finish();

    let mut g = c.benchmark_group(format!("{group} ({CONNECTIONS} connections)"));
    g.throughput(Throughput::Elements(1));
    for (name, target) in targets {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| s.rt.block_on(burst(target, iters)))
        });
    }
    g.finish();
}

/// Rounds of short bursts, every target in turn (the order rotating), so
/// drift on a shared machine hits all of them alike. Prints the median
/// requests per second of each and the median per-round ratio of each to
/// the first (the baseline).
fn interleaved(s: &Setup, title: &str, targets: &[(&str, &Target)], rounds: usize) {
    let mut rates = vec![Vec::with_capacity(rounds); targets.len()];
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let r =
                s.rt.block_on(rate(targets[i].1, Duration::from_millis(400)));
            rates[i].push(r);
        }
    }
    println!("\n{title}: {CONNECTIONS} connections, {rounds} interleaved rounds of 400 ms");
    for (i, (name, _)) in targets.iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds).map(|r| rates[i][r] / rates[0][r]).collect();
        println!(
            "  {name:<34} median {:>8.0} req/s   ×{:.2} {}",
            median(&rates[i]),
            median(&ratios),
            targets[0].0,
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sessions(c: &mut Criterion) {
    let s = setup();
    let redis = [
        ("tower-sessions-redis-store", &s.peer_redis_rw),
        ("tower-ai RedisStore", &s.ours_redis_rw),
        ("tower-ai RedisStore, pool of 6", &s.ours_pool_rw),
        ("plain", &s.plain_rw),
    ];
    let memory = [
        ("plain", &s.plain_rw),
        ("tower-ai MemoryStore", &s.ours_memory_rw),
        ("tower-sessions MemoryStore", &s.peer_memory_rw),
    ];
    let untouched = [
        ("no session layer", &s.plain_hello),
        ("tower-ai layer, memory", &s.ours_memory_hello),
        ("tower-ai layer, Redis", &s.ours_redis_hello),
    ];
    compare(c, &s, "read+write one field, Redis", &redis);
    compare(c, &s, "read+write one field, memory", &memory);
    compare(c, &s, "route never touching the session", &untouched);

    interleaved(&s, "read+write one field, Redis", &redis, 9);
    interleaved(&s, "read+write one field, memory", &memory, 9);
    interleaved(&s, "route never touching the session", &untouched, 9);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sessions
}
criterion_main!(benches);
