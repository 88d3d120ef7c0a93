//! Balancing a simulated fleet: `tower-ai-balance`'s strategies beside
//! round robin and `tower::balance::p2c` with `PendingRequests`, on the same
//! workloads, in the same run.
//!
//! Four simulated inference servers (`mock_llm::fleet::SimServer`: an 8B
//! model on one A100 each, continuous batching, a prefix cache in 16-token
//! blocks) run in virtual time, so a run of minutes of traffic takes
//! seconds and repeats exactly for a seed. Arrivals are open-loop (Poisson,
//! seeded). Each workload runs with several seeds; the table shows medians.
//!
//! ```sh
//! cargo bench --bench balance             # every workload, 3 seeds
//! cargo bench --bench balance -- --quick  # one seed
//! ```
//!
//! Reported per workload and policy: output tokens/s (generated tokens over
//! the time from the first arrival to the last answer's end), time to first
//! token p50/p90/p99, the fleet's prefix-cache hit rate (cached prompt
//! tokens over prompt tokens), and the load spread (the busiest server's
//! prompt + output tokens over the mean). Then the routing decision's own
//! cost, in real time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use mock_llm::fleet::{Costs, SimConfig, SimEvent, SimServer};
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_ai_balance::{BalanceLayer, Endpoint, Pool, Strategy};

type SimBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

const SERVERS: usize = 4;
const SLOTS: usize = 64;
/// 6,000 blocks of 16 tokens a server (96k tokens): about a quarter of the
/// shared-prefix workload's documents fit in one server, all of them in the
/// fleet.
const KV_BLOCKS: usize = 4_000;

/// One request of a workload: `at` is its arrival from the start for a
/// session's first request, else the user's think time after the previous
/// answer ended.
#[derive(Clone)]
struct Call {
    at: Duration,
    messages: Vec<String>,
    max_tokens: u32,
}

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

    /// An exponential gap for `rate` arrivals a second.
    fn gap(&mut self, rate: f64) -> Duration {
        Duration::from_secs_f64(-(1.0 - self.unit()).ln() / rate)
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

struct Workload {
    name: &'static str,
    /// Sessions: each runs its calls one after the other.
    calls: Vec<Vec<Call>>,
    /// Server costs: one server 2× slower in the last workload.
    slow_server: bool,
}

/// Many users asking about long documents: 80 documents of 4,000 tokens
/// (320k tokens: a quarter fits in one server's cache, all in the fleet's),
/// a short question each, 64 tokens of answer, 30 requests a second.
fn shared_prefix(seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let docs: Vec<String> = (0..52)
        .map(|d| rng.text(&format!("document {d}:"), 4_000))
        .collect();
    let mut at = Duration::ZERO;
    let calls = (0..1_500)
        .map(|i| {
            at += rng.gap(30.0);
            let doc = &docs[rng.below(docs.len() as u64) as usize];
            vec![Call {
                at,
                messages: vec![doc.clone(), rng.text(&format!("question {i}:"), 40)],
                max_tokens: 64,
            }]
        })
        .collect();
    Workload {
        name: "shared prefixes",
        calls,
        slow_server: false,
    }
}

/// Multi-turn chats, as a chat benchmark runs them: 72 conversations at
/// once (started over 5 s), 8 turns each, each turn the whole conversation so
/// far plus a new question, sent as soon as the previous answer ended; a
/// 1,000-token system prompt of its own each.
fn multi_turn(seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let mut sessions = Vec::new();
    for c in 0..72 {
        let mut at = Duration::from_secs_f64(rng.unit() * 5.0);
        let mut messages = vec![rng.text(&format!("system {c}:"), 1_000)];
        let mut calls = Vec::new();
        for turn in 0..8 {
            messages.push(rng.text(&format!("user {c}.{turn}:"), 150));
            calls.push(Call {
                at,
                messages: messages.clone(),
                max_tokens: 120,
            });
            messages.push(rng.text(&format!("assistant {c}.{turn}:"), 120));
            at = Duration::ZERO;
        }
        sessions.push(calls);
    }
    Workload {
        name: "multi-turn",
        calls: sessions,
        slow_server: false,
    }
}

/// Unique prompts: nothing to reuse (the control).
fn unique(seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let mut at = Duration::ZERO;
    let calls = (0..1_000)
        .map(|i| {
            at += rng.gap(20.0);
            vec![Call {
                at,
                messages: vec![rng.text(&format!("prompt {i}:"), 1_000)],
                max_tokens: 128,
            }]
        })
        .collect();
    Workload {
        name: "unique prompts",
        calls,
        slow_server: false,
    }
}

/// One system prompt shared by everyone, then a unique question.
fn hotspot(seed: u64) -> Workload {
    let mut rng = Rng(seed);
    let system = rng.text("the one system prompt:", 3_000);
    let mut at = Duration::ZERO;
    let calls = (0..1_500)
        .map(|i| {
            at += rng.gap(30.0);
            vec![Call {
                at,
                messages: vec![system.clone(), rng.text(&format!("question {i}:"), 200)],
                max_tokens: 96,
            }]
        })
        .collect();
    Workload {
        name: "hotspot",
        calls,
        slow_server: false,
    }
}

/// The shared-prefix workload with one server twice as slow.
fn slow_server(seed: u64) -> Workload {
    Workload {
        name: "one server 2x slower",
        slow_server: true,
        ..shared_prefix(seed)
    }
}

fn request(call: &Call) -> Request<Full<Bytes>> {
    let messages: Vec<_> = call
        .messages
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let role = if i == 0 {
                "system"
            } else if i % 2 == 1 {
                "user"
            } else {
                "assistant"
            };
            serde_json::json!({"role": role, "content": text})
        })
        .collect();
    let body = serde_json::json!({
        "model": "m",
        "stream": true,
        "max_tokens": call.max_tokens,
        "messages": messages,
    });
    Request::new(Full::new(Bytes::from(body.to_string())))
}

/// A simulated server as a tower service: `fixed` for one server (p2c's
/// endpoints), else the server the balancer picked.
#[derive(Clone)]
struct Sim {
    servers: Arc<[SimServer]>,
    fixed: Option<usize>,
}

impl Service<Request<Full<Bytes>>> for Sim {
    type Response = Response<SimBody>;
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
            let generation = server.generate(&prompt.join("\n"), max_tokens);
            // The head goes out at once, as a streaming server's does; the
            // tokens follow.
            let frames = generation.filter_map(|event| async move {
                match event {
                    SimEvent::Token => Some(Ok(http_body::Frame::data(Bytes::from_static(b"t")))),
                    _ => None,
                }
            });
            Ok(Response::new(BodyExt::boxed_unsync(StreamBody::new(
                frames,
            ))))
        })
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Outcome {
    tokens_per_s: f64,
    ttft: [f64; 3],
    hit_rate: f64,
    spread: f64,
}

type Boxed =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<SimBody>, tower::BoxError>;

fn fleet(slow: bool, base: Costs) -> Arc<[SimServer]> {
    (0..SERVERS)
        .map(|i| {
            let costs = if slow && i == SERVERS - 1 {
                base.scaled(2.0)
            } else {
                base
            };
            SimServer::spawn(SimConfig {
                slots: SLOTS,
                kv_blocks: KV_BLOCKS,
                costs,
                ..SimConfig::default()
            })
        })
        .collect()
}

fn policy(name: &str, servers: &Arc<[SimServer]>) -> Boxed {
    let strategy = match name {
        "round robin" => Strategy::RoundRobin,
        "least loaded" => Strategy::LeastLoaded,
        "cache aware" => Strategy::cache_aware(),
        _ => {
            // tower's p2c over PendingRequests: a pick in poll_ready, load
            // counted until the response head.
            let endpoints: Vec<_> = (0..SERVERS)
                .map(|i| {
                    tower::load::PendingRequests::new(
                        Sim {
                            servers: Arc::clone(servers),
                            fixed: Some(i),
                        },
                        tower::load::CompleteOnResponse::default(),
                    )
                })
                .collect();
            let p2c =
                tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(endpoints));
            let buffered = tower::buffer::Buffer::new(p2c, 4_096);
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
    boxed(pool, servers)
}

/// The balancer over `pool`, in front of the simulated fleet.
fn boxed(pool: Pool<usize>, servers: &Arc<[SimServer]>) -> Boxed {
    let service = tower::Layer::layer(
        &BalanceLayer::new(pool),
        Sim {
            servers: Arc::clone(servers),
            fixed: None,
        },
    );
    tower::util::BoxCloneSyncService::new(
        service
            .map_response(|res| {
                res.map(|b| BodyExt::boxed_unsync(b.map_err(|never| match never {})))
            })
            .map_err(|never: Infallible| -> tower::BoxError { match never {} }),
    )
}

/// Runs `workload` through `policy` in virtual time.
fn run(workload: &Workload, policy_name: &str) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let servers = fleet(workload.slow_server, Costs::default());
        let service = policy(policy_name, &servers);
        drive(workload, &servers, &[service], 1.0).await
    })
}

/// Sends `workload`'s sessions through `services` (a session's turns go to
/// the replicas in turn), its times scaled by `scale`, and measures.
async fn drive(
    workload: &Workload,
    servers: &[SimServer],
    services: &[Boxed],
    scale: f64,
) -> Outcome {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workload.calls.len());
    for (s, session) in workload.calls.iter().enumerate() {
        let services = services.to_vec();
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let mut measured = Vec::with_capacity(session.len());
            let mut next = start;
            for (turn, call) in session.into_iter().enumerate() {
                tokio::time::sleep_until(next + call.at.mul_f64(scale)).await;
                let sent = Instant::now();
                let service = services[(s + turn) % services.len()].clone();
                let res = service.oneshot(request(&call)).await.expect("an answer");
                let mut body = res.into_body();
                let mut first = None;
                let mut tokens = 0u64;
                while let Some(frame) = body.frame().await {
                    if frame.is_ok() {
                        first.get_or_insert_with(|| sent.elapsed());
                        tokens += 1;
                    }
                }
                next = Instant::now();
                measured.push((first.unwrap_or_default(), tokens, next));
            }
            measured
        }));
    }
    let mut ttfts = Vec::new();
    let mut tokens = 0;
    let mut end = start;
    for task in tasks {
        for (ttft, n, done) in task.await.expect("a task") {
            ttfts.push(ttft.as_secs_f64());
            tokens += n;
            end = end.max(done);
        }
    }
    let first_arrival = workload
        .calls
        .iter()
        .filter_map(|s| s.first())
        .map(|c| c.at.mul_f64(scale))
        .min()
        .unwrap_or_default();
    ttfts.sort_by(f64::total_cmp);
    let pct = |p: f64| ttfts[((ttfts.len() - 1) as f64 * p).round() as usize];
    let metrics: Vec<_> = servers.iter().map(SimServer::metrics).collect();
    let prompt: u64 = metrics.iter().map(|m| m.prompt_tokens_total).sum();
    let hits: u64 = metrics.iter().map(|m| m.prefix_hit_tokens).sum();
    let work: Vec<f64> = metrics
        .iter()
        .map(|m| (m.prompt_tokens_total + m.generated_tokens_total) as f64)
        .collect();
    let mean = work.iter().sum::<f64>() / work.len() as f64;
    Outcome {
        tokens_per_s: tokens as f64 / (end - start - first_arrival).as_secs_f64(),
        ttft: [pct(0.5), pct(0.9), pct(0.99)],
        hit_rate: hits as f64 / prompt.max(1) as f64,
        spread: work.iter().copied().fold(0.0, f64::max) / mean,
    }
}

/// The cache-aware balancer run by `replicas` gateway replicas at once (each
/// session's turns go to the replicas in turn), sharing their state through
/// `redis` or each on its own. Real time (Redis is real), with every cost and
/// every gap ten times shorter than in the virtual-time runs.
fn run_replicas(workload: &Workload, replicas: usize, redis: Option<&str>) -> Outcome {
    const SCALE: f64 = 0.1;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let servers = fleet(workload.slow_server, Costs::default().scaled(SCALE));
        let prefix = format!("bench-{}", std::process::id() ^ replicas as u32);
        let mut services = Vec::new();
        for _ in 0..replicas {
            let mut pool = Pool::builder(format!("m-{}", redis.is_some()))
                .strategy(Strategy::cache_aware())
                .endpoints(
                    (0..SERVERS)
                        .map(|i| Endpoint::new(format!("sim-{i}"), i).max_concurrency(4_096)),
                )
                .queue_timeout(Duration::from_secs(3_600));
            if let Some(url) = redis {
                let client = tower_ai_core::redis::connect(&[url], &Default::default())
                    .await
                    .expect("Redis");
                let store = tower_ai_balance::RedisStore::builder(client)
                    .prefix(prefix.as_str())
                    .build();
                pool = pool.redis(&store);
            }
            let pool = pool.build().expect("a pool");
            services.push(boxed(pool, &servers));
        }
        drive(workload, &servers, &services, SCALE).await
    })
}
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The routing decision's cost in real time: a 4,000-token prompt through
/// the cache-aware balancer (its body read, its blocks hashed, the index
/// looked up and written, the pick), over an inner service that answers at
/// once; 20,000 calls over 200 documents, after a warm-up.
fn decision_cost() -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let pool = Pool::builder("m")
            .strategy(Strategy::cache_aware())
            .endpoints((0..SERVERS).map(|i| Endpoint::new(format!("sim-{i}"), i)))
            .build()
            .expect("a pool");
        let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
        let service = tower::Layer::layer(&BalanceLayer::new(pool), inner);
        let mut rng = Rng(7);
        let docs: Vec<Bytes> = (0..200)
            .map(|d| {
                let call = Call {
                    at: Duration::ZERO,
                    messages: vec![
                        rng.text(&format!("document {d}:"), 4_000),
                        "question".into(),
                    ],
                    max_tokens: 64,
                };
                request(&call).into_body().collect_sync()
            })
            .collect();
        let mut samples = Vec::with_capacity(20_000);
        for i in 0..22_000 {
            let body = docs[i % docs.len()].clone();
            let started = std::time::Instant::now();
            let res = service
                .clone()
                .oneshot(Request::new(Full::new(body)))
                .await
                .expect("an answer");
            drop(res);
            if i >= 2_000 {
                samples.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        samples.sort_by(f64::total_cmp);
        (
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
        )
    })
}

trait CollectSync {
    fn collect_sync(self) -> Bytes;
}

impl CollectSync for Full<Bytes> {
    fn collect_sync(self) -> Bytes {
        futures_util::FutureExt::now_or_never(self.collect())
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seeds: &[u64] = if quick { &[1] } else { &[1, 2, 3] };
    let workloads: [fn(u64) -> Workload; 5] =
        [shared_prefix, multi_turn, unique, hotspot, slow_server];
    let policies = ["round robin", "p2c (tower)", "least loaded", "cache aware"];
    println!(
        "{} simulated servers ({} slots, {} KV blocks of 16 tokens each), medians of {} seed(s)\n",
        SERVERS,
        SLOTS,
        KV_BLOCKS,
        seeds.len()
    );
    println!(
        "| workload | policy | output tok/s | TTFT p50 | p90 | p99 | hit rate | load spread |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for make in workloads {
        let runs: Vec<Workload> = seeds.iter().map(|s| make(*s)).collect();
        for policy_name in policies {
            let outcomes: Vec<Outcome> = runs.iter().map(|w| run(w, policy_name)).collect();
            let pick = |f: &dyn Fn(&Outcome) -> f64| median(outcomes.iter().map(f).collect());
            println!(
                "| {} | {} | {:.0} | {:.2} s | {:.2} s | {:.2} s | {:.0}% | {:.2}× |",
                runs[0].name,
                policy_name,
                pick(&|o| o.tokens_per_s),
                pick(&|o| o.ttft[0]),
                pick(&|o| o.ttft[1]),
                pick(&|o| o.ttft[2]),
                pick(&|o| o.hit_rate) * 100.0,
                pick(&|o| o.spread),
            );
        }
    }
    println!("\nReplicas of the cache-aware balancer (real time, costs and gaps ÷ 10; one seed)\n");
    println!("| workload | replicas | state | output tok/s | TTFT p50 | p99 | hit rate |");
    println!("|---|---|---|---|---|---|---|");
    let redis = test_support::RedisServer::start();
    for make in [shared_prefix as fn(u64) -> Workload, multi_turn] {
        let workload = make(1);
        for (replicas, url, state) in [
            (1, None, "its own"),
            (4, None, "each its own"),
            (4, Some(redis.url()), "shared (Redis)"),
        ] {
            let o = run_replicas(&workload, replicas, url.as_deref());
            println!(
                "| {} | {replicas} | {state} | {:.0} | {:.2} s | {:.2} s | {:.0}% |",
                workload.name,
                o.tokens_per_s,
                o.ttft[0],
                o.ttft[2],
                o.hit_rate * 100.0
            );
        }
    }
    let (p50, p99) = decision_cost();
    println!(
        "\nrouting decision, 4,000-token prompt, cache aware: p50 {p50:.1} µs, p99 {p99:.1} µs"
    );
}
