//! Simulated inference servers: the cost model of one vLLM/SGLang-style server, so that a
//! load-balancer benchmark can run a fleet of them in virtual time and see the effects that
//! matter to routing: queueing, batching and prefix-cache hits.
//!
//! A [`SimServer`] has:
//!
//! * **Tokens.** A prompt is text, tokenized deterministically as 4 bytes of UTF-8 per token
//!   (a last partial token counts as one). An answer is exactly `max_tokens` tokens.
//! * **A KV cache in 16-token blocks**, [`SimConfig::kv_blocks`] of them, with vLLM's prefix
//!   caching: each full prompt block has a chained hash (covering the previous block's hash and
//!   its own bytes), a new sequence reuses the longest run of leading blocks already resident,
//!   and the blocks no running sequence holds are evicted least recently used first. A
//!   running sequence pins its prompt blocks and holds blocks for the rest of its sequence
//!   (the answer's included, reserved at admission, so no running sequence is ever preempted);
//!   a request whose blocks cannot be found waits in the queue. When a sequence ends, its
//!   prompt blocks stay cached.
//! * **Continuous batching**: at most [`SimConfig::slots`] running sequences and a FIFO
//!   waiting queue. The server runs steps; each admits waiting requests while slots and
//!   blocks allow, prefills them, and decodes one token for every running sequence. A step
//!   lasts `c + d × batch` plus `a + b × uncached prompt tokens` per sequence admitted in it,
//!   with `a`, `b`, `c`, `d` the [`Costs`] (calibrated to an 8B model on one A100; see there).
//! * **vLLM's metrics**: [`SimServer::metrics`] and, as Prometheus text,
//!   [`SimServer::metrics_text`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use mock_llm::fleet::{SimConfig, SimEvent, SimServer};
//! use tokio::time::Instant;
//!
//! let server = SimServer::spawn(SimConfig::default());
//! let prompt = "You are a helpful assistant. ".repeat(40); // 1,160 bytes: 290 tokens
//! let mut time_to_first_token = Vec::new();
//! for cached in [0, 288] {
//!     let start = Instant::now();
//!     let mut generation = server.generate(&prompt, 8);
//!     assert_eq!(generation.recv().await, Some(SimEvent::Admitted { cached_tokens: cached }));
//!     assert_eq!(generation.recv().await, Some(SimEvent::Token));
//!     time_to_first_token.push(start.elapsed());
//!     while generation.recv().await.is_some() {}
//! }
//! // 2 ms + 290 × 0.1 ms + 12.1 ms, then 2 ms + 2 × 0.1 ms + 12.1 ms (on whole milliseconds).
//! assert_eq!(time_to_first_token[0].as_millis(), 44);
//! assert_eq!(time_to_first_token[1].as_millis(), 15);
//! assert_eq!(server.metrics().prefix_hit_tokens, 288);
//! # }
//! ```

mod config;
mod generation;
mod kv;
mod metrics;
mod scheduler;
mod server;

#[cfg(test)]
mod tests;

pub use config::{Costs, SimConfig};
pub use generation::{Generation, SimEvent};
pub use metrics::SimMetrics;
pub use server::SimServer;
