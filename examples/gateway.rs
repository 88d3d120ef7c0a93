//! The tower-ai gateway: every layer of the workspace in front of an
//! OpenAI-compatible upstream.
//!
//! ```text
//! cargo run --release --example gateway -- [--config FILE] [--listen ADDR] [--upstream URL] [--redis URL]...
//! ```
//!
//! With no flags it needs nothing else: state stays in memory and a mock LLM
//! is started in process as the upstream. `--config` reads a TOML file
//! (`examples/gateway.toml` shows every key); the other flags override it. Logs go to stderr (`RUST_LOG`,
//! default `info`); with an `[otel]` table in the `--config` file, each model
//! call is also a span sent to that OTLP/HTTP collector.

use std::process::ExitCode;

use tower_ai_gateway::{Config, Gateway, telemetry};

// mimalloc: a gateway allocates small, short-lived buffers on every request,
// which glibc's malloc serves slower under contention.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // The config first: it says where traces go. Its errors are printed
    // plainly, before any subscriber exists.
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Logs to stderr (RUST_LOG, default info) and, with an `[otel]` table,
    // traces over OTLP; kept until exit, when it sends what is still queued.
    let telemetry = match telemetry::init(config.otel.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match Gateway::start(config).await {
        Ok(gateway) => gateway,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("tower-ai gateway listening on {}", gateway.url());
    match gateway.mock() {
        Some(mock) => println!("upstream: mock LLM (in process) at {}", mock.base_url()),
        None if gateway.upstream_url().is_empty() => {
            println!("models: {}", gateway.models().join(", "));
        }
        None => println!("upstream: {}", gateway.upstream_url()),
    }

    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("gateway: can't listen for Ctrl-C: {e}");
    }
    let stopped = gateway.shutdown().await;
    // After the gateway: the last answers' spans have ended by now.
    if let Err(e) = telemetry.shutdown() {
        eprintln!("gateway: {e}");
    }
    match stopped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
