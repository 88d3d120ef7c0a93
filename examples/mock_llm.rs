//! A deterministic OpenAI- and Anthropic-compatible upstream, for the gateway example and for
//! trying things out.
//!
//! ```text
//! cargo run --example mock_llm -- [--listen 127.0.0.1:8081] [--token-delay-ms 20]
//! ```
//!
//! Prints the address it listens on to stdout, logs to stderr (`RUST_LOG`, default `info`),
//! and stops on Ctrl-C. Routes (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/responses`, `/v1/messages`, `/v1/models`, `/admin/*`): see the `mock-llm` crate.

use std::error::Error;
use std::time::Duration;

use mock_llm::{Config, MockLlm};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: mock_llm [--listen ADDR] [--token-delay-ms N]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut listen = String::from("127.0.0.1:8081");
    let mut token_delay_ms: u64 = 20;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--token-delay-ms" => {
                token_delay_ms = value()?
                    .parse()
                    .map_err(|e| format!("--token-delay-ms: {e}"))?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("{}", listener.local_addr()?);
    let config = Config {
        token_delay: Duration::from_millis(token_delay_ms),
        ..Config::default()
    };
    let mock = MockLlm::new(config);
    let mut server = tokio::spawn(mock.clone().serve(listener));
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        result = &mut server => return Ok(result??),
    }
    tracing::info!("Ctrl-C: shutting down");
    mock.shutdown();
    Ok(server.await??)
}
