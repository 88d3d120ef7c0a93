//! A pull-mode worker: the pullers of a gateway config's pull-mode models,
//! beside their deployments, with no HTTP server.
//!
//! ```text
//! cargo run --release --example worker -- --config gateway.toml
//! ```
//!
//! The config is the gateway's (`examples/gateway.toml`); the worker reads
//! its `redis` and the models whose `balance` is `"pull"`, and runs a puller
//! per deployment with `max_concurrency` slots. Gateway replicas given
//! `pullers = false` only queue; workers take the requests. Any number of
//! workers may run: a request goes to one, and a worker that dies mid-request
//! leaves it to another.

use std::process::ExitCode;

use tower_ai_gateway::{Config, Worker, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(config.otel.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let worker = match Worker::start(config).await {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("tower-ai worker pulling for {}", worker.models().join(", "));
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("worker: can't listen for Ctrl-C: {e}");
    }
    drop(worker);
    if let Err(e) = telemetry.shutdown() {
        eprintln!("worker: {e}");
    }
    ExitCode::SUCCESS
}
