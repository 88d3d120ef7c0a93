//! Pull mode (feature `redis`): requests for a model wait in a Redis
//! Stream, and each endpoint's [`Puller`] takes one only when the endpoint
//! has a free slot, runs it, and streams the answer back through Redis.
//!
//! Where push balancing guesses each endpoint's load, pull mode lets the
//! endpoints say it: a puller with `slots` permits never holds more than
//! `slots` requests, and an idle endpoint takes the next request at once.
//! A request whose puller dies is taken over by another after
//! [`claim_idle`](PullQueueBuilder::claim_idle); none is lost, and the
//! client sees exactly one answer.
//!
//! # Keys and commands
//!
//! All of a queue's keys share one hash tag, its name, so every script runs
//! on one Cluster node:
//!
//! | key | what |
//! |---|---|
//! | `{prefix}:balance:{name}:queue` | the requests (a Stream), read by the consumer group `pullers` |
//! | `{prefix}:balance:{name}:reply:{id}` | one request's answer (a Stream), kept [`reply_ttl`](PullQueueBuilder::reply_ttl) after its last entry |
//!
//! - **Submit**: one script, `XLEN` (the [`max_queued`](PullQueueBuilder::max_queued)
//!   bound) + `XADD` of the method, path and query, `content-type`,
//!   `accept`, body, and a random 128-bit id.
//! - **Claim**: `XREADGROUP GROUP pullers <consumer> COUNT 1 BLOCK … STREAMS
//!   queue >`, on the puller's own connection, only with a free slot in
//!   hand. With a free slot, every half `claim_idle`, one script runs
//!   `XAUTOCLAIM … <claim_idle> … COUNT 1` and reads the claimed entry's
//!   delivery count (`XPENDING`): that count is the new attempt's number.
//! - **Answer**: one script per entry: checks with `XPENDING` that the
//!   attempt still owns the request (its consumer, its delivery count),
//!   then `XADD`s `attempt`, `kind` (`restart`, `head`, `data`, `end`,
//!   `error`), `offset` and `payload` to the reply stream and `PEXPIRE`s
//!   it; a chunk also heartbeats (`XCLAIM … JUSTID`, which resets the idle
//!   time without counting a delivery), and `end`/`error` `XACK` and `XDEL`
//!   the request instead.
//! - **Heartbeat**, every [`heartbeat`](PullQueueBuilder::heartbeat) while
//!   a request runs: the same ownership check, then `XCLAIM … JUSTID`. A
//!   puller that finds it no longer owns its request stops working on it.
//! - **Read**: the ticket's `XREAD BLOCK` on the reply stream from its
//!   start, on a connection of its own (a bounded set; past it, tickets
//!   poll with a non-blocking `XREAD`).
//!
//! # One answer, even across attempts
//!
//! Each attempt tags its entries with its number, and writes a `restart`
//! marker first. Data entries carry their offset in their attempt's body.
//! The ticket reads the stream in order: it ignores entries of an attempt
//! older than the newest it has seen (late writes of a dead puller),
//! counts the body bytes it has passed on, and skips that many bytes of a
//! new attempt's body, passing on only what lies past them.
//!
//! This assumes the upstream answers the same request the same way, as
//! the mock LLM does, and a model with a fixed seed or at temperature 0.
//! When it doesn't, the body ends with [`PullError::Diverged`] rather than
//! a garbled text: when the new attempt's status differs, when the bytes it
//! replays differ from those passed on (by a 64-bit digest), or when its
//! body is shorter.
//!
//! A body ends cleanly only at the end marker; an error marker, an
//! attempt limit reached, or a reply stream that can't be read any longer
//! end it with an error.
//!
//! # Degrade
//!
//! Every Redis call goes through the queue's
//! [`Degrade`](tower_ai_core::redis::Degrade), with its timeout; blocking
//! reads share its health with a timeout of their own. There is no local
//! fallback: while Redis is down, `submit` fails at once, pullers wait for
//! its next probe, and a write that can't be made within half `claim_idle`
//! leaves its request to a new attempt.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::service_fn;
//! use tower_ai_balance::pull::{PullQueue, Puller};
//! use tower_ai_core::redis::{ConnectOptions, connect};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default()).await?;
//! let queue = PullQueue::builder(client, "llama-3-8b")
//!     .prefix("my-app")
//!     .build();
//!
//! // Beside each endpoint: a puller with as many slots as it has.
//! let upstream = service_fn(|req: Request<Full<Bytes>>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
//! });
//! let _puller = Puller::new(queue.clone(), "gpu-0", 8, upstream).spawn();
//!
//! // On the gateway: submit, then stream the answer.
//! let request = Request::post("/v1/chat/completions").body(Bytes::from("{}"))?;
//! let ticket = queue.submit(request).await?;
//! let answer = ticket.response().await?;
//! assert_eq!(answer.status(), 200);
//! let body = answer.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "{}");
//! # Ok(()) }
//! ```

mod assemble;
mod body;
mod conn;
mod error;
mod puller;
mod queue;
mod shared;
mod ticket;
mod wire;

pub use body::PullBody;
pub use error::PullError;
pub use puller::{Puller, PullerHandle};
pub use queue::{PullQueue, PullQueueBuilder};
pub use ticket::Ticket;
