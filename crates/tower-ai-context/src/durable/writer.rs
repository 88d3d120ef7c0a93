//! [`DurableWriter`]: turns recorded synchronously, written by a background
//! task in batches, retried while the sink fails, bounded in memory.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{ConversationSink, SinkError, Turn};

const WRITTEN: &str = "tower_ai_context_durable_written_total";
const FAILURES: &str = "tower_ai_context_durable_failures_total";
const DROPPED: &str = "tower_ai_context_durable_dropped_total";
const QUEUED: &str = "tower_ai_context_durable_queued_turns";

/// How a [`DurableWriter`] batches, bounds and retries.
#[derive(Debug, Clone)]
pub struct DurableConfig {
    every_turns: usize,
    max_queued_turns: usize,
    max_batch_turns: usize,
    max_delay: Duration,
    write_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Default for DurableConfig {
    /// Every 4 turns, at most 10,000 turns held, batches of at most 500
    /// turns, a turn held at most 60 s before it is written, writes that
    /// time out after 30 s, retries after 100 ms doubling to 5 s.
    fn default() -> Self {
        Self {
            every_turns: 4,
            max_queued_turns: 10_000,
            max_batch_turns: 500,
            max_delay: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl DurableConfig {
    /// A conversation's turns are handed to the writer's task once it has
    /// this many unwritten ones (0 is taken as 1: every turn at once).
    #[must_use]
    pub fn every_turns(mut self, every_turns: usize) -> Self {
        self.every_turns = every_turns.max(1);
        self
    }

    /// At most this many turns are held in memory (buffered, queued or being
    /// written); past it, [`DurableWriter::record`] refuses a turn (0 is
    /// taken as 1).
    #[must_use]
    pub fn max_queued_turns(mut self, max_queued_turns: usize) -> Self {
        self.max_queued_turns = max_queued_turns.max(1);
        self
    }

    /// At most this many turns per sink write (0 is taken as 1).
    #[must_use]
    pub fn max_batch_turns(mut self, max_batch_turns: usize) -> Self {
        self.max_batch_turns = max_batch_turns.max(1);
        self
    }

    /// A buffered turn is handed to the task after this long even when its
    /// conversation has fewer than [`every_turns`](Self::every_turns)
    /// unwritten turns and never [ends](DurableWriter::end) (an abandoned
    /// session).
    #[must_use]
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// A sink write that takes longer counts as a failure and is retried.
    #[must_use]
    pub fn write_timeout(mut self, write_timeout: Duration) -> Self {
        self.write_timeout = write_timeout;
        self
    }

    /// After a failed write, the task waits `initial`, doubling after each
    /// further failure up to `max`, then tries the same turns again.
    #[must_use]
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }
}

/// Why a [`DurableWriter`] call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriterError {
    /// The writer holds [`max_queued_turns`](DurableConfig::max_queued_turns)
    /// already: the turn was refused (and counted), not waited for.
    QueueFull,
    /// The writer's task is gone (its runtime shut down): nothing more will
    /// be written.
    Closed,
}

impl fmt::Display for WriterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull => f.write_str("the durable writer's queue is full: turn refused"),
            Self::Closed => f.write_str("the durable writer's task is gone"),
        }
    }
}

impl std::error::Error for WriterError {}

/// What a [`DurableWriter`] has done since it was spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriterStats {
    /// Turns held now: buffered, queued or being written.
    pub held: usize,
    /// Turns written.
    pub written: u64,
    /// Turns refused by [`record`](DurableWriter::record) because the
    /// queue was full.
    pub refused: u64,
    /// Turns the sink rejected for good (and the writer dropped).
    pub rejected: u64,
    /// Failed write attempts (each was retried).
    pub failures: u64,
}

/// Writes conversations to a [`ConversationSink`] off the request path.
///
/// [`record`](Self::record) buffers a turn under its conversation and
/// returns at once: it takes a short lock and never awaits the sink. When a
/// conversation has [`every_turns`](DurableConfig::every_turns) unwritten
/// turns, at [`end`](Self::end), after
/// [`max_delay`](DurableConfig::max_delay) or at [`flush`](Self::flush),
/// its turns join a queue that a background task writes in order, in
/// batches. A failed write is retried (same turns, same order) with
/// backoff until it succeeds, so queued turns are never lost while the
/// process lives, and never duplicated, since sinks upsert. A turn the sink
/// rejects for good ([`SinkError::Rejected`]) is dropped alone: a rejected
/// batch is retried turn by turn.
///
/// Memory is bounded by [`max_queued_turns`](DurableConfig::max_queued_turns):
/// when that many turns are held, `record` refuses the turn
/// ([`WriterError::QueueFull`]) and counts it.
///
/// Clones share the writer. When the last clone is dropped, the task hands
/// over every buffered turn, writes what it holds and ends (while the sink
/// fails it keeps retrying, until its runtime shuts down).
///
/// Metrics: `tower_ai_context_durable_written_total`,
/// `tower_ai_context_durable_failures_total` (failed attempts),
/// `tower_ai_context_durable_dropped_total{reason="queue_full"|"rejected"}`
/// and the gauge `tower_ai_context_durable_queued_turns` (turns held).
#[derive(Clone)]
pub struct DurableWriter {
    handle: Arc<Handle>,
}

/// Closes the writer when the last clone goes.
struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    config: DurableConfig,
    sink: Arc<dyn ConversationSink>,
    state: Mutex<State>,
    /// Wakes the task: turns were queued, or the writer closed.
    wake: Notify,
    /// How many turns were written or dropped, in queue order.
    completed: watch::Sender<u64>,
    /// Set when the task ends, however it ends.
    task_gone: AtomicBool,
    written: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Each conversation's turns not yet handed to the task.
    buffers: HashMap<String, Buffer>,
    /// Turns handed to the task, in order.
    queue: VecDeque<Turn>,
    /// Turns buffered, queued or being written.
    held: usize,
    /// How many turns ever joined the queue.
    enqueued: u64,
    /// No buffer is due before this (none when there are no buffers).
    next_due: Option<Instant>,
    /// The last clone of the writer is gone.
    closed: bool,
}

struct Buffer {
    turns: Vec<Turn>,
    /// When its oldest turn was recorded.
    since: Instant,
}

impl State {
    /// Moves a conversation's buffered turns to the queue; how many.
    fn hand_over(&mut self, conversation: &str) -> usize {
        match self.buffers.remove(conversation) {
            Some(buffer) => self.enqueue(buffer.turns),
            None => 0,
        }
    }

    fn hand_over_all(&mut self) -> usize {
        let buffers = std::mem::take(&mut self.buffers);
        self.next_due = None;
        buffers
            .into_values()
            .map(|buffer| self.enqueue(buffer.turns))
            .sum()
    }

    /// Hands over the buffers held longer than `max_delay`.
    fn hand_over_due(&mut self, now: Instant, max_delay: Duration) {
        if self.next_due.is_none_or(|due| due > now) {
            return;
        }
        let due: Vec<String> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.since.checked_add(max_delay).is_some_and(|due| due <= now))
            .map(|(conversation, _)| conversation.clone())
            .collect();
        for conversation in due {
            self.hand_over(&conversation);
        }
        self.next_due = self
            .buffers
            .values()
            .filter_map(|b| b.since.checked_add(max_delay))
            .min();
    }

    fn enqueue(&mut self, turns: Vec<Turn>) -> usize {
        let n = turns.len();
        self.queue.extend(turns);
        self.enqueued += n as u64;
        n
    }
}

impl DurableWriter {
    /// Starts the writer's task on the current Tokio runtime.
    ///
    /// # Panics
    /// When called outside a Tokio runtime (as `tokio::spawn` does).
    pub fn spawn(sink: Arc<dyn ConversationSink>, config: DurableConfig) -> Self {
        let shared = Arc::new(Shared {
            config,
            sink,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            completed: watch::Sender::new(0),
            task_gone: AtomicBool::new(false),
            written: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        // The guard is made here, not in the task, so it is dropped (and
        // the task marked gone) even when the task is never polled.
        tokio::spawn(run(TaskGuard(Arc::clone(&shared))));
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Buffers `turn` under its conversation; hands the conversation's
    /// turns to the task when it has
    /// [`every_turns`](DurableConfig::every_turns) unwritten ones. Never
    /// blocks on the sink: a short lock, an allocation for a new
    /// conversation.
    ///
    /// # Errors
    /// [`WriterError::QueueFull`] when the writer holds
    /// [`max_queued_turns`](DurableConfig::max_queued_turns) turns (the turn
    /// is counted and dropped); [`WriterError::Closed`] when its task is gone.
    pub fn record(&self, turn: Turn) -> Result<(), WriterError> {
        let shared = &self.handle.shared;
        if shared.task_gone.load(Ordering::Acquire) {
            return Err(WriterError::Closed);
        }
        let mut state = shared.state.lock();
        if state.held >= shared.config.max_queued_turns {
            drop(state);
            shared.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(DROPPED, "reason" => "queue_full").increment(1);
            tracing::debug!(
                conversation = %turn.conversation,
                index = turn.index,
                "durable writer full: turn refused"
            );
            return Err(WriterError::QueueFull);
        }
        state.held += 1;
        metrics::gauge!(QUEUED).increment(1.0);
        let buffered = state
            .buffers
            .get(&turn.conversation)
            .map_or(0, |buffer| buffer.turns.len());
        if buffered + 1 >= shared.config.every_turns {
            let mut turns = state
                .buffers
                .remove(&turn.conversation)
                .map(|buffer| buffer.turns)
                .unwrap_or_default();
            turns.push(turn);
            state.enqueue(turns);
            drop(state);
            shared.wake.notify_one();
            return Ok(());
        }
        if let Some(buffer) = state.buffers.get_mut(&turn.conversation) {
            buffer.turns.push(turn);
        } else {
            let since = Instant::now();
            if state.next_due.is_none() {
                // A later buffer is never due before an earlier one: the
                // earliest due time changes only when there was none.
                state.next_due = since.checked_add(shared.config.max_delay);
            }
            let conversation = turn.conversation.clone();
            let buffer = Buffer {
                turns: vec![turn],
                since,
            };
            state.buffers.insert(conversation, buffer);
        }
        Ok(())
    }

    /// The session ended: hands `conversation`'s buffered turns to the task
    /// now, whatever their number. Returns how many.
    pub fn end(&self, conversation: &str) -> usize {
        let shared = &self.handle.shared;
        let n = shared.state.lock().hand_over(conversation);
        if n > 0 {
            shared.wake.notify_one();
        }
        n
    }

    /// Hands every buffered turn to the task and waits until every turn
    /// queued so far is written (or rejected for good by the sink).
    ///
    /// While the sink fails this waits for as long as it fails: at
    /// shutdown, bound it with `tokio::time::timeout`.
    ///
    /// # Errors
    /// [`WriterError::Closed`] when the writer's task is gone.
    pub async fn flush(&self) -> Result<(), WriterError> {
        let shared = &self.handle.shared;
        let mut completed = shared.completed.subscribe();
        let target = {
            let mut state = shared.state.lock();
            state.hand_over_all();
            state.enqueued
        };
        shared.wake.notify_one();
        let reached = completed
            .wait_for(|&done| done >= target || shared.task_gone.load(Ordering::Acquire))
            .await
            .map(|done| *done >= target);
        match reached {
            Ok(true) => Ok(()),
            _ => Err(WriterError::Closed),
        }
    }

    /// What the writer has done so far, and how many turns it holds.
    pub fn stats(&self) -> WriterStats {
        let shared = &self.handle.shared;
        WriterStats {
            held: shared.state.lock().held,
            written: shared.written.load(Ordering::Relaxed),
            refused: shared.refused.load(Ordering::Relaxed),
            rejected: shared.rejected.load(Ordering::Relaxed),
            failures: shared.failures.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for DurableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableWriter")
            .field("config", &self.handle.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        state.hand_over_all();
        drop(state);
        self.shared.wake.notify_one();
    }
}

/// Marks the task gone when it ends, also when its runtime drops it.
struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.task_gone.store(true, Ordering::Release);
        let held = self.0.state.lock().held;
        if held > 0 {
            metrics::gauge!(QUEUED).decrement(held as f64);
            tracing::warn!(turns = held, "durable writer stopped with turns unwritten");
        }
        // Wakes the flushes waiting, so they see the task is gone.
        self.0.completed.send_modify(|_| {});
    }
}

/// The writer's task: takes batches off the queue and writes them.
async fn run(guard: TaskGuard) {
    let shared = &guard.0;
    let config = &shared.config;
    loop {
        let (batch, next_due) = {
            let mut state = shared.state.lock();
            state.hand_over_due(Instant::now(), config.max_delay);
            let n = state.queue.len().min(config.max_batch_turns);
            let batch: Vec<Turn> = state.queue.drain(..n).collect();
            if batch.is_empty() && state.closed && state.buffers.is_empty() {
                return;
            }
            (batch, state.next_due)
        };
        if batch.is_empty() {
            match next_due {
                Some(due) => {
                    let _ = tokio::time::timeout_at(due, shared.wake.notified()).await;
                }
                None => shared.wake.notified().await,
            }
            continue;
        }
        let n = batch.len();
        deliver(shared, batch).await;
        shared.state.lock().held -= n;
        metrics::gauge!(QUEUED).decrement(n as f64);
        shared.completed.send_modify(|done| *done += n as u64);
    }
}

/// Writes `batch` until it is written, retrying transient failures with
/// backoff; a batch the sink rejects is retried turn by turn, and a turn it
/// rejects alone is dropped.
async fn deliver(shared: &Shared, batch: Vec<Turn>) {
    let config = &shared.config;
    let mut backoff = config.retry_initial;
    // Chunks still to write, in order: the batch, or its turns one by one
    // once the sink rejected it whole.
    let mut chunks: VecDeque<Vec<Turn>> = VecDeque::from([batch]);
    while let Some(chunk) = chunks.front() {
        let outcome =
            match tokio::time::timeout(config.write_timeout, shared.sink.write(chunk)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(SinkError::Unavailable(format!(
                    "the write timed out after {:?}",
                    config.write_timeout
                ))),
            };
        match outcome {
            Ok(()) => {
                let n = chunk.len() as u64;
                shared.written.fetch_add(n, Ordering::Relaxed);
                metrics::counter!(WRITTEN).increment(n);
                chunks.pop_front();
                backoff = config.retry_initial;
            }
            Err(error) if !error.is_transient() => {
                let Some(chunk) = chunks.pop_front() else {
                    break;
                };
                if let [turn] = chunk.as_slice() {
                    shared.rejected.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(DROPPED, "reason" => "rejected").increment(1);
                    tracing::warn!(
                        conversation = %turn.conversation,
                        index = turn.index,
                        %error,
                        "the conversation store rejected a turn: dropped"
                    );
                } else {
                    for turn in chunk.into_iter().rev() {
                        chunks.push_front(vec![turn]);
                    }
                }
            }
            Err(error) => {
                let failures = shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!(FAILURES).increment(1);
                if failures == 1 || backoff >= config.retry_max {
                    tracing::warn!(%error, retry_in = ?backoff, "durable write failed: retrying");
                } else {
                    tracing::debug!(%error, retry_in = ?backoff, "durable write failed: retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(config.retry_max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::index::BoxFuture;

    /// A sink in memory that fails its first `failures` writes and rejects
    /// any write holding a turn whose content is `"bad"`.
    #[derive(Default)]
    struct TestSink {
        failures: AtomicUsize,
        /// Every successful write, as it came.
        writes: parking_lot::Mutex<Vec<Vec<Turn>>>,
        /// When each write was attempted.
        attempts: parking_lot::Mutex<Vec<Instant>>,
    }

    impl TestSink {
        fn failing(failures: usize) -> Arc<Self> {
            Arc::new(Self {
                failures: AtomicUsize::new(failures),
                ..Self::default()
            })
        }

        fn written(&self) -> Vec<Turn> {
            self.writes.lock().concat()
        }
    }

    impl ConversationSink for TestSink {
        fn write<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async move {
                self.attempts.lock().push(Instant::now());
                let failing = self
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return Err(SinkError::Unavailable("down".into()));
                }
                if turns.iter().any(|t| t.content == "bad") {
                    return Err(SinkError::Rejected("bad".into()));
                }
                self.writes.lock().push(turns.to_vec());
                Ok(())
            })
        }

        fn read<'a>(
            &'a self,
            conversation: &'a str,
        ) -> BoxFuture<'a, Result<Vec<Turn>, SinkError>> {
            Box::pin(async move {
                Ok(self
                    .written()
                    .into_iter()
                    .filter(|t| t.conversation == conversation)
                    .collect())
            })
        }
    }

    /// Lets the writer's task run what is ready at this instant.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn turn(conversation: &str, index: u64) -> Turn {
        Turn::new(
            conversation,
            index,
            "user",
            format!("{conversation} {index}"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_conversation_is_written_after_max_delay() {
        let sink = TestSink::failing(0);
        let config = DurableConfig::default()
            .every_turns(10)
            .max_delay(Duration::from_secs(60));
        let writer = DurableWriter::spawn(sink.clone(), config);
        writer.record(turn("a", 0)).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        writer.record(turn("b", 0)).unwrap();
        writer.record(turn("a", 1)).unwrap();

        tokio::time::sleep(Duration::from_secs(30) - Duration::from_millis(1)).await;
        settle().await;
        assert!(sink.written().is_empty());
        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(sink.written(), [turn("a", 0), turn("a", 1)]);
        // "b" has 30 s to go.
        tokio::time::sleep(Duration::from_secs(30) - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(sink.written().len(), 2);
        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(sink.written().len(), 3);
        assert_eq!(writer.stats().held, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_writes_are_retried_in_order_with_doubling_backoff() {
        let sink = TestSink::failing(5);
        let config = DurableConfig::default()
            .every_turns(2)
            .retry_backoff(Duration::from_millis(100), Duration::from_millis(500));
        let writer = DurableWriter::spawn(sink.clone(), config);
        let turns: Vec<Turn> = (0..6).map(|i| turn("a", i)).collect();
        for t in &turns {
            writer.record(t.clone()).unwrap();
        }
        writer.flush().await.unwrap();
        assert_eq!(sink.written(), turns);
        let attempts = sink.attempts.lock().clone();
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        let ms = Duration::from_millis;
        // The three handed-over batches go as one write: 5 failures, then
        // the success.
        assert_eq!(gaps, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        let stats = writer.stats();
        assert_eq!((stats.written, stats.failures, stats.held), (6, 5, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_batch_is_written_turn_by_turn_without_the_bad_one() {
        let sink = TestSink::failing(0);
        let writer = DurableWriter::spawn(sink.clone(), DurableConfig::default().every_turns(3));
        let bad = Turn::new("a", 1, "user", "bad");
        writer.record(turn("a", 0)).unwrap();
        writer.record(bad).unwrap();
        writer.record(turn("a", 2)).unwrap();
        writer.flush().await.unwrap();
        assert_eq!(sink.written(), [turn("a", 0), turn("a", 2)]);
        let stats = writer.stats();
        assert_eq!((stats.written, stats.rejected, stats.held), (2, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_counts_buffered_turns_and_frees_up_once_written() {
        let sink = TestSink::failing(usize::MAX);
        let config = DurableConfig::default().every_turns(3).max_queued_turns(4);
        let writer = DurableWriter::spawn(sink.clone(), config);
        for i in 0..4 {
            writer.record(turn("a", i)).unwrap();
        }
        assert_eq!(writer.record(turn("b", 0)), Err(WriterError::QueueFull));
        assert_eq!(writer.stats().refused, 1);
        sink.failures.store(0, Ordering::SeqCst);
        writer.flush().await.unwrap();
        assert_eq!(writer.stats().held, 0);
        writer.record(turn("b", 0)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_writer_writes_what_it_holds() {
        let sink = TestSink::failing(0);
        let writer = DurableWriter::spawn(sink.clone(), DurableConfig::default());
        writer.record(turn("a", 0)).unwrap();
        let clone = writer.clone();
        drop(writer);
        clone.record(turn("a", 1)).unwrap();
        drop(clone);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(sink.written(), [turn("a", 0), turn("a", 1)]);
    }

    #[test]
    fn flush_reports_a_task_that_is_gone() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let first = runtime();
        let writer = first.block_on(async {
            DurableWriter::spawn(TestSink::failing(usize::MAX), DurableConfig::default())
        });
        writer.record(turn("a", 0)).unwrap();
        drop(first);
        assert_eq!(runtime().block_on(writer.flush()), Err(WriterError::Closed));
        assert_eq!(writer.record(turn("a", 1)), Err(WriterError::Closed));
    }
}
