//! [`Puller`]: takes requests from a [`PullQueue`] while its endpoint has a
//! free slot, runs them through a service, and writes the answers back.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fred::interfaces::StreamsInterface;
use fred::types::Value;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower::{BoxError, Service};
use tower_ai_core::llm::ChatRequest;
use tower_ai_core::redis::Unavailable;

use super::conn::Dedicated;
use super::queue::PullQueue;
use super::shared::{Claimed, GROUP, Shared, Write, is_nogroup, millis};
use super::wire::{Kind, MAX_CHUNK, decode_request, encode_head, parse_xread};

/// One worker of an endpoint: it holds `slots` permits and takes a request
/// from the queue only with a permit in hand, so it never claims work it
/// can't start at once.
///
/// For each request it calls the service with the rebuilt request, writes
/// the head and then each body chunk (at most 64 KiB each) to the request's
/// reply stream, and at the end acknowledges and deletes the queue entry,
/// in the same script as the end marker. While a request runs it
/// heartbeats it every [`heartbeat`](super::PullQueueBuilder::heartbeat);
/// with a free slot it also looks every half
/// [`claim_idle`](super::PullQueueBuilder::claim_idle) for requests whose
/// puller stopped heartbeating that long, and runs them again as a new
/// attempt.
///
/// Every write checks, in its script, that this attempt still owns the
/// request (the same consumer, and a delivery count equal to the attempt's
/// number): a puller that stalled and was taken over writes nothing more,
/// and stops at its next heartbeat.
///
/// A service error, or a body that fails, is the request's answer (an
/// error the ticket reports); it isn't retried here: put a retrying layer
/// inside the service for that.
pub struct Puller<S> {
    queue: PullQueue,
    consumer: Arc<str>,
    slots: u32,
    max_starting: Option<u64>,
    service: S,
}

impl<S> fmt::Debug for Puller<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Puller")
            .field("queue", &self.queue)
            .field("consumer", &self.consumer)
            .field("slots", &self.slots)
            .field("max_starting", &self.max_starting)
            .finish_non_exhaustive()
    }
}

impl<S> Puller<S> {
    /// A puller named `consumer` (unique among the queue's pullers: an
    /// endpoint and replica name; a restarted puller may reuse its name)
    /// running at most `slots` requests at once (at least 1) through
    /// `service`.
    pub fn new(queue: PullQueue, consumer: impl Into<String>, slots: u32, service: S) -> Self {
        Self {
            queue,
            consumer: Arc::from(consumer.into()),
            slots: slots.max(1),
            max_starting: None,
            service,
        }
    }

    /// Takes a new request only while its requests still starting (called,
    /// with no byte of their answer's body yet: an inference server's queue
    /// and prefill) hold fewer than `tokens` prompt tokens, as estimated
    /// from their bodies (a chat request's messages, else a token per 4
    /// bytes). A request is taken whatever its size when none is starting;
    /// one taken that doesn't fit beside those starting is sent to the
    /// endpoint only once they have started (or after a heartbeat's time).
    ///
    /// An endpoint busy with long prefills then leaves the next request in
    /// the queue for whichever endpoint is free first, instead of taking it
    /// into its own queue behind them; and a long prompt isn't admitted in
    /// the same step as the short ones taken just before it (an inference
    /// server prefills a step's admissions together: their first tokens
    /// would wait for the long prefill). Near saturation, the
    /// time-to-first-token tail narrows. It suits streamed answers, whose
    /// first byte is the first token; a whole answer's first byte is its
    /// end, so unstreamed requests would be held back until others end.
    /// Off by default (only `slots` limit the puller).
    #[must_use]
    pub fn max_starting_tokens(mut self, tokens: u64) -> Self {
        self.max_starting = Some(tokens.max(1));
        self
    }
}

impl<S, B> Puller<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Starts the puller's tasks on the current Tokio runtime.
    ///
    /// Dropping the handle (or [`abort`](PullerHandle::abort)ing it) stops
    /// them at once, the way a killed process stops: requests in flight are
    /// neither finished nor acknowledged, and other pullers take them over
    /// after `claim_idle`.
    ///
    /// # Panics
    /// When called outside a Tokio runtime (as `tokio::spawn` does).
    pub fn spawn(self) -> PullerHandle {
        let task = tokio::spawn(pull(
            Arc::clone(&self.queue.shared),
            self.consumer,
            self.slots,
            self.max_starting,
            self.service,
        ));
        PullerHandle { task }
    }
}

/// A running [`Puller`]: dropping it stops the puller at once.
#[derive(Debug)]
pub struct PullerHandle {
    task: JoinHandle<()>,
}

impl PullerHandle {
    /// Stops the puller at once, like dropping the handle.
    pub fn abort(self) {
        drop(self);
    }

    /// Whether the puller's tasks are gone.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for PullerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The puller's main loop: a permit, then a recovered request or a new one.
/// Its attempts live in a `JoinSet` it owns, so they stop with it.
async fn pull<S, B>(
    shared: Arc<Shared>,
    consumer: Arc<str>,
    slots: u32,
    max_starting: Option<u64>,
    service: S,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(
        usize::try_from(slots)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS),
    ));
    let starting = max_starting.map(|budget| Arc::new(Starting::new(budget)));
    let mut attempts = JoinSet::new();
    let mut connection: Option<Dedicated> = None;
    let mut group_ready = false;
    let mut cursor = String::from("0-0");
    let interval = shared.settings.claim_interval();
    let mut next_claim = Instant::now();
    let mut backoff = Backoff::default();
    let degrade = &shared.degrade;
    loop {
        while attempts.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        if let Some(starting) = &starting {
            starting.room().await;
        }
        // Counted at once (its size once it's read), so the next round
        // sees it.
        let mut permit = Permits {
            slot,
            started: starting.clone().map(|starting| starting.enter(1)),
        };
        if !group_ready {
            match shared.create_group().await {
                Ok(()) => group_ready = true,
                Err(error) => {
                    tracing::debug!(component = "balance-pull", error = %error, "creating the consumer group failed");
                    backoff.wait(&error).await;
                    continue;
                }
            }
        }
        if Instant::now() >= next_claim {
            match shared.claim(&consumer, &cursor).await {
                Ok((next, claimed)) => {
                    backoff.reset();
                    let wrapped = next == "0-0";
                    cursor = next;
                    if let Some(claimed) = claimed {
                        metrics::counter!("tower_ai_balance_pull_claims_total", "how" => "recovered")
                            .increment(1);
                        tracing::debug!(
                            component = "balance-pull",
                            consumer = %consumer,
                            attempt = claimed.attempt,
                            "recovered a request from a puller that stopped"
                        );
                        permit.fit(&claimed, shared.settings.heartbeat).await;
                        let run = attempt(
                            Arc::clone(&shared),
                            Arc::clone(&consumer),
                            claimed,
                            service.clone(),
                            permit,
                        );
                        attempts.spawn(run);
                        continue;
                    }
                    if wrapped {
                        next_claim = Instant::now() + interval;
                    } else {
                        // More pending entries to look at.
                        continue;
                    }
                }
                Err(error) => {
                    if is_nogroup(&error) {
                        group_ready = false;
                    }
                    next_claim = Instant::now() + interval;
                    tracing::debug!(component = "balance-pull", error = %error, "recovering requests failed");
                    backoff.wait(&error).await;
                    continue;
                }
            }
        }
        if connection.is_none() {
            connection = Dedicated::open(shared.pool.template()).await;
        }
        let Some(conn) = &connection else {
            tracing::debug!(
                component = "balance-pull",
                "no connection for reading the queue"
            );
            backoff.wait(&Unavailable::Timeout).await;
            continue;
        };
        let block = next_claim
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        let read = conn.client().xreadgroup::<Value, _, _, _, _>(
            GROUP,
            &*consumer,
            Some(1),
            Some(millis(block).max(1)),
            false,
            shared.queue_key.as_str(),
            ">",
        );
        let within = block
            .saturating_add(degrade.timeout())
            .saturating_add(Duration::from_secs(1));
        match degrade.call_within(within, read).await {
            Ok(reply) => {
                backoff.reset();
                if let Some(entry) = parse_xread(reply).into_iter().next() {
                    metrics::counter!("tower_ai_balance_pull_claims_total", "how" => "new")
                        .increment(1);
                    let claimed = Claimed::delivered(entry);
                    permit.fit(&claimed, shared.settings.heartbeat).await;
                    let run = attempt(
                        Arc::clone(&shared),
                        Arc::clone(&consumer),
                        claimed,
                        service.clone(),
                        permit,
                    );
                    attempts.spawn(run);
                }
            }
            Err(error) => {
                if is_nogroup(&error) {
                    group_ready = false;
                } else if !matches!(error, Unavailable::Degraded { .. }) {
                    // The read may still be blocked there: a new connection.
                    connection = None;
                }
                tracing::debug!(component = "balance-pull", error = %error, "reading the queue failed");
                backoff.wait(&error).await;
            }
        }
    }
}

/// What an attempt holds: a slot to its end, and (with
/// [`Puller::max_starting_tokens`]) its place among the starting requests.
struct Permits {
    slot: OwnedSemaphorePermit,
    started: Option<Started>,
}

impl Permits {
    /// Counts the claimed request's prompt tokens among the starting ones
    /// and, when they don't fit in the budget beside the others', waits
    /// until the others have started (at most `limit`, less than a heartbeat,
    /// as nothing heartbeats the request yet). An inference server prefills
    /// the requests it admits together in one step, so a short prompt
    /// admitted with a long one gets its first token only when the long
    /// prefill is done: held back this way, the long prompt reaches the
    /// endpoint after those taken before it, in a step of its own. The
    /// puller takes nothing meanwhile (its budget is spent).
    async fn fit(&mut self, claimed: &Claimed, limit: Duration) {
        let Some(started) = &mut self.started else {
            return;
        };
        let tokens = claimed
            .fields
            .iter()
            .find(|(name, _)| name == "body")
            .and_then(|(_, body)| body.as_bytes())
            .map_or(1, prompt_tokens);
        started.set(tokens);
        let starting = &started.starting;
        let fits = |all: u64| all == tokens || all <= starting.budget;
        let _ = tokio::time::timeout(limit, starting.until(fits)).await;
    }
}

/// The prompt tokens of a puller's requests still starting, against its
/// budget.
#[derive(Debug)]
struct Starting {
    budget: u64,
    tokens: AtomicU64,
    /// Wakes the puller's loop when a request stops starting.
    freed: Notify,
}

impl Starting {
    fn new(budget: u64) -> Self {
        Self {
            budget,
            tokens: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// Waits until the starting requests hold fewer tokens than the budget.
    async fn room(&self) {
        self.until(|all| all < self.budget).await;
    }

    /// Waits until `ready` holds for the starting requests' tokens.
    async fn until(&self, ready: impl Fn(u64) -> bool) {
        loop {
            let freed = self.freed.notified();
            if ready(self.tokens.load(Ordering::Acquire)) {
                return;
            }
            freed.await;
        }
    }

    /// Counts `tokens` as starting until the guard is dropped.
    fn enter(self: Arc<Self>, tokens: u64) -> Started {
        self.tokens.fetch_add(tokens, Ordering::AcqRel);
        Started {
            starting: self,
            tokens,
        }
    }
}

/// One request's tokens among the starting ones, until dropped.
struct Started {
    starting: Arc<Starting>,
    tokens: u64,
}

impl Started {
    /// Counts `tokens` instead.
    fn set(&mut self, tokens: u64) {
        if tokens > self.tokens {
            self.starting
                .tokens
                .fetch_add(tokens - self.tokens, Ordering::AcqRel);
        } else {
            self.starting
                .tokens
                .fetch_sub(self.tokens - tokens, Ordering::AcqRel);
            self.starting.freed.notify_one();
        }
        self.tokens = tokens;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.starting
            .tokens
            .fetch_sub(self.tokens, Ordering::AcqRel);
        self.starting.freed.notify_one();
    }
}

/// A request body's prompt tokens: a chat request's estimate, else a token
/// per 4 bytes.
fn prompt_tokens(body: &[u8]) -> u64 {
    ChatRequest::from_json(body).map_or_else(
        |_| (body.len() as u64).div_ceil(4),
        |request| request.estimated_prompt_tokens(),
    )
}

/// Waits between failed calls: while Redis is marked down, until its next
/// probe; otherwise 50 ms doubling to 2 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(50))
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    async fn wait(&mut self, error: &Unavailable) {
        let wait = match error {
            Unavailable::Degraded { retry_in } => {
                (*retry_in).clamp(Duration::from_millis(5), Duration::from_secs(2))
            }
            _ => {
                let wait = self.0;
                self.0 = (self.0 * 2).min(Duration::from_secs(2));
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Why an attempt stopped writing.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Another attempt owns the request now (or it is done).
    Lost,
    /// Redis kept failing; the request is left pending for a new attempt.
    Unavailable,
}

impl Stop {
    fn outcome(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One attempt's writes to its reply stream.
struct Writer<'a> {
    shared: &'a Shared,
    consumer: &'a str,
    entry_id: &'a str,
    attempt: u64,
    reply_key: &'a str,
}

impl Writer<'_> {
    /// Writes one entry (`None`: only acknowledges the request), retrying
    /// a failed call for up to half `claim_idle`. A retried write may land
    /// twice; readers place data by its offset, so it counts once.
    async fn put(&self, kind: Option<Kind>, offset: u64, payload: Bytes) -> Result<(), Stop> {
        let write = Write {
            consumer: self.consumer,
            entry_id: self.entry_id,
            attempt: self.attempt,
            reply_key: self.reply_key,
            kind,
            offset,
            payload,
        };
        let deadline = Instant::now() + self.shared.settings.write_patience();
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.shared.write(&write).await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(Stop::Lost),
                Err(error) => {
                    let wait = match error {
                        Unavailable::Degraded { retry_in } => retry_in.max(backoff),
                        _ => backoff,
                    };
                    if wait > deadline.saturating_duration_since(Instant::now()) {
                        tracing::debug!(component = "balance-pull", error = %error, "an answer can't be written; leaving the request to a new attempt");
                        return Err(Stop::Unavailable);
                    }
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Writes the final error entry with `reason`.
    async fn fail(&self, offset: u64, reason: impl fmt::Display) -> Result<(), Stop> {
        self.put(Some(Kind::Error), offset, Bytes::from(reason.to_string()))
            .await
    }
}

/// Runs one attempt of one request, holding one of the puller's permits.
async fn attempt<S, B>(
    shared: Arc<Shared>,
    consumer: Arc<str>,
    claimed: Claimed,
    service: S,
    permits: Permits,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let Permits {
        slot: _slot,
        started,
    } = permits;
    let Claimed {
        entry_id,
        attempt,
        fields,
    } = claimed;
    let queued = decode_request(fields);
    let reply_key = shared.reply_key(queued.id.as_deref().unwrap_or("invalid"));
    let writer = Writer {
        shared: &shared,
        consumer: &consumer,
        entry_id: &entry_id,
        attempt,
        reply_key: &reply_key,
    };
    let max = shared.settings.max_attempts;
    let outcome = if queued.id.is_none() {
        // Nobody can be waiting for an answer without an id: drop it.
        outcome(writer.put(None, 0, Bytes::new()).await, "invalid")
    } else if attempt > max {
        let reason = format!("gave up after {max} attempts");
        outcome(writer.fail(0, reason).await, "gave_up")
    } else {
        match queued.request {
            Err(reason) => outcome(writer.fail(0, reason).await, "invalid"),
            Ok(request) => {
                let restarted = if attempt > 1 {
                    writer.put(Some(Kind::Restart), 0, Bytes::new()).await
                } else {
                    Ok(())
                };
                match restarted {
                    Err(stop) => stop.outcome(),
                    Ok(()) => {
                        race(
                            serve(&writer, service, request, started),
                            heartbeat(&writer),
                        )
                        .await
                    }
                }
            }
        }
    };
    metrics::counter!("tower_ai_balance_pull_attempts_total", "outcome" => outcome).increment(1);
}

fn outcome(written: Result<(), Stop>, done: &'static str) -> &'static str {
    match written {
        Ok(()) => done,
        Err(stop) => stop.outcome(),
    }
}

/// Calls the service and writes its answer: the head, the chunks, the end.
/// `started` is let go at the body's first frame (or its end).
async fn serve<S, B>(
    writer: &Writer<'_>,
    mut service: S,
    request: Request<Bytes>,
    mut started: Option<Started>,
) -> &'static str
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let request = request.map(Full::new);
    // Errors become `BoxError` at once: the service's own may not be `Send`.
    let ready: Result<(), BoxError> = poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into);
    let response: Result<Response<B>, BoxError> = match ready {
        Ok(()) => service.call(request).await.map_err(Into::into),
        Err(error) => Err(error),
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => return outcome(writer.fail(0, error).await, "error"),
    };
    let (parts, body) = response.into_parts();
    let head = encode_head(parts.status, &parts.headers);
    if let Err(stop) = writer.put(Some(Kind::Head), 0, head).await {
        return stop.outcome();
    }
    let mut body = pin!(body);
    let mut offset = 0u64;
    // A frame read while gathering data, to handle next.
    let mut ahead: Option<Option<Result<Frame<Bytes>, BoxError>>> = None;
    loop {
        let frame = match ahead.take() {
            Some(frame) => frame,
            None => body
                .frame()
                .await
                .map(|frame| frame.map_err(Into::<BoxError>::into)),
        };
        drop(started.take());
        let data = match frame {
            None => {
                return outcome(
                    writer.put(Some(Kind::End), offset, Bytes::new()).await,
                    "end",
                );
            }
            Some(Err(error)) => return outcome(writer.fail(offset, error).await, "error"),
            // Trailers aren't carried.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        // What else the body has ready goes in the same write: one write a
        // round trip, however fast the tokens come.
        let mut data = gather(body.as_mut(), data, &mut ahead);
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_CHUNK));
            let len = piece.len() as u64;
            if let Err(stop) = writer.put(Some(Kind::Data), offset, piece).await {
                return stop.outcome();
            }
            offset += len;
        }
    }
}

/// `first`, then the data frames `body` has ready now, up to [`MAX_CHUNK`]
/// bytes in all; a frame that isn't data (or the end) is left in `ahead`.
fn gather<B>(
    mut body: Pin<&mut B>,
    first: Bytes,
    ahead: &mut Option<Option<Result<Frame<Bytes>, BoxError>>>,
) -> Bytes
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut waker = Context::from_waker(Waker::noop());
    let mut gathered: Option<BytesMut> = None;
    let mut len = first.len();
    while len < MAX_CHUNK {
        let frame = match body.as_mut().poll_frame(&mut waker) {
            Poll::Pending => break,
            Poll::Ready(frame) => frame.map(|frame| frame.map_err(Into::<BoxError>::into)),
        };
        match frame {
            Some(Ok(frame)) if frame.is_data() => {
                let Ok(data) = frame.into_data() else { break };
                len += data.len();
                gathered
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&data);
            }
            other => {
                *ahead = Some(other);
                break;
            }
        }
    }
    gathered.map_or(first, BytesMut::freeze)
}

/// Heartbeats the attempt's request until the attempt no longer owns it.
async fn heartbeat(writer: &Writer<'_>) -> &'static str {
    let every = writer.shared.settings.heartbeat;
    loop {
        tokio::time::sleep(every).await;
        match writer
            .shared
            .heartbeat(writer.consumer, writer.entry_id, writer.attempt)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    component = "balance-pull",
                    "a request was taken over; its attempt stops"
                );
                return Stop::Lost.outcome();
            }
            Err(error) => {
                tracing::debug!(component = "balance-pull", error = %error, "a heartbeat failed");
            }
        }
    }
}

/// Whichever of `a` and `b` finishes first; the other is dropped.
async fn race<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        b.as_mut().poll(cx)
    })
    .await
}
