//! Pull mode against push balancing over a simulated fleet near
//! saturation: does one global FIFO queue, from which each endpoint takes a
//! request only when it can start it, narrow the time-to-first-token tail?
//!
//! Four simulated inference servers (`mock_llm::fleet::SimServer`, as in
//! `benches/balance.rs`: 64 slots, 4,000 KV blocks of 16 tokens, vLLM's
//! costs for an 8B model on one A100) run in real time, because pull mode
//! goes through a real Redis (started here;
//! `redis-server` must be on `PATH`). Arrivals are open-loop (Poisson,
//! seeded) of unique prompts with heavy-tailed sizes: prompts of 200 to
//! 6,000 tokens and answers of 16 to 512, both bounded Pareto (α = 0.5:
//! medians 570 and 46, means 1,100 and 90), so that a long prefill holds
//! up whatever waits behind it.
//!
//! Each seed first measures the fleet's capacity for its mix (requests/s
//! with every server kept saturated, straight to the servers), then sends
//! the same arrivals at 90% and 95% of it through each policy:
//! `tower-ai-balance`'s least loaded and cache aware (max concurrency out
//! of the way), `tower::balance::p2c` over `PendingRequests`, and pull mode
//! (a `PullQueue` per run, one `Puller` a server with 64 slots): plain,
//! and with `max_starting_tokens` of 2,048 and 4,096.
//!
//! ```sh
//! cargo bench --bench pull             # 3 seeds, medians (~30 min)
//! cargo bench --bench pull -- --quick  # one seed (~10 min)
//! PULL_BENCH_SCALE=0.1 cargo bench --bench pull  # every cost ten times shorter
//! ```
//!
//! With `PULL_BENCH_SCALE=0.1` a run takes a tenth of the time, but Redis's
//! own latency doesn't scale: a pulled request's round trips then weigh ten
//! times more against its prefill than against a real fleet's.
//!
//! Reported per load and policy, medians over the seeds:
//!
//! - time to first token p50/p90/p99, from sending (push) or submitting
//!   (pull) to the first body byte;
//! - where it went, p99: before the server (until the server is called: a
//!   pull request's wait in Redis and its claim) and in the server (its
//!   queue and prefill, to the first token);
//! - the relay, p50 and p99: from the first token leaving the server to the
//!   client (zero for push; a pull answer's Redis write and read);
//! - idle TTFT: a lone small request on the idle fleet, the policy's own
//!   latency;
//! - timer lag p99: how late a 1 ms timer fires during the run, the delay
//!   any task sees (the bench's own work, or other processes: a run with a
//!   lag of several milliseconds was starved of CPU);
//! - output tokens/s over the time from the first arrival to the last
//!   answer's end, and the requests answered in full (every one must be).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use mock_llm::fleet::{Costs, Generation, SimConfig, SimEvent, SimServer};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};
use tower_ai_balance::pull::{PullQueue, Puller, PullerHandle};
use tower_ai_balance::{BalanceLayer, Endpoint, Pool, Strategy};
use tower_ai_core::redis::{ConnectOptions, Degrade, DegradeConfig};

const SERVERS: usize = 4;
const SLOTS: usize = 64;
const KV_BLOCKS: usize = 4_000;
/// Every server cost and every arrival gap, against an A100: the
/// calibrated costs themselves (a decode step is 12 ms + 0.1 ms a
/// sequence, a 1,000-token prefill 100 ms), as Redis's round trips weigh
/// against a real fleet's.
const SCALE: f64 = 1.0;

/// The cost scale of this run: [`SCALE`], or `PULL_BENCH_SCALE`.
fn scale() -> f64 {
    std::env::var("PULL_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(SCALE)
}

/// Requests of a run.
const REQUESTS: usize = 600;
/// Fractions of the measured capacity.
const LOADS: [f64; 2] = [0.90, 0.95];
/// Requests kept outstanding on each server while measuring capacity: more
/// than its slots, so it never runs short of work.
const SATURATING_DEPTH: usize = 96;

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A bounded Pareto draw in `[low, high]` with shape `alpha`.
    fn pareto(&mut self, low: f64, high: f64, alpha: f64) -> u32 {
        let tail = (low / high).powf(alpha);
        let x = low / (1.0 - self.unit() * (1.0 - tail)).powf(1.0 / alpha);
        x.clamp(low, high).round() as u32
    }

    /// `tokens` tokens of text (4 bytes each) unique to `tag`.
    fn text(&mut self, tag: &str, tokens: usize) -> String {
        let mut out = String::with_capacity(tokens * 4 + tag.len());
        out.push_str(tag);
        while out.len() < tokens * 4 {
            out.push_str(&format!(" {:03x}", self.below(4096)));
        }
        out
    }
}

/// One request: its JSON body and the answer's length.
#[derive(Clone)]
struct Call {
    body: Bytes,
    max_tokens: u32,
}

/// A request's JSON body; `number` (in `metadata`) lets the simulated
/// server stamp when it got the request and when its first token left.
fn body(prompt: &str, max_tokens: u32, number: Option<usize>) -> Bytes {
    let body = serde_json::json!({
        "model": "m",
        "stream": true,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
        "metadata": {"request": number},
    });
    Bytes::from(body.to_string())
}

struct Workload {
    calls: Arc<[Call]>,
    /// Arrival instants for one request a second; a run divides them by its
    /// rate, so every load sees the same sequence, compressed.
    unit_arrivals: Vec<f64>,
}

fn workload(seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let mut at = 0.0;
    let mut unit_arrivals = Vec::with_capacity(REQUESTS);
    let calls = (0..REQUESTS)
        .map(|i| {
            at += -(1.0 - rng.unit()).ln();
            unit_arrivals.push(at);
            let prompt_tokens = rng.pareto(200.0, 6_000.0, 0.5);
            let max_tokens = rng.pareto(16.0, 512.0, 0.5);
            let prompt = rng.text(&format!("prompt {seed}.{i}:"), prompt_tokens as usize);
            Call {
                body: body(&prompt, max_tokens, Some(i)),
                max_tokens,
            }
        })
        .collect();
    Workload {
        calls,
        unit_arrivals,
    }
}

/// A simulated answer's body. Each frame carries every token generated since
/// the last poll, as an upstream's socket hands a slow reader the events
/// that piled up; a puller whose Redis writes lag thus writes fewer, larger
/// chunks instead of falling further behind.
struct Tokens {
    generation: Generation,
    ended: bool,
    /// Where to stamp the first token, and the request's number.
    first: Option<(Arc<Stamps>, usize)>,
}

impl http_body::Body for Tokens {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut tokens = 0;
        while !self.ended {
            match Pin::new(&mut self.generation).poll_next(cx) {
                Poll::Ready(Some(SimEvent::Token)) => tokens += 1,
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => break,
            }
        }
        if tokens > 0 {
            if let Some((stamps, number)) = self.first.take() {
                stamps.stamp(number, |s| s.first_token = Some(Instant::now()));
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b't'; tokens])))))
        } else if self.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// When a measured request reached its server (the service was called)
/// and when its first token left it (its body yielded it): what lies
/// before the server, and what lies between the server and the client.
#[derive(Debug, Clone, Copy, Default)]
struct Stamp {
    called: Option<Instant>,
    first_token: Option<Instant>,
}

#[derive(Debug, Default)]
struct Stamps(std::sync::Mutex<HashMap<usize, Stamp>>);

impl Stamps {
    fn stamp(&self, number: usize, f: impl FnOnce(&mut Stamp)) {
        f(self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(number)
            .or_default());
    }

    fn get(&self, number: usize) -> Stamp {
        let stamps = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        stamps.get(&number).copied().unwrap_or_default()
    }
}

/// A simulated server as a tower service: `fixed` for one server (p2c's
/// endpoints, a puller's upstream), else the server the balancer picked.
#[derive(Clone)]
struct Sim {
    servers: Arc<[SimServer]>,
    fixed: Option<usize>,
    stamps: Arc<Stamps>,
}

impl Service<Request<Full<Bytes>>> for Sim {
    type Response = Response<Tokens>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let index = self.fixed.unwrap_or_else(|| {
            req.extensions()
                .get::<Endpoint<usize>>()
                .map_or(0, |e| *e.target())
        });
        let server = self.servers[index].clone();
        let stamps = Arc::clone(&self.stamps);
        let called = Instant::now();
        Box::pin(async move {
            let bytes = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let prompt: Vec<&str> = value["messages"]
                .as_array()
                .map(|m| m.iter().filter_map(|m| m["content"].as_str()).collect())
                .unwrap_or_default();
            let max_tokens = value["max_tokens"].as_u64().unwrap_or(64) as u32;
            let number = value["metadata"]["request"].as_u64().map(|n| n as usize);
            if let Some(number) = number {
                stamps.stamp(number, |s| s.called = Some(called));
            }
            // The head goes out at once, as a streaming server's does; the
            // tokens follow.
            Ok(Response::new(Tokens {
                generation: server.generate(&prompt.join("\n"), max_tokens),
                ended: false,
                first: number.map(|n| (stamps, n)),
            }))
        })
    }
}

fn fleet() -> Arc<[SimServer]> {
    (0..SERVERS)
        .map(|_| {
            SimServer::spawn(SimConfig {
                slots: SLOTS,
                kv_blocks: KV_BLOCKS,
                costs: Costs::default().scaled(scale()),
                ..SimConfig::default()
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    LeastLoaded,
    CacheAware,
    P2c,
    /// Pull mode: this many slots a puller, and at most `starting` of its
    /// requests' prompt tokens without a first token
    /// (`Puller::max_starting_tokens`).
    Pull {
        slots: u32,
        starting: Option<u64>,
    },
}

impl Policy {
    fn name(self) -> String {
        match self {
            Self::LeastLoaded => "least loaded (push)".into(),
            Self::CacheAware => "cache aware (push)".into(),
            Self::P2c => "p2c (tower, push)".into(),
            Self::Pull {
                slots,
                starting: None,
            } => format!("pull, {slots} slots"),
            Self::Pull {
                slots,
                starting: Some(n),
            } => format!("pull, {slots} slots, {n} tokens starting"),
        }
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
type Boxed = tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<BoxBody>, BoxError>;

/// A push balancer in front of the fleet.
fn push(policy: Policy, servers: &Arc<[SimServer]>, stamps: &Arc<Stamps>) -> Boxed {
    let strategy = match policy {
        Policy::LeastLoaded => Strategy::LeastLoaded,
        Policy::CacheAware => Strategy::cache_aware(),
        _ => {
            // tower's p2c over PendingRequests: a pick in poll_ready, load
            // counted until the response head.
            let endpoints: Vec<_> = (0..SERVERS)
                .map(|i| {
                    tower::load::PendingRequests::new(
                        Sim {
                            servers: Arc::clone(servers),
                            fixed: Some(i),
                            stamps: Arc::clone(stamps),
                        },
                        tower::load::CompleteOnResponse::default(),
                    )
                })
                .collect();
            let p2c =
                tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(endpoints));
            let buffered =
                tower::buffer::Buffer::new(p2c, 4_096).map_response(|res: Response<Tokens>| {
                    res.map(|b| BodyExt::boxed_unsync(b.map_err(Into::into)))
                });
            return tower::util::BoxCloneSyncService::new(buffered);
        }
    };
    let pool = Pool::builder("m")
        .strategy(strategy)
        .endpoints(
            (0..SERVERS).map(|i| Endpoint::new(format!("sim-{i}"), i).max_concurrency(4_096)),
        )
        .queue_timeout(Duration::from_secs(3_600))
        .build()
        .expect("a pool");
    let service = tower::Layer::layer(
        &BalanceLayer::new(pool),
        Sim {
            servers: Arc::clone(servers),
            fixed: None,
            stamps: Arc::clone(stamps),
        },
    );
    tower::util::BoxCloneSyncService::new(
        service
            .map_response(|res| res.map(|b| BodyExt::boxed_unsync(b.map_err(Into::into))))
            .map_err(|never: Infallible| -> BoxError { match never {} }),
    )
}

/// A pull queue of its own (keys under `prefix`) and one puller a server.
async fn pull(
    redis: &str,
    prefix: String,
    slots: u32,
    starting: Option<u64>,
    servers: &Arc<[SimServer]>,
    stamps: &Arc<Stamps>,
) -> (PullQueue, Vec<PullerHandle>) {
    let client = tower_ai_core::redis::connect(&[redis], &ConnectOptions::default())
        .await
        .expect("Redis");
    // A slow Redis should show as latency here, not as a queue that
    // refuses requests after one call past the 50 ms default.
    let degrade = Degrade::new(
        "bench-pull",
        DegradeConfig::default().timeout(Duration::from_secs(5)),
    );
    let queue = PullQueue::builder(client, "m")
        .prefix(prefix)
        .degrade(degrade)
        // Enough for every ticket being read at the peak: past it, tickets
        // poll every 20 ms, which would be most of a TTFT here.
        .blocking_connections(1_024)
        .build();
    let pullers = (0..SERVERS)
        .map(|i| {
            let sim = Sim {
                servers: Arc::clone(servers),
                fixed: Some(i),
                stamps: Arc::clone(stamps),
            };
            let puller = Puller::new(queue.clone(), format!("sim-{i}"), slots, sim);
            match starting {
                Some(n) => puller.max_starting_tokens(n).spawn(),
                None => puller.spawn(),
            }
        })
        .collect();
    (queue, pullers)
}

#[derive(Clone)]
enum Client {
    Push(Boxed),
    Pull(PullQueue),
}

impl Client {
    /// Sends one request and reads its answer to the end: when it was
    /// sent, when its first token came, and its tokens.
    async fn send(&self, body: Bytes) -> Result<(Instant, Instant, u64), String> {
        let sent = Instant::now();
        match self {
            Self::Push(service) => {
                let res = service
                    .clone()
                    .oneshot(Request::new(Full::new(body)))
                    .await
                    .map_err(|e| e.to_string())?;
                read(res.into_body(), sent).await
            }
            Self::Pull(queue) => {
                let req = Request::post("/v1/chat/completions")
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .map_err(|e| e.to_string())?;
                let ticket = queue.submit(req).await.map_err(|e| e.to_string())?;
                let res = ticket.response().await.map_err(|e| e.to_string())?;
                read(res.into_body(), sent).await
            }
        }
    }
}

async fn read<B>(mut body: B, sent: Instant) -> Result<(Instant, Instant, u64), String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut first = None;
    let mut tokens = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
            first.get_or_insert_with(Instant::now);
            tokens += data.len() as u64;
        }
    }
    first
        .map(|first| (sent, first, tokens))
        .ok_or_else(|| "an empty answer".to_owned())
}

/// The median time to first token of 20 small requests sent one at a time
/// to the idle fleet.
async fn idle_ttft(client: &Client) -> Duration {
    let mut samples = Vec::new();
    for i in 0..20 {
        let (sent, first, _) = client
            .send(body(&format!("idle probe {i}, a small prompt"), 1, None))
            .await
            .expect("an answer to the probe");
        samples.push(first - sent);
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// Small requests at once, so that what a long-running gateway has open (a
/// pull queue's connections for reading answers) is open before measuring.
async fn warm_up(client: &Client) {
    let tasks: Vec<_> = (0..384)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send(body(&format!("warm-up {i}, a small prompt"), 1, None))
                    .await
                    .expect("an answer to the warm-up");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a warm-up task");
    }
}

/// What one run measured; times in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Outcome {
    ttft: [f64; 3],
    /// From sending or submitting to the server getting the request, p99.
    before_server: f64,
    /// From the server getting the request to its first token, p99.
    in_server: f64,
    /// From the first token leaving the server to the client getting it,
    /// p50 and p99.
    relay: [f64; 2],
    idle_ttft: f64,
    /// How late a 1 ms timer fires, p99: the runtime's own delay for any
    /// task (the bench's work, and other processes on the machine).
    lag: f64,
    tokens_per_s: f64,
    completed: usize,
}

/// How late each of a series of 1 ms sleeps ends, in milliseconds, while
/// `running`.
async fn timer_lag(running: Arc<AtomicBool>) -> Vec<f64> {
    let mut lag = Vec::new();
    while running.load(Ordering::Relaxed) {
        let asleep = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let late = asleep.elapsed().saturating_sub(Duration::from_millis(1));
        lag.push(late.as_secs_f64() * 1e3);
    }
    lag
}

fn percentiles<const N: usize>(mut values: Vec<f64>, ps: [f64; N]) -> [f64; N] {
    values.sort_by(f64::total_cmp);
    ps.map(|p| values[((values.len() - 1) as f64 * p).round() as usize])
}

/// Sends `workload` at `rate` requests a second through `policy`, on a
/// fresh fleet (and a fresh pull queue, its keys under a prefix of its own,
/// `tag`).
fn run(redis: &str, workload: &Workload, rate: f64, policy: Policy, tag: usize) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let outcome = runtime.block_on(async {
        let servers = fleet();
        let stamps = Arc::new(Stamps::default());
        let (client, _pullers) = match policy {
            Policy::Pull { slots, starting } => {
                let prefix = format!("bench-pull-{}-{tag}", std::process::id());
                let (queue, pullers) =
                    pull(redis, prefix, slots, starting, &servers, &stamps).await;
                (Client::Pull(queue), pullers)
            }
            _ => (Client::Push(push(policy, &servers, &stamps)), Vec::new()),
        };
        let idle = idle_ttft(&client).await;
        warm_up(&client).await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        let start = Instant::now();
        let running = Arc::new(AtomicBool::new(true));
        let lag = tokio::spawn(timer_lag(Arc::clone(&running)));
        let tasks: Vec<_> = workload
            .calls
            .iter()
            .zip(&workload.unit_arrivals)
            .map(|(call, unit)| {
                let client = client.clone();
                let call = call.clone();
                let at = start + Duration::from_secs_f64(unit / rate);
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let answer = client.send(call.body).await;
                    let answer = answer.and_then(|(sent, first, tokens)| {
                        if tokens == u64::from(call.max_tokens) {
                            Ok((sent, first, tokens))
                        } else {
                            Err(format!("{tokens} tokens of {}", call.max_tokens))
                        }
                    });
                    (answer, Instant::now())
                })
            })
            .collect();
        let mut ttfts = Vec::with_capacity(tasks.len());
        let mut before_server = Vec::with_capacity(tasks.len());
        let mut in_server = Vec::with_capacity(tasks.len());
        let mut relay = Vec::with_capacity(tasks.len());
        let mut tokens = 0;
        let mut end = start;
        let mut errors = Vec::new();
        for (number, task) in tasks.into_iter().enumerate() {
            let (answer, done) = task.await.expect("a request task");
            match answer {
                Ok((sent, first, n)) => {
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    ttfts.push(ms(first - sent));
                    let stamp = stamps.get(number);
                    let called = stamp.called.expect("the server's stamp");
                    let first_token = stamp.first_token.expect("the first token's stamp");
                    before_server.push(ms(called.saturating_duration_since(sent)));
                    in_server.push(ms(first_token.saturating_duration_since(called)));
                    relay.push(ms(first.saturating_duration_since(first_token)));
                    tokens += n;
                    end = end.max(done);
                }
                Err(e) => errors.push(e),
            }
        }
        running.store(false, Ordering::Relaxed);
        let lag = lag.await.expect("the lag probe");
        assert_eq!(
            ttfts.len(),
            workload.calls.len(),
            "{}: every request must be answered in full; {} weren't, the first: {:?}",
            policy.name(),
            errors.len(),
            errors.first()
        );
        let first_arrival = Duration::from_secs_f64(workload.unit_arrivals[0] / rate);
        Outcome {
            completed: ttfts.len(),
            ttft: percentiles(ttfts, [0.5, 0.9, 0.99]),
            before_server: percentiles(before_server, [0.99])[0],
            in_server: percentiles(in_server, [0.99])[0],
            relay: percentiles(relay, [0.5, 0.99]),
            idle_ttft: idle.as_secs_f64() * 1e3,
            lag: percentiles(lag, [0.99])[0],
            tokens_per_s: tokens as f64 / (end - start - first_arrival).as_secs_f64(),
        }
    });
    // Tickets' readers and blocked connections may still be winding down.
    runtime.shutdown_background();
    outcome
}

/// The fleet's capacity for `workload`'s mix: requests and output tokens a
/// second while every server is kept saturated, sent straight to the
/// servers (no balancer, no Redis).
///
/// Each server has `SATURATING_DEPTH` requests outstanding; each one that
/// ends is replaced by the next of the workload, cycled. The window runs
/// from the take of request `REQUESTS` (one pass in, past the start-up) to
/// that of request `2 × REQUESTS`: in a closed loop a take is a completion,
/// so exactly one whole pass of the mix completes in it, and a heavy or
/// light stretch of the list can't bias the rate.
fn capacity(workload: &Workload) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let measured = runtime.block_on(async {
        let servers = fleet();
        let next = Arc::new(AtomicUsize::new(0));
        let marks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = Arc::new(tokio::sync::Notify::new());
        let pass = workload.calls.len();
        for i in 0..SERVERS {
            for _ in 0..SATURATING_DEPTH {
                let sim = Sim {
                    servers: Arc::clone(&servers),
                    fixed: Some(i),
                    stamps: Arc::default(),
                };
                let calls = Arc::clone(&workload.calls);
                let (next, marks, done) =
                    (Arc::clone(&next), Arc::clone(&marks), Arc::clone(&done));
                tokio::spawn(async move {
                    loop {
                        let taken = next.fetch_add(1, Ordering::Relaxed);
                        if taken == pass || taken == 2 * pass {
                            let generated: u64 = sim
                                .servers
                                .iter()
                                .map(|s| s.metrics().generated_tokens_total)
                                .sum();
                            let mut marks = marks.lock().expect("the marks");
                            marks.push((Instant::now(), generated));
                            if marks.len() == 2 {
                                done.notify_one();
                                return;
                            }
                        }
                        let call = &calls[taken % calls.len()];
                        let res = sim
                            .clone()
                            .oneshot(Request::new(Full::new(call.body.clone())));
                        let Ok(res) = res.await;
                        read(res.into_body(), Instant::now())
                            .await
                            .expect("a saturating request's answer");
                    }
                });
            }
        }
        done.notified().await;
        let marks = marks.lock().expect("the marks");
        let secs = (marks[1].0 - marks[0].0).as_secs_f64();
        (pass as f64 / secs, (marks[1].1 - marks[0].1) as f64 / secs)
    });
    runtime.shutdown_background();
    measured
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seeds: &[u64] = if quick { &[1] } else { &[1, 2, 3] };
    let policies = [
        Policy::LeastLoaded,
        Policy::CacheAware,
        Policy::P2c,
        Policy::Pull {
            slots: SLOTS as u32,
            starting: None,
        },
        Policy::Pull {
            slots: SLOTS as u32,
            starting: Some(2_048),
        },
        Policy::Pull {
            slots: SLOTS as u32,
            starting: Some(4_096),
        },
    ];
    let redis = test_support::RedisServer::start();
    let url = redis.url();
    println!(
        "{SERVERS} simulated servers ({SLOTS} slots, {KV_BLOCKS} KV blocks of 16 tokens, \
         costs × {}, real time), {REQUESTS} requests a run, medians of {} seed(s)\n",
        scale(),
        seeds.len()
    );
    // outcomes[load][policy]: one a seed.
    let mut outcomes = vec![vec![Vec::new(); policies.len()]; LOADS.len()];
    let mut tag = 0;
    for &seed in seeds {
        let workload = workload(seed);
        let (rps, tps) = capacity(&workload);
        println!(
            "seed {seed}: capacity {rps:.0} requests/s, {tps:.0} output tokens/s \
             (each server kept {SATURATING_DEPTH} requests deep)"
        );
        for (l, load) in LOADS.iter().enumerate() {
            for (p, &policy) in policies.iter().enumerate() {
                tag += 1;
                outcomes[l][p].push(run(&url, &workload, rps * load, policy, tag));
            }
        }
    }

    println!(
        "\n| load | policy | TTFT p50 | p90 | p99 | before the server p99 | in the server p99 | \
         relay p50 | relay p99 | idle TTFT | timer lag p99 | output tok/s | answered |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let pick = |runs: &[Outcome], f: &dyn Fn(&Outcome) -> f64| median(runs.iter().map(f).collect());
    for (l, load) in LOADS.iter().enumerate() {
        for (p, policy) in policies.iter().enumerate() {
            let runs = &outcomes[l][p];
            println!(
                "| {:.0}% | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} ms | \
                 {:.2} ms | {:.1} ms | {:.1} ms | {:.0} | {}/{} |",
                load * 100.0,
                policy.name(),
                pick(runs, &|o| o.ttft[0]),
                pick(runs, &|o| o.ttft[1]),
                pick(runs, &|o| o.ttft[2]),
                pick(runs, &|o| o.before_server),
                pick(runs, &|o| o.in_server),
                pick(runs, &|o| o.relay[0]),
                pick(runs, &|o| o.relay[1]),
                pick(runs, &|o| o.idle_ttft),
                pick(runs, &|o| o.lag),
                pick(runs, &|o| o.tokens_per_s),
                runs.iter().map(|o| o.completed).sum::<usize>(),
                REQUESTS * runs.len(),
            );
        }
    }

    println!();
    for (l, load) in LOADS.iter().enumerate() {
        let p99 = |p: usize| pick(&outcomes[l][p], &|o| o.ttft[2]);
        let (best, best_p99) = (0..policies.len())
            .filter(|&p| matches!(policies[p], Policy::Pull { .. }))
            .map(|p| (p, p99(p)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a pull policy");
        println!(
            "{:.0}% load, best pull setting: {} (p99 {best_p99:.1} ms)",
            load * 100.0,
            policies[best].name()
        );
        for (p, policy) in policies.iter().enumerate() {
            if matches!(policy, Policy::Pull { .. }) {
                continue;
            }
            let push_p99 = p99(p);
            let verdict = if best_p99 < push_p99 {
                "narrower"
            } else {
                "not narrower"
            };
            println!(
                "  vs {}: p99 {push_p99:.1} ms, pull's {verdict} ({:+.0}%)",
                policy.name(),
                (best_p99 / push_p99 - 1.0) * 100.0
            );
        }
    }
}
