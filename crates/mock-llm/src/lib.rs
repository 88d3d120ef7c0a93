//! A deterministic OpenAI- and Anthropic-compatible upstream for tests, benches and demos.
//!
//! Every generating route answers with text derived from the request alone (a hash of its
//! canonical JSON seeds a small PRNG that picks 8 to 40 words), so the same request always gets
//! the same answer, with or without `stream: true`. Streams send one token every
//! [`Config::token_delay`] (or as a simulated vLLM server decodes them, in
//! [simulate mode](#simulate-mode)), in the exact event format of the API the route imitates.
//! Faults (errors, latency, broken streams, in-band error events) can be switched on at run
//! time, and counters tell a test what the upstream saw, down to the credentials of the last
//! request.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | the chat completion, JSON or SSE (`chat.completion.chunk`s, then `[DONE]`) |
//! | `POST /v1/completions` | the legacy text completion, JSON or SSE (`text_completion` chunks, then `[DONE]`) |
//! | `POST /v1/embeddings` | deterministic unit vectors ([`embedding`]): a bag of words, or exactly the similarity a `{{embed:…}}` directive asks for; as floats or base64 |
//! | `POST /v1/responses` | the Responses API: a `response` object, or its named events up to `response.completed` (`response.incomplete` when cut) |
//! | `POST /v1/messages` | Anthropic's Messages API: a `message`, or its named events up to `message_stop`; errors in Anthropic's shape |
//! | `GET /v1/models` | a fixed list of model ids (every route accepts any model name) |
//! | `GET /admin/stats` | [`StatsReport`] as JSON: the [`Stats`] fields, `endpoints` and `last_request` |
//! | `POST /admin/fault` | set the [`Fault`] (JSON body; `{}` clears); answers the fault now in force |
//! | `GET /admin/fault` | the [`Fault`] in force |
//! | `POST /admin/reset` | zero the counters (not `in_flight`) and forget the last request; answers the zeroed [`StatsReport`] |
//! | `GET /metrics` | only in [simulate mode](#simulate-mode): the simulator's vLLM-style Prometheus text ([`SimServer::metrics_text`](fleet::SimServer::metrics_text), `text/plain; version=0.0.4`); `404` otherwise |
//! | anything else | `404` (or `405`) with an OpenAI-style error |
//!
//! [`answer_for`] predicts what a generating route will say to a request, and [`embedding`]
//! the vector of a text, so a test can compare what came through a layer with what the
//! upstream sent.
//!
//! # Token counts
//!
//! Usage numbers are a function of the request, so a test can reconcile them exactly. A *word*
//! is a whitespace-separated piece of text; a token-id array (`[1, 2, 3]`) counts one per id.
//!
//! | route | prompt tokens (`prompt_tokens` / `input_tokens`) | limit | a cut answer says |
//! |---|---|---|---|
//! | chat completions | per message: 4 + the words of its content (a string, or its `text` parts) | `max_completion_tokens`, else `max_tokens` | `finish_reason: "length"` |
//! | completions | the words of `prompt` (of every prompt of an array); no overhead | `max_tokens` | `finish_reason: "length"` |
//! | embeddings | the words of every input; `total_tokens` is the same | | |
//! | responses | per input item: 4 + the words of its content (a string, or its parts' `text`); a string `input` is one item; `instructions`: 4 + its words | `max_output_tokens` | `status: "incomplete"` |
//! | messages | per message: 4 + the words of its content (a string, or its `text` blocks); `system`: 4 + its words | `max_tokens` (required) | `stop_reason: "max_tokens"` |
//!
//! Output tokens (`completion_tokens` / `output_tokens`) are the answer's words, each sent as
//! one token (the word with its leading space), cut at the route's limit; an embedding has
//! none. `total_tokens`, where the API has one, is the sum. Anthropic's `message_start` event
//! reports `output_tokens: 1`, as Anthropic does; its `message_delta` reports the real count.
//! [`Stats::tokens_sent`] adds up the output tokens sent.
//!
//! # Faults
//!
//! A [`Fault`] applies to every model route: `fail_rate` and `latency_ms` to all of them
//! (embeddings included; the failure draw is shared, so its pattern runs across routes),
//! `break_after_tokens` and `error_event` to every stream. The in-band error event is the one
//! of the route's API: `data: {"error":{...}}` (chat, completions), `event: error` with
//! `{"type":"error","code","message","param","sequence_number"}` (responses), `event: error`
//! with `{"type":"error","error":{"type":"overloaded_error","message"}}` (messages).
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
//! assert_eq!(mock.endpoints().messages, 0);
//! # Ok(()) }
//! ```
//!
//! # Echoing the system messages
//!
//! With [`Config::echo_system`] set, chat completions and Anthropic messages answer with the
//! system messages the request carried instead of generated words, so a test can prove what a
//! layer in front of the mock injected:
//!
//! * `POST /v1/chat/completions`: the content of every message whose role is `system` or
//!   `developer` (a string, or its `text` parts concatenated), in order, joined with
//!   `"\n---\n"`.
//! * `POST /v1/messages`: the `system` field (a string, or the `text` of each of its text
//!   blocks, joined with `"\n---\n"`).
//! * No system message: the answer is empty.
//!
//! Streamed or not, the answer is the same; a stream sends it as the usual chunks, one token
//! per piece of text that starts where whitespace follows a word (`"Be brief.\n---\nCite"` is
//! `"Be"`, `" brief."`, `"\n---"`, `"\nCite"`), so the pieces concatenated are the text
//! exactly. Those pieces are the output tokens: `max_tokens` cuts them as usual, and the usage
//! counts them. The other routes (completions, responses) and [`answer_for`] are unaffected.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_llm::{Config, MockLlm};
//!
//! let mock = MockLlm::spawn("127.0.0.1:0", Config { echo_system: true, ..Config::default() })
//!     .await?;
//! // A chat request with messages [system "Be brief.", user "Hi", system "Cite sources."]
//! // is answered "Be brief.\n---\nCite sources.".
//! # Ok(()) }
//! ```
//!
//! # Simulate mode
//!
//! With [`Config::simulate`] set, the mock is served by one simulated vLLM server of its own
//! ([`fleet::SimServer`], spawned on the first request that needs it, see
//! [`MockLlm::simulator`]), so a load balancer can be tested end to end over real sockets
//! against a fleet of mocks that queue, batch and cache prefixes like vLLM:
//!
//! * `POST /v1/chat/completions` (streamed or not) is paced by the simulator instead of
//!   [`Config::token_delay`]. The request is submitted once the checks and the faults have
//!   passed (`latency_ms`, then a `fail_rate` `500`, as usual), with the prompt given by
//!   [`simulated_prompt`] (each message's content text, joined with `\n`) and an answer of as
//!   many tokens as the mock's answer has (cut at `max_tokens`/`max_completion_tokens`). The
//!   simulator counts 4 bytes of that prompt per token; the usage keeps the mock's own counts.
//! * A stream sends its first chunk (the role) with the first answer token, when the simulator
//!   has admitted and prefilled the sequence, then each token chunk as the simulator decodes
//!   that token, and its final chunks once the sequence is done; the chunks are the usual
//!   ones. `break_after_tokens` still cuts it (when the next token is decoded) and
//!   `error_event` still ends it. A non-streamed answer is sent when the sequence is done. A
//!   client that drops a stream cancels its sequence, which frees its slot.
//! * The usage (the JSON answer's, and the usage chunk of a stream with
//!   `stream_options.include_usage`) adds vLLM's `"prompt_tokens_details": {"cached_tokens": N}`,
//!   `N` being the prompt tokens the simulator's prefix cache served for this request: the
//!   prompt's leading 16-token blocks already resident, never its last token (so a prompt of
//!   `T` tokens sent again while its blocks are still cached hits `16 × ⌊(T − 1) / 16⌋` of
//!   them). Without simulate mode there is no `prompt_tokens_details`.
//! * A sequence larger than the simulator's whole KV cache is answered `503` (OpenAI's error
//!   shape, type `server_error`; counted in [`Stats::requests`] only), as is a request still
//!   waiting when the mock shuts down.
//! * `GET /metrics` serves the simulator's metrics.
//! * The other routes (completions, responses, messages, embeddings) are not simulated: they
//!   stay paced by [`Config::token_delay`] and have no `prompt_tokens_details`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_llm::fleet::{Costs, SimConfig};
//! use mock_llm::{Config, MockLlm};
//!
//! let simulate = SimConfig { costs: Costs::default().scaled(0.5), ..SimConfig::default() };
//! let mock = MockLlm::spawn("127.0.0.1:0", Config {
//!     simulate: Some(simulate),
//!     ..Config::default()
//! })
//! .await?;
//! // ... chat requests to `mock.base_url()`, `GET /metrics` for the load ...
//! # Ok(()) }
//! ```

mod admit;
mod answer;
mod anthropic;
mod chat;
mod completions;
mod embeddings;
mod error;
mod fault;
pub mod fleet;
mod generate;
mod handle;
mod handler;
mod responses;
mod simulate;
mod stats;
mod stream;
mod wire;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;

pub use answer::{Answer, Api, answer, answer_for, embedding, simulated_prompt};
pub use fault::Fault;
pub use handle::MockHandle;
pub use stats::{EndpointStats, LastRequest, Stats, StatsReport};

use fault::FaultState;
use fleet::{SimConfig, SimServer};
use stats::Counters;

/// How a [`MockLlm`] behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Time between two token chunks of a stream; a non-streaming answer waits this long once.
    /// Default 20 ms. In [simulate mode](crate#simulate-mode) the simulator paces chat
    /// completions instead; the other routes still use this.
    pub token_delay: Duration,
    /// Faults in force from the start. Default: none.
    pub fault: Fault,
    /// Serve chat completions by a simulated vLLM server with this configuration (see
    /// [simulate mode](crate#simulate-mode)), and its metrics on `GET /metrics`. Default
    /// `None`: paced by `token_delay`, no `/metrics`.
    pub simulate: Option<SimConfig>,
    /// Answer every chat completion and every Anthropic message with the system messages the
    /// request carried instead of the generated words, so a test can see what a layer in front
    /// of the mock injected (see [echoing the system messages](crate#echoing-the-system-messages)).
    /// Default `false`.
    pub echo_system: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            token_delay: Duration::from_millis(20),
            fault: Fault::default(),
            simulate: None,
            echo_system: false,
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
    /// The simulated server of [`Config::simulate`], once spawned.
    simulator: OnceLock<SimServer>,
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
                simulator: OnceLock::new(),
            }),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The simulated server that serves this mock in [simulate mode](crate#simulate-mode), or
    /// `None` without [`Config::simulate`]. Every call (and every clone of the mock) gives the
    /// same server; the first call spawns it, on the current tokio runtime. A test can read
    /// its [`metrics`](SimServer::metrics) directly.
    ///
    /// # Panics
    ///
    /// On the call that spawns the server, if it is made outside a tokio runtime (requests are
    /// always handled inside one).
    pub fn simulator(&self) -> Option<&SimServer> {
        let config = self.inner.config.simulate.as_ref()?;
        Some(
            self.inner
                .simulator
                .get_or_init(|| SimServer::spawn(config.clone())),
        )
    }

    /// The routes (see the [crate docs](crate)), with this mock as their state.
    pub fn router(&self) -> Router {
        let router = Router::new();
        // Without simulate mode the route does not exist: `/metrics` is a 404 as any unknown
        // path (a `POST` too).
        let router = if self.inner.config.simulate.is_some() {
            router.route("/metrics", get(handler::metrics))
        } else {
            router
        };
        router
            .route("/v1/chat/completions", post(chat::chat_completions))
            .route("/v1/completions", post(completions::completions))
            .route("/v1/embeddings", post(embeddings::embeddings))
            .route("/v1/responses", post(responses::responses))
            .route(
                "/v1/messages",
                post(anthropic::messages).fallback(anthropic::method_not_allowed),
            )
            .route("/v1/models", get(handler::models))
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
        // Each event goes out when written, as a model server sends tokens
        // (Nagle's algorithm would hold them behind delayed acknowledgements).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
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

    /// Requests received per route.
    pub fn endpoints(&self) -> EndpointStats {
        self.inner.stats.endpoints()
    }

    /// What the last request to a `/v1` route carried (path, model, credentials), or `None`
    /// if there was none since the start or the last reset.
    pub fn last_request(&self) -> Option<LastRequest> {
        self.inner.stats.last_request()
    }

    /// Everything `GET /admin/stats` serves: [`stats`](Self::stats),
    /// [`endpoints`](Self::endpoints) and [`last_request`](Self::last_request). Each part is
    /// read on its own, so a request arriving meanwhile may show in one and not another.
    pub fn report(&self) -> StatsReport {
        StatsReport {
            stats: self.stats(),
            endpoints: self.endpoints(),
            last_request: self.last_request(),
        }
    }

    /// Zeroes the counters, except the `in_flight` gauge, and forgets the last request.
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
