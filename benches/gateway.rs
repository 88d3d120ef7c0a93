//! The gateway, every layer on, beside a bare hyper reverse proxy in front
//! of the same upstream, over loopback HTTP/1.1 with keep-alive.
//!
//! Three paths to one mock LLM (`mock-llm`, no token delay, non-streamed
//! chat completions):
//!
//! - `direct`: the load generator talks to the mock itself;
//! - `bare_proxy`: a hyper 1 server (hyper-util's auto builder, as axum
//!   serves) whose service rewrites the URI and forwards the request to the
//!   mock through a pooled `hyper_util` legacy client, bodies streamed both
//!   ways: the proxy a user would otherwise write, and nothing else;
//! - `gateway`: `tower_ai_gateway::Gateway` with its default stack, in
//!   memory (no Redis): token cost, rate limits, chat history, cache,
//!   sessions, metrics, tracing, circuit breakers, resumable relay.
//!
//! Every request is a cache miss that no limit refuses: each carries its
//! own `Authorization: Bearer k-<n>` and its own prompt (the chat limit is 5
//! per key). Every answer must be `200`; the run stops with the statuses
//! and bodies it saw otherwise.
//!
//! Each round measures, the paths in alternating order:
//!
//! 1. throughput: 32 workers in a closed loop (one request in flight each,
//!    on pooled keep-alive connections), counted over a fixed time after a
//!    warm-up, on each path; with the process's CPU time per request, in
//!    user space and in the kernel (generator, mock and path together: the
//!    gateway's minus the bare proxy's is what its layers cost);
//! 2. latency, open loop, at half the bare proxy's throughput from step 1,
//!    on each path: a thread keeps the schedule (request `i` due at
//!    `start + i / rate`, released every 200 µs: tokio's timer rounds to
//!    whole milliseconds, which would add up to 1 ms to every sample), each
//!    request spawned as a task, at most 64 in flight (as `wrk2 -c 64`).
//!    A request's latency runs from its scheduled instant, not from when
//!    it was sent, so a server that stalls the generator is charged for it
//!    (no coordinated omission). The added p99 is `p99(path) -
//!    p99(direct)`. A path that can't keep up at the rate "falls behind":
//!    its latencies are then its backlog's;
//! 3. the same at half the gateway's own throughput, for reference.
//!
//! The figures to quote are the medians over the rounds: of the per-round
//! ratios and of the per-round added p99s.
//!
//! Targets (PERFORMANCE.md): the gateway at ≥ 0.7× the bare proxy's req/s;
//! ≤ 1 ms added p99 at half the bare proxy's saturation rate.
//!
//! Everything (load generator, mock, proxy, gateway) runs in this process on
//! one multi-threaded tokio runtime, so on a 2-core machine they share both
//! cores: a path's throughput here is what is left beside the others, and
//! the ratio is the figure that holds from run to run. Below saturation a
//! request costs more CPU than at it (workers park and wake between
//! requests instead of finding the next one ready), so on 2 shared cores
//! half the closed-loop rate can already be near a path's open-loop
//! capacity: the per-run lines say when a path fell behind. The load average
//! is printed because other work on the machine moves every figure.
//!
//! The process logs as the gateway binary does (`RUST_LOG`, by default
//! `info` without the model calls' spans): a path that logs on every request
//! pays for it here.
//!
//! `cargo bench --bench gateway` (about 100 s; add `-- --quick` for one short
//! round). `-- --gateway-only SECONDS` or `-- --bare-only SECONDS` saturates
//! one path alone, for a profiler to attach to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

// The allocator the gateway ships with (`examples/gateway.rs`); every path
// in the process shares it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Closed-loop workers: requests in flight during the throughput runs.
const WORKERS: usize = 32;

/// The most requests the open loop keeps in flight, like `wrk2 -c 64`:
/// past it the schedule waits (and the wait shows in the latencies). Without
/// a cap, a moment of overload (another process taking the CPU) makes the
/// pooled clients open hundreds of connections on every hop, each one
/// costing more work, and the run never recovers.
const OPEN_LOOP_IN_FLIGHT: usize = 64;

/// How often the open loop's pacing thread releases the requests due.
const PACER_TICK: Duration = Duration::from_micros(200);

/// Sent this late, a request was waiting on a backlog, not on a scheduling
/// hiccup (those reach ~10-20 ms on a shared 2-core machine).
const FELL_BEHIND: Duration = Duration::from_millis(50);

/// The model every request names.
const MODEL: &str = "gpt-4o-mini";

/// How many failures a run keeps to print.
const FAILURE_SAMPLES: usize = 5;

/// Each request's number, for its key and its prompt: none repeats in the
/// process, so every gateway request is a cache miss on a fresh key.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(0);

/// How long the run is.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rounds: usize,
    warm_up: Duration,
    measure: Duration,
}

impl Plan {
    fn from_args() -> Self {
        if std::env::args().any(|a| a == "--quick") {
            Self {
                rounds: 1,
                warm_up: Duration::from_millis(300),
                measure: Duration::from_secs(1),
            }
        } else {
            Self {
                rounds: 5,
                warm_up: Duration::from_millis(500),
                measure: Duration::from_millis(1_500),
            }
        }
    }
}

/// A path under test: its name and its chat completions URL.
#[derive(Debug, Clone)]
struct Target {
    name: &'static str,
    url: Uri,
}

impl Target {
    fn new(name: &'static str, base: &str) -> Self {
        let url = format!("{base}/v1/chat/completions")
            .parse()
            .expect("a chat completions URL");
        Self { name, url }
    }
}

type LoadClient = Client<HttpConnector, Full<Bytes>>;

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

// ---------------------------------------------------------------------------
// The bare proxy.

type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Serves a bare reverse proxy to `upstream` on a free loopback port.
async fn bare_proxy(upstream: SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector());
    let upstream: Authority = upstream.to_string().parse().expect("an authority");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Sends `req` on to `upstream` as it came, and its answer back as it comes.
async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: Authority,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(path)
        .build()
        .expect("a URI");
    Ok(match client.request(req).await {
        Ok(res) => res.map(Either::Left),
        Err(_) => {
            let mut res = Response::new(Either::Right(Full::default()));
            *res.status_mut() = StatusCode::BAD_GATEWAY;
            res
        }
    })
}

// ---------------------------------------------------------------------------
// The load generator.

/// A fresh chat completion: its own key and its own prompt.
fn chat(target: &Target) -> Request<Full<Bytes>> {
    let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("benchmark prompt {n}: say something")}],
    });
    Request::post(target.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer k-{n}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request")
}

/// Sends one request and reads the whole answer; anything but a `200` is
/// an error naming what came back.
async fn send(client: &LoadClient, target: &Target) -> Result<(), String> {
    let res = client
        .request(chat(target))
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{status}, body failed: {e}"))?
        .to_bytes();
    if status == StatusCode::OK {
        Ok(())
    } else {
        let shown = &body[..body.len().min(300)];
        Err(format!("{status}: {}", String::from_utf8_lossy(shown)))
    }
}

/// The failures of a run: counted, and the first few kept.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    samples: Vec<String>,
}

impl Failures {
    fn add(&mut self, failure: String) {
        self.count += 1;
        if self.samples.len() < FAILURE_SAMPLES {
            self.samples.push(failure);
        }
    }

    fn merge(&mut self, other: Self) {
        self.count += other.count;
        for sample in other.samples {
            if self.samples.len() < FAILURE_SAMPLES {
                self.samples.push(sample);
            }
        }
    }

    /// Stops the bench if any answer was not a `200`.
    fn check(&self, run: &str, target: &Target) {
        if self.count == 0 {
            return;
        }
        eprintln!(
            "{run} on {}: {} answers were not 200; the first ones:",
            target.name, self.count
        );
        for sample in &self.samples {
            eprintln!("  {sample}");
        }
        panic!(
            "{run} on {}: {} answers were not 200",
            target.name, self.count
        );
    }
}

/// What a closed-loop run gave.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    /// Requests per second, counted over the measured part.
    rps: f64,
    /// Process CPU time per request over the whole run (generator, mock
    /// and path together), when `/proc` tells.
    cpu_per_request: Option<Cpu>,
}

/// CPU time per request, in user space and in the kernel (mostly the
/// sockets' work, which grows with the hops: one direct, two through either
/// proxy; the layers' own work shows in user space).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl Cpu {
    fn total(self) -> Duration {
        self.user + self.system
    }
}

/// Throughput with `WORKERS` requests always in flight, counted over
/// `plan.measure` after `plan.warm_up`.
async fn saturate(client: &LoadClient, target: &Target, plan: Plan) -> Throughput {
    let cpu_before = cpu_seconds();
    let sent_before = NEXT_REQUEST.load(Ordering::Relaxed);
    let measure_from = Instant::now() + plan.warm_up;
    let end = measure_from + plan.measure;
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let client = client.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut done = 0_u64;
                let mut failures = Failures::default();
                while Instant::now() < end {
                    let outcome = send(&client, &target).await;
                    let finished = Instant::now();
                    match outcome {
                        Ok(()) if finished >= measure_from && finished < end => done += 1,
                        Ok(()) => {}
                        Err(failure) => failures.add(failure),
                    }
                }
                (done, failures)
            })
        })
        .collect();
    let mut done = 0;
    let mut failures = Failures::default();
    for worker in workers {
        let (count, worker_failures) = worker.await.expect("a worker");
        done += count;
        failures.merge(worker_failures);
    }
    failures.check("throughput", target);
    let sent = NEXT_REQUEST.load(Ordering::Relaxed) - sent_before;
    let cpu_per_request = match (cpu_before, cpu_seconds()) {
        (Some(before), Some(after)) if sent > 0 => {
            let per = |a: f64, b: f64| Duration::from_secs_f64((b - a).max(0.0) / sent as f64);
            Some(Cpu {
                user: per(before.0, after.0),
                system: per(before.1, after.1),
            })
        }
        _ => None,
    };
    Throughput {
        rps: done as f64 / plan.measure.as_secs_f64(),
        cpu_per_request,
    }
}

/// Latencies of an open-loop run, sorted.
#[derive(Debug)]
struct Latencies {
    /// From each request's scheduled instant to its whole answer.
    from_schedule: Vec<Duration>,
    /// From when each request was sent to its whole answer (the server's
    /// part, without the generator's lateness): for context only.
    service: Vec<Duration>,
    /// The latest a request left after its scheduled instant: near zero
    /// when the path kept up with the rate, the backlog when it didn't.
    behind: Duration,
}

/// The `q` quantile of sorted `samples`.
fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// One open-loop request, answered.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Scheduled after the warm-up.
    timed: bool,
    from_schedule: Duration,
    service: Duration,
    /// How long after its scheduled instant it was sent.
    late: Duration,
}

/// Sends requests to `target` at `rate` per second on a fixed schedule,
/// each in its own task, for `plan.warm_up` then `plan.measure`, and
/// returns the latencies of the requests scheduled in the measured part.
async fn open_loop(client: &LoadClient, target: &Target, rate: f64, plan: Plan) -> Latencies {
    let (outcomes, mut received) = mpsc::unbounded_channel();
    let pacer = {
        let runtime = tokio::runtime::Handle::current();
        let client = client.clone();
        let target = target.clone();
        tokio::task::spawn_blocking(move || pace(&runtime, &client, &target, rate, plan, &outcomes))
    };
    let released = pacer.await.expect("the pacer");
    let mut from_schedule = Vec::with_capacity(released);
    let mut service = Vec::with_capacity(released);
    let mut behind = Duration::ZERO;
    let mut failures = Failures::default();
    for _ in 0..released {
        match received.recv().await.expect("every request answers") {
            Ok(sample) => {
                behind = behind.max(sample.late);
                if sample.timed {
                    from_schedule.push(sample.from_schedule);
                    service.push(sample.service);
                }
            }
            Err(failure) => failures.add(failure),
        }
    }
    failures.check("latency", target);
    from_schedule.sort_unstable();
    service.sort_unstable();
    Latencies {
        from_schedule,
        service,
        behind,
    }
}

/// The schedule, kept by a thread of its own: request `i` is due at
/// `start + i / rate`. The thread wakes every `PACER_TICK` (a sleeping
/// thread overshoots by ~60 µs, where tokio's timer wheel rounds every
/// deadline up to a whole millisecond: as much lateness as the 1 ms target,
/// added to every sample) and hands the requests then due to the runtime as
/// one task, which spawns one task per request: one cross-thread wake-up
/// per tick, not per request. Returns how many requests it released.
fn pace(
    runtime: &tokio::runtime::Handle,
    client: &LoadClient,
    target: &Target,
    rate: f64,
    plan: Plan,
    outcomes: &mpsc::UnboundedSender<Result<Sample, String>>,
) -> usize {
    let in_flight = Arc::new(Semaphore::new(OPEN_LOOP_IN_FLIGHT));
    let start = Instant::now();
    let measure_from = start + plan.warm_up;
    let period = Duration::from_secs_f64(1.0 / rate);
    let total = ((plan.warm_up + plan.measure).as_secs_f64() * rate).ceil() as u32;
    let mut released = 0_u32;
    let mut next_wake = start;
    while released < total {
        let now = Instant::now();
        if next_wake > now {
            std::thread::sleep(next_wake - now);
        }
        let now = Instant::now();
        next_wake = now + PACER_TICK;
        // Every request scheduled at or before now.
        let due = (((now - start).as_secs_f64() * rate) as u32 + 1).min(total);
        if due <= released {
            continue;
        }
        let batch = released..due;
        released = due;
        let (client, target) = (client.clone(), target.clone());
        let (in_flight, outcomes) = (Arc::clone(&in_flight), outcomes.clone());
        runtime.spawn(async move {
            for i in batch {
                let scheduled = start + period * i;
                // At the cap the schedule waits (the semaphore is fair: in
                // order), and the wait counts in the latency of every
                // request sent late.
                let permit = Arc::clone(&in_flight)
                    .acquire_owned()
                    .await
                    .expect("the semaphore stays open");
                let (client, target, outcomes) = (client.clone(), target.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let outcome = send(&client, &target).await;
                    let finished = Instant::now();
                    drop(permit);
                    let _ = outcomes.send(outcome.map(|()| Sample {
                        timed: scheduled >= measure_from,
                        from_schedule: finished - scheduled,
                        service: finished - sent,
                        late: sent.saturating_duration_since(scheduled),
                    }));
                });
            }
        });
    }
    total as usize
}

// ---------------------------------------------------------------------------
// The rounds and the report.

/// What one open-loop run of one path gave.
#[derive(Debug, Clone, Copy)]
struct LatencyFigures {
    p50: Duration,
    p99: Duration,
    service_p99: Duration,
    behind: Duration,
    samples: usize,
}

impl LatencyFigures {
    fn of(latencies: &Latencies) -> Self {
        Self {
            p50: quantile(&latencies.from_schedule, 0.50),
            p99: quantile(&latencies.from_schedule, 0.99),
            service_p99: quantile(&latencies.service, 0.99),
            behind: latencies.behind,
            samples: latencies.from_schedule.len(),
        }
    }
}

/// The three paths at one rate, in one round.
#[derive(Debug, Clone, Copy)]
struct AtRate {
    rate: f64,
    direct: LatencyFigures,
    bare: LatencyFigures,
    gateway: LatencyFigures,
}

impl AtRate {
    fn bare_added_p99(&self) -> f64 {
        signed_ms(self.bare.p99, self.direct.p99)
    }

    fn gateway_added_p99(&self) -> f64 {
        signed_ms(self.gateway.p99, self.direct.p99)
    }
}

/// One round's figures.
#[derive(Debug)]
struct Round {
    direct: Throughput,
    bare: Throughput,
    gateway: Throughput,
    at_half_bare: AtRate,
    at_half_gateway: AtRate,
}

/// `a - b` in milliseconds.
fn signed_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn median_duration(values: impl Iterator<Item = Duration>) -> Duration {
    Duration::from_secs_f64(median(values.map(|d| d.as_secs_f64()).collect()))
}

fn rate_text(rate: f64) -> String {
    format!("{:.1}k req/s", rate / 1e3)
}

fn duration_text(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", d.as_micros())
    }
}

fn ms_text(ms: f64) -> String {
    if ms.abs() >= 1.0 {
        format!("{ms:+.2} ms")
    } else {
        format!("{:+.0} µs", ms * 1e3)
    }
}

fn cpu_text(cpu: Option<Cpu>) -> String {
    cpu.map_or_else(
        || "?".to_owned(),
        |cpu| {
            format!(
                "{} µs (user {}, system {})",
                cpu.total().as_micros(),
                cpu.user.as_micros(),
                cpu.system.as_micros()
            )
        },
    )
}

/// The 1-minute load average: other work on the machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Runs the paths at `rate`, in `order`.
async fn at_rate(client: &LoadClient, order: &[&Target; 3], rate: f64, plan: Plan) -> AtRate {
    let mut figures = Vec::with_capacity(order.len());
    for target in order {
        let f = LatencyFigures::of(&open_loop(client, target, rate, plan).await);
        // A path that fell behind the schedule was past its capacity at
        // this rate: its latencies are the backlog's.
        let pace = if f.behind > FELL_BEHIND {
            format!(", fell {} behind", duration_text(f.behind))
        } else {
            String::new()
        };
        println!(
            "  {:<10} at {}: p50 {}, p99 {} (service p99 {}), {} samples{pace}",
            target.name,
            rate_text(rate),
            duration_text(f.p50),
            duration_text(f.p99),
            duration_text(f.service_p99),
            f.samples
        );
        figures.push((target.name, f));
    }
    let pick = |name: &str| {
        figures
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .expect("every path ran")
    };
    AtRate {
        rate,
        direct: pick("direct"),
        bare: pick("bare_proxy"),
        gateway: pick("gateway"),
    }
}

/// Each path's figures in an [`AtRate`].
type PickPath = fn(&AtRate) -> LatencyFigures;

const PATHS: [(&str, PickPath); 3] = [
    ("direct", |r| r.direct),
    ("bare_proxy", |r| r.bare),
    ("gateway", |r| r.gateway),
];

fn print_latencies(label: &str, runs: &[AtRate]) {
    let rate = median(runs.iter().map(|r| r.rate).collect());
    println!("median at {label} ({}):", rate_text(rate));
    for (name, pick) in PATHS {
        println!(
            "  {name:<10} p50 {}, p99 {} (service p99 {})",
            duration_text(median_duration(runs.iter().map(|r| pick(r).p50))),
            duration_text(median_duration(runs.iter().map(|r| pick(r).p99))),
            duration_text(median_duration(runs.iter().map(|r| pick(r).service_p99))),
        );
    }
}

/// CPU time this process has used, in user space and in the kernel, from
/// `/proc/self/stat` (10 ms ticks): over a run, divided by its requests,
/// what one request costs the generator, the mock and the path together.
fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends at the last `)`: utime and
    // stime are the 12th and 13th.
    let mut fields = stat.rsplit(')').next()?.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user / 100.0, system / 100.0))
}

fn main() {
    // The gateway as it ships: its logs on (`RUST_LOG`, by default what
    // `examples/gateway.rs` logs), no trace export.
    let _telemetry = tower_ai_gateway::telemetry::init(None).expect("no subscriber yet");
    // `-- --gateway-only SECONDS` (or `--bare-only SECONDS`): only the
    // gateway (or the bare proxy), saturated, for a profiler to attach to
    // (e.g. `perf record -p`).
    for (flag, path) in [
        ("--gateway-only", Only::Gateway),
        ("--bare-only", Only::Bare),
    ] {
        let mut args = std::env::args().skip_while(|a| a != flag);
        if args.next().is_some() {
            let seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(only(path, Duration::from_secs(seconds)));
            return;
        }
    }
    let plan = Plan::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run(plan));
}

/// The one path a profiling run saturates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Gateway,
    Bare,
}

async fn only(path: Only, time: Duration) {
    let mock = mock_llm::MockLlm::spawn(
        "127.0.0.1:0",
        mock_llm::Config {
            token_delay: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .expect("the mock starts");
    // Kept until the run ends.
    let mut gateway = None;
    let target = match path {
        Only::Bare => Target::new("bare_proxy", &bare_proxy(mock.addr()).await),
        Only::Gateway => {
            let mut config = tower_ai_gateway::Config::from_args([
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &mock.base_url(),
                "--token-delay-ms",
                "0",
            ])
            .expect("a gateway configuration");
            // `GATEWAY_BENCH_TOML`: a config file's text over that, to see
            // what a setting costs.
            if let Ok(text) = std::env::var("GATEWAY_BENCH_TOML") {
                let path = std::path::Path::new("GATEWAY_BENCH_TOML");
                config
                    .read_toml(&text, path, |name| std::env::var(name).ok())
                    .expect("a valid GATEWAY_BENCH_TOML");
            }
            let started = tower_ai_gateway::Gateway::start(config)
                .await
                .expect("the gateway starts");
            let target = Target::new("gateway", &started.url());
            gateway = Some(started);
            target
        }
    };
    let client: LoadClient = Client::builder(TokioExecutor::new()).build(connector());
    let plan = Plan {
        rounds: 1,
        warm_up: Duration::from_millis(100),
        measure: time,
    };
    let throughput = saturate(&client, &target, plan).await;
    println!(
        "{} throughput {} ({WORKERS} workers), CPU {} per request",
        target.name,
        rate_text(throughput.rps),
        cpu_text(throughput.cpu_per_request)
    );
    drop(gateway);
}

async fn run(plan: Plan) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "gateway bench: {cores} cores shared by the load generator ({WORKERS} workers closed \
         loop; open loop paced by one thread, at most {OPEN_LOOP_IN_FLIGHT} in flight), the \
         mock, the bare proxy and the gateway, all in this process on one tokio runtime; \
         {} rounds, each run {} ms warm-up + {} ms measured; load average {}",
        plan.rounds,
        plan.warm_up.as_millis(),
        plan.measure.as_millis(),
        load_average()
    );

    let mock = mock_llm::MockLlm::spawn(
        "127.0.0.1:0",
        mock_llm::Config {
            token_delay: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .expect("the mock starts");
    let mock_url = mock.base_url();
    let bare_url = bare_proxy(mock.addr()).await;
    let config = tower_ai_gateway::Config::from_args([
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &mock_url,
        "--token-delay-ms",
        "0",
    ])
    .expect("a gateway configuration");
    let gateway = tower_ai_gateway::Gateway::start(config)
        .await
        .expect("the gateway starts");

    let direct = Target::new("direct", &mock_url);
    let bare = Target::new("bare_proxy", &bare_url);
    let gw = Target::new("gateway", &gateway.url());
    let client: LoadClient = Client::builder(TokioExecutor::new()).build(connector());
    for target in [&direct, &bare, &gw] {
        if let Err(failure) = send(&client, target).await {
            panic!("{}: the first request failed: {failure}", target.name);
        }
    }

    let mut rounds = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        // Alternate the order, so no path always runs first (on a cooler
        // machine) or last.
        let order = if round % 2 == 0 {
            [&direct, &bare, &gw]
        } else {
            [&gw, &bare, &direct]
        };
        println!(
            "round {}/{} (load average {})",
            round + 1,
            plan.rounds,
            load_average()
        );
        let mut measured = [None; 3];
        for target in order {
            let throughput = saturate(&client, target, plan).await;
            println!(
                "  {:<10} throughput {} ({WORKERS} workers), CPU {} per request",
                target.name,
                rate_text(throughput.rps),
                cpu_text(throughput.cpu_per_request)
            );
            let slot = match target.name {
                "direct" => 0,
                "bare_proxy" => 1,
                _ => 2,
            };
            measured[slot] = Some(throughput);
        }
        let [Some(direct_run), Some(bare_run), Some(gateway_run)] = measured else {
            unreachable!("every path ran");
        };
        let at_half_bare = at_rate(&client, &order, bare_run.rps / 2.0, plan).await;
        let at_half_gateway = at_rate(&client, &order, gateway_run.rps / 2.0, plan).await;
        rounds.push(Round {
            direct: direct_run,
            bare: bare_run,
            gateway: gateway_run,
            at_half_bare,
            at_half_gateway,
        });
    }

    println!();
    println!(
        "{} requests, each with a fresh key and prompt, every answer 200; the mock answered {}; \
         load average {}",
        NEXT_REQUEST.load(Ordering::Relaxed),
        mock.stats().requests,
        load_average()
    );
    let median_rps =
        |pick: fn(&Round) -> Throughput| median(rounds.iter().map(|r| pick(r).rps).collect());
    let median_cpu = |pick: fn(&Round) -> Throughput| {
        let cpu: Option<Vec<Cpu>> = rounds.iter().map(|r| pick(r).cpu_per_request).collect();
        cpu.map(|cpu| Cpu {
            user: median_duration(cpu.iter().map(|c| c.user)),
            system: median_duration(cpu.iter().map(|c| c.system)),
        })
    };
    let (bare_rps, gateway_rps) = (median_rps(|r| r.bare), median_rps(|r| r.gateway));
    println!(
        "median throughput ({WORKERS} workers): direct {}, bare_proxy {}, gateway {}",
        rate_text(median_rps(|r| r.direct)),
        rate_text(bare_rps),
        rate_text(gateway_rps)
    );
    println!(
        "median CPU per request (the whole process: generator, mock and path; user and system \
         each the median over the rounds): direct {}, bare_proxy {}, gateway {}",
        cpu_text(median_cpu(|r| r.direct)),
        cpu_text(median_cpu(|r| r.bare)),
        cpu_text(median_cpu(|r| r.gateway))
    );
    let half_bare: Vec<AtRate> = rounds.iter().map(|r| r.at_half_bare).collect();
    let half_gateway: Vec<AtRate> = rounds.iter().map(|r| r.at_half_gateway).collect();
    print_latencies("half the bare proxy's throughput", &half_bare);
    print_latencies("half the gateway's throughput", &half_gateway);

    println!();
    let ratio = median(rounds.iter().map(|r| r.gateway.rps / r.bare.rps).collect());
    println!(
        "ratio [gateway_throughput] gateway {} / bare_proxy {} = {ratio:.2}× the req/s \
         (median of {} rounds' ratios; target: ≥ 0.7×)",
        rate_text(gateway_rps),
        rate_text(bare_rps),
        rounds.len()
    );
    for (label, target, runs) in [
        ("half bare_proxy's rate", "target: ≤ 1 ms", &half_bare),
        (
            "half gateway's rate",
            "for reference: the target is at half bare_proxy's rate",
            &half_gateway,
        ),
    ] {
        // Past its capacity a path's p99 is its backlog, not a tail.
        let behind = |pick: PickPath| {
            let n = runs.iter().filter(|r| pick(r).behind > FELL_BEHIND).count();
            if n == 0 {
                String::new()
            } else {
                format!(" (fell behind in {n}/{} rounds)", runs.len())
            }
        };
        println!(
            "added [gateway_p99 at {label}, {}] over direct p99 {}: gateway {}{}, bare_proxy {}{} \
             (median of per-round differences; {target})",
            rate_text(median(runs.iter().map(|r| r.rate).collect())),
            duration_text(median_duration(runs.iter().map(|r| r.direct.p99))),
            ms_text(median(runs.iter().map(AtRate::gateway_added_p99).collect())),
            behind(|r| r.gateway),
            ms_text(median(runs.iter().map(AtRate::bare_added_p99).collect())),
            behind(|r| r.bare),
        );
    }
    drop(gateway);
}
