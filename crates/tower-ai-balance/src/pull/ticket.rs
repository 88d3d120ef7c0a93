//! [`Ticket`]: a submitted request's claim on its answer, and the task that
//! reads the answer from its reply stream.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::StreamsInterface;
use fred::types::Value;
use http::Response;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_ai_core::redis::Unavailable;

use super::assemble::{Assembler, Step};
use super::body::{Msg, PullBody};
use super::conn::Lease;
use super::error::PullError;
use super::shared::Shared;
use super::wire::{ReplyEntry, parse_xread};

/// How long one blocking read of a reply stream waits.
const BLOCK: Duration = Duration::from_secs(1);

/// How often a ticket without a connection of its own polls.
const POLL: Duration = Duration::from_millis(20);

/// Entries read at once.
const PAGE: u64 = 64;

/// A submitted request: its id, and the way to its answer.
#[derive(Debug)]
pub struct Ticket {
    shared: Arc<Shared>,
    id: String,
}

impl Ticket {
    pub(super) fn new(shared: Arc<Shared>, id: String) -> Self {
        Self { shared, id }
    }

    /// The request's id: 128 random bits in hex, unguessable, so holding it
    /// is what entitles a reader to the answer (see
    /// [`PullQueue::ticket`](super::PullQueue::ticket)).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The answer: waits until a puller wrote the head (status and
    /// headers), then returns it with a body that streams the chunks as
    /// they arrive.
    ///
    /// The answer is read by a task of its own, with `XREAD BLOCK` on a
    /// connection of its own while one of
    /// [`blocking_connections`](super::PullQueueBuilder::blocking_connections)
    /// is free (else it polls). When the request's puller dies and another
    /// one runs the request again, the client still sees one answer: bytes
    /// it already has are not sent twice (see the
    /// [module documentation](super) for what this assumes).
    ///
    /// Fails when the puller wrote an error before the head
    /// ([`PullError::Upstream`]), when nothing came for
    /// [`reply_ttl`](super::PullQueueBuilder::reply_ttl)
    /// ([`PullError::Timeout`]), or when Redis stayed unreachable for
    /// [`claim_idle`](super::PullQueueBuilder::claim_idle)
    /// ([`PullError::Redis`]).
    pub async fn response(self) -> Result<Response<PullBody>, PullError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(PullError::Lost);
        };
        let (tx, mut rx) = mpsc::channel(16);
        let key = self.shared.reply_key(&self.id);
        runtime.spawn(follow(self.shared, key, tx));
        match rx.recv().await {
            Some(Msg::Head(status, headers)) => {
                let mut res = Response::new(PullBody::new(rx));
                *res.status_mut() = status;
                *res.headers_mut() = headers;
                Ok(res)
            }
            Some(Msg::Fail(e)) => Err(e),
            Some(Msg::Data(_) | Msg::End) | None => Err(PullError::Lost),
        }
    }
}

/// Reads reply stream `key` from its start and hands the answer on to `tx`,
/// until the answer ends or nobody listens.
async fn follow(shared: Arc<Shared>, key: String, tx: mpsc::Sender<Msg>) {
    let outcome = read(&shared, &key, &tx).await;
    metrics::counter!("tower_ai_balance_pull_answers_total", "outcome" => outcome).increment(1);
}

async fn read(shared: &Arc<Shared>, key: &str, tx: &mpsc::Sender<Msg>) -> &'static str {
    let settings = &shared.settings;
    let degrade = &shared.degrade;
    let block_ms = u64::try_from(BLOCK.as_millis()).unwrap_or(1000);
    let mut lease: Option<Lease> = shared.pool.acquire().await;
    let mut lease_tried = Instant::now();
    let mut assembler = Assembler::default();
    let mut last_id = String::from("0-0");
    let mut last_entry = Instant::now();
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(20);
    loop {
        if tx.is_closed() {
            return "dropped";
        }
        if last_entry.elapsed() >= settings.reply_ttl {
            let _ = tx.send(Msg::Fail(PullError::Timeout)).await;
            return "timeout";
        }
        if lease.is_none() && lease_tried.elapsed() >= BLOCK {
            lease = shared.pool.acquire().await;
            lease_tried = Instant::now();
        }
        let reply: Result<Value, Unavailable> = match lease.as_ref().and_then(Lease::client) {
            Some(client) => {
                degrade
                    .call_within(
                        BLOCK
                            .saturating_add(degrade.timeout())
                            .saturating_add(Duration::from_secs(1)),
                        client.xread::<Value, _, _>(Some(PAGE), Some(block_ms), key, &*last_id),
                    )
                    .await
            }
            None => {
                tokio::time::sleep(POLL).await;
                shared.read(key, &last_id, PAGE).await
            }
        };
        let entries = match reply {
            Ok(reply) => {
                failing_since = None;
                backoff = Duration::from_millis(20);
                parse_xread(reply)
            }
            Err(error) => {
                if !matches!(error, Unavailable::Degraded { .. })
                    && let Some(mut spoiled) = lease.take()
                {
                    spoiled.spoil();
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::debug!(component = "balance-pull", error = %error, "reading an answer failed");
                if since.elapsed() >= settings.claim_idle {
                    let _ = tx.send(Msg::Fail(PullError::Redis(error))).await;
                    return "redis";
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        for (id, fields) in entries {
            last_id = id;
            last_entry = Instant::now();
            let Some(entry) = ReplyEntry::parse(fields) else {
                tracing::debug!(
                    component = "balance-pull",
                    "a malformed reply entry skipped"
                );
                continue;
            };
            let (msg, outcome) = match assembler.push(entry) {
                Step::Skip => continue,
                Step::Head(status, headers) => (Msg::Head(status, headers), None),
                Step::Data(data) => (Msg::Data(data), None),
                Step::End => (Msg::End, Some("end")),
                Step::Fail(e) => (Msg::Fail(e), Some("error")),
            };
            if tx.send(msg).await.is_err() {
                return "dropped";
            }
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }
}
