//! A deterministic OpenAI-compatible upstream for tests, benches and demos.
//!
//! `POST /v1/chat/completions` answers every request with text derived from the request alone
//! (a hash of its canonical JSON seeds a small PRNG that picks words), so the same request always
//! gets the same answer, with or without `stream: true`. Streams send one token every
//! [`Config::token_delay`], in OpenAI's exact chunk format. Faults (errors, latency, broken
//! streams, in-band error events) can be switched on at run time, and counters tell a test what
//! the upstream saw.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | the chat completion, JSON or SSE |
//! | `GET /admin/stats` | [`Stats`] as JSON |
//! | `POST /admin/fault` | set the [`Fault`] (JSON body; `{}` clears); answers the fault now in force |
//! | `GET /admin/fault` | the [`Fault`] in force |
//! | `POST /admin/reset` | zero the counters (not `in_flight`); answers the zeroed [`Stats`] |
//! | anything else | `404` (or `405`) with an OpenAI-style error |
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_llm::{Config, Fault, MockLlm};
//!
//! let mock = MockLlm::spawn("127.0.0.1:0", Config::default()).await?;
//! let url = format!("{}/v1/chat/completions", mock.base_url());
//! // ... send requests to `url` ...
//! mock.set_fault(Fault { fail_rate: 0.5, ..Fault::default() });
//! assert_eq!(mock.stats().streams_cancelled, 0);
//! # Ok(()) }
//! ```

mod answer;
mod fault;
mod handle;
mod handler;
mod stats;
mod stream;
mod wire;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;

pub use answer::{Answer, answer};
pub use fault::Fault;
pub use handle::MockHandle;
pub use stats::Stats;

use fault::FaultState;
use stats::Counters;

/// How a [`MockLlm`] behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Time between two token chunks of a stream; a non-streaming answer waits this long once.
    /// Default 20 ms.
    pub token_delay: Duration,
    /// Faults in force from the start. Default: none.
    pub fault: Fault,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token_delay: Duration::from_millis(20),
            fault: Fault::default(),
        }
    }
}

/// The mock upstream: cheap to clone, every clone shares the same counters and faults.
///
/// Serve it with [`MockLlm::spawn`] (tests), [`MockLlm::serve`] (a listener of your own) or
/// mount [`MockLlm::router`] in an axum app.
#[derive(Debug, Clone)]
pub struct MockLlm {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) stats: Counters,
    fault: Mutex<FaultState>,
    /// Flips to `true` once, on [`MockLlm::shutdown`].
    pub(crate) shutdown: watch::Sender<bool>,
}

impl MockLlm {
    /// A mock with this configuration.
    pub fn new(config: Config) -> Self {
        let fault = Mutex::new(FaultState::new(config.fault));
        Self {
            inner: Arc::new(Inner {
                config,
                stats: Counters::default(),
                fault,
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The routes (see the [crate docs](crate)), with this mock as their state.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(handler::chat_completions))
            .route("/admin/stats", get(handler::stats))
            .route("/admin/fault", post(handler::set_fault).get(handler::fault))
            .route("/admin/reset", post(handler::reset))
            .fallback(handler::not_found)
            .method_not_allowed_fallback(handler::method_not_allowed)
            .with_state(self.clone())
    }

    /// Serves the routes on `listener` until [`MockLlm::shutdown`] is called.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "mock-llm listening");
        }
        let mut shutdown = self.inner.shutdown.subscribe();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown_requested(&mut shutdown).await })
            .await
    }

    /// Binds `addr` (port 0 picks a free port), serves a new mock with `config` on it in a
    /// background task, and returns the handle that stops it when dropped.
    pub async fn spawn(addr: impl ToSocketAddrs, config: Config) -> io::Result<MockHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mock = MockLlm::new(config);
        let task = tokio::spawn(mock.clone().serve(listener));
        Ok(MockHandle::new(addr, mock, task))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// Zeroes the counters, except the `in_flight` gauge.
    pub fn reset_stats(&self) {
        self.inner.stats.reset();
    }

    /// Replaces the faults for the requests that arrive from now on (`fail_rate` is clamped to
    /// `0.0..=1.0`) and restarts the failure accumulator.
    pub fn set_fault(&self, fault: Fault) {
        self.fault_state().set(fault);
    }

    /// The faults in force.
    pub fn fault(&self) -> Fault {
        self.fault_state().fault()
    }

    /// Stops every server of this mock (from [`serve`](Self::serve) or
    /// [`spawn`](Self::spawn)): they stop accepting, close idle connections, and end running
    /// streams and stalls at once (streams abruptly). One-way: the mock stays stopped.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    fn fault_state(&self) -> MutexGuard<'_, FaultState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.inner
            .fault
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Completes once [`MockLlm::shutdown`] was called.
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopped| *stopped).await.is_err() {
        // The sender lives in `Inner`; if it is gone nobody can ask for a shutdown any more.
        std::future::pending::<()>().await;
    }
}

/// Seconds since the Unix epoch, for `created`.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
