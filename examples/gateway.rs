//! The tower-ai gateway: every layer of the workspace in front of an
//! OpenAI-compatible upstream.
//!
//! ```text
//! cargo run --release --example gateway -- [--listen ADDR] [--upstream URL] [--redis URL]...
//! ```
//!
//! With no flags it needs nothing else: state stays in memory and a mock LLM
//! is started in process as the upstream.

use std::process::ExitCode;

use tower_ai_gateway::{Config, Gateway};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
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
        None => println!("upstream: {}", gateway.upstream_url()),
    }

    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("gateway: can't listen for Ctrl-C: {e}");
    }
    match gateway.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
