//! One simulated server: a handle, and the step loop that runs its batch in (virtual) time.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, mpsc};

use tokio::time::Instant;

use super::config::SimConfig;
use super::generation::{Generation, LoopGuard};
use super::kv::Prompt;
use super::metrics::SimMetrics;
use super::scheduler::{Request, Scheduler};

/// One simulated vLLM/SGLang-style inference server: `slots` running sequences at most, a
/// FIFO waiting queue, a prefix-caching KV cache, and continuous batching timed by
/// [`Costs`](super::Costs).
///
/// Its step loop is a task on the tokio runtime of [`spawn`](Self::spawn); every delay is a
/// tokio sleep, so under `tokio::time::pause` a fleet of servers runs in virtual time, and the
/// loop waits for work when nothing is running or waiting, so a paused clock auto-advances.
/// Events reach their [`Generation`] when tokio's timer fires, on whole milliseconds: up to
/// 1 ms after their exact instant, an error that never accumulates over steps.
///
/// Cheap to clone: clones share the server. The loop stops once every handle and every
/// [`Generation`] is dropped.
#[derive(Clone)]
pub struct SimServer {
    shared: Arc<Shared>,
    guard: Arc<LoopGuard>,
}

/// What the handles and the step loop share.
struct Shared {
    config: SimConfig,
    scheduler: Mutex<Scheduler>,
    /// Wakes an idle loop when a request is queued.
    wake: Notify,
}

impl SimServer {
    /// An idle server with `config`, its step loop spawned on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as [`tokio::spawn`].
    pub fn spawn(config: SimConfig) -> Self {
        let scheduler = Scheduler::new(config.slots, config.kv_blocks);
        let shared = Arc::new(Shared {
            config,
            scheduler: Mutex::new(scheduler),
            wake: Notify::new(),
        });
        let task = tokio::spawn(step_loop(Arc::clone(&shared)));
        Self {
            shared,
            guard: Arc::new(LoopGuard(task.abort_handle())),
        }
    }

    /// The configuration it was spawned with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Submits a sequence: `prompt`, then an answer of exactly `max_tokens` tokens. It joins
    /// the back of the waiting queue; the returned [`Generation`] streams its events from
    /// admission to the last token. A sequence larger than the whole KV cache is rejected at
    /// once ([`SimEvent::Rejected`](super::SimEvent::Rejected)).
    ///
    /// The prompt is tokenized and hashed here, outside the server's lock.
    pub fn generate(&self, prompt: &str, max_tokens: u32) -> Generation {
        let prompt = Prompt::new(prompt);
        let prompt_tokens = u32::try_from(prompt.tokens).unwrap_or(u32::MAX);
        let (sender, receiver) = mpsc::unbounded_channel();
        let queued = self
            .shared
            .lock()
            .submit(Request::new(prompt, max_tokens, sender));
        if queued {
            self.shared.wake.notify_one();
        }
        Generation::new(prompt_tokens, receiver, Arc::clone(&self.guard))
    }

    /// A consistent snapshot of the server's load and counters.
    pub fn metrics(&self) -> SimMetrics {
        self.shared.lock().metrics()
    }

    /// [`metrics`](Self::metrics) as vLLM's Prometheus text (see
    /// [`SimMetrics::prometheus_text`]), labelled with [`SimConfig::model_name`].
    pub fn metrics_text(&self) -> String {
        self.metrics()
            .prometheus_text(&self.shared.config.model_name)
    }
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // The scheduler never panics while holding the lock; if anything did, its state is
        // still a valid one.
        self.scheduler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs steps back to back while there is work, and waits for a request otherwise. The lock
/// is taken at the start and at the end of a step, never across a sleep.
///
/// Tokio's timer fires on whole milliseconds, so a step may end up to 1 ms after its exact
/// end. Steps that run back to back are timed from the exact end of the previous one, so the
/// rounding delays an event by less than a millisecond and never adds up.
async fn step_loop(shared: Arc<Shared>) {
    // The exact end of the step just run, while steps run back to back.
    let mut previous_end: Option<Instant> = None;
    loop {
        let step = shared.lock().begin_step(&shared.config.costs);
        let Some(duration) = step else {
            previous_end = None;
            // A request queued since `begin_step` left a permit: this returns at once.
            shared.wake.notified().await;
            continue;
        };
        let start = previous_end.unwrap_or_else(Instant::now);
        previous_end = start.checked_add(duration);
        match previous_end {
            Some(end) => tokio::time::sleep_until(end).await,
            None => tokio::time::sleep(duration).await,
        }
        shared.lock().end_step();
    }
}
