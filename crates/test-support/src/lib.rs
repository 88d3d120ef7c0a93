//! What the workspace's tests and benches share.
//!
//! - [`RedisServer::start`] runs a throwaway `redis-server` on a free
//!   loopback port, with no persistence and a temporary directory of its
//!   own, and kills it on drop. It can be stopped and started again on the
//!   same port, for "Redis died, Redis came back" tests.
//!   [`RedisCluster::start`] runs a 3-master Redis Cluster the same way.
//!   [`shared`] holds one of each per test binary, for tests that only need
//!   *a* server and keep apart by key prefix.
//! - [`eventually`] and [`eventually_async`] poll a condition up to a bound.
//! - [`chat`] builds the chat-completion request bodies the tests send.
//! - [`sse`] reads `text/event-stream` bodies with the project's own
//!   spec-exact decoder ([`tower_ai_core::sse`]).
//! - `proxy` (feature `http`) serves a tower layer in front of a forwarding
//!   client on a loopback port, and `mock_llm` (feature `mock-llm`) starts
//!   the mock LLM upstream.
//! - `tls` (feature `tls`) puts a TLS terminator, with a CA and certificate
//!   made at test time, in front of a loopback server.
//!
//! There is no mock Redis: when `redis-server` is not installed, starting
//! one panics with a message that says how to install it, so the tests fail
//! loudly instead of being skipped. Starting a server blocks the calling
//! thread until it answers `PING` (usually a few milliseconds).

pub mod chat;
mod eventually;
pub mod postgres;
#[cfg(feature = "http")]
pub mod proxy;
mod redis;
pub mod search;
pub mod shared;
pub mod sse;
#[cfg(feature = "tls")]
pub mod tls;

pub use eventually::{eventually, eventually_async};
pub use redis::{RedisCluster, RedisServer};

/// The mock LLM on a free loopback port, answering each token after
/// `token_delay`; it stops when the handle is dropped.
///
/// # Panics
/// When it can't start.
#[cfg(feature = "mock-llm")]
pub async fn mock_llm(token_delay: std::time::Duration) -> mock_llm::MockHandle {
    mock_llm::MockLlm::spawn(
        "127.0.0.1:0",
        mock_llm::Config {
            token_delay,
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock LLM starts")
}
