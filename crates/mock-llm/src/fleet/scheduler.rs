//! The scheduler of one server: its FIFO waiting queue, its running batch and its KV cache,
//! advanced one step of continuous batching at a time. Pure bookkeeping: the step loop
//! ([`super::server`]) supplies the time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::config::Costs;
use super::generation::SimEvent;
use super::kv::{self, KvCache, Lease, Prompt};
use super::metrics::SimMetrics;

/// A request waiting for admission.
#[derive(Debug)]
pub(crate) struct Request {
    prompt: Prompt,
    max_tokens: u32,
    /// Blocks of the whole sequence, prompt and answer.
    blocks: u64,
    events: UnboundedSender<SimEvent>,
}

impl Request {
    pub(crate) fn new(prompt: Prompt, max_tokens: u32, events: UnboundedSender<SimEvent>) -> Self {
        let blocks = kv::blocks_for(prompt.tokens.saturating_add(u64::from(max_tokens)));
        Self {
            prompt,
            max_tokens,
            blocks,
            events,
        }
    }
}

/// A sequence in the running batch.
#[derive(Debug)]
struct Running {
    lease: Lease,
    /// Tokens still to decode.
    remaining: u32,
    events: UnboundedSender<SimEvent>,
}

/// Counters since the start.
#[derive(Debug, Default)]
struct Counters {
    prompt_tokens: u64,
    hit_tokens: u64,
    generated: u64,
    finished: u64,
    cancelled: u64,
    rejected: u64,
    steps: u64,
    peak_running: usize,
}

/// The state of one server.
#[derive(Debug)]
pub(crate) struct Scheduler {
    slots: usize,
    kv: KvCache,
    waiting: VecDeque<Request>,
    running: Vec<Running>,
    counters: Counters,
}

impl Scheduler {
    /// An idle server with `slots` (at least 1) and `kv_blocks` blocks of KV cache.
    pub(crate) fn new(slots: usize, kv_blocks: usize) -> Self {
        Self {
            slots: slots.max(1),
            kv: KvCache::new(kv_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Queues `request`, or rejects it at once if its sequence needs more blocks than the
    /// whole cache holds (it could never run). `true` if queued.
    pub(crate) fn submit(&mut self, request: Request) -> bool {
        let capacity = self.kv.capacity() as u64;
        if request.blocks > capacity {
            let needed_blocks = request.blocks;
            // A receiver already gone does not care.
            let _ = request.events.send(SimEvent::Rejected { needed_blocks });
            self.counters.rejected += 1;
            return false;
        }
        self.waiting.push_back(request);
        true
    }

    /// Starts a step: drops cancelled sequences, admits waiting requests in FIFO order while
    /// a slot and their blocks are free (the head of the queue waits for blocks rather than
    /// being overtaken), and returns the step's duration. `None` when nothing runs: the
    /// server idles.
    pub(crate) fn begin_step(&mut self, costs: &Costs) -> Option<Duration> {
        self.drop_cancelled();
        let mut prefill = Duration::ZERO;
        while self.running.len() < self.slots {
            let Some(request) = self.waiting.pop_front() else {
                break;
            };
            match self.admit(request, costs) {
                Ok(cost) => prefill = prefill.saturating_add(cost),
                Err(request) => {
                    self.waiting.push_front(request);
                    break;
                }
            }
        }
        if self.running.is_empty() {
            return None;
        }
        let decoding = self.running.iter().filter(|seq| seq.remaining > 0).count();
        self.counters.steps += 1;
        self.counters.peak_running = self.counters.peak_running.max(self.running.len());
        Some(prefill.saturating_add(costs.decode(decoding)))
    }

    /// Ends a step: every running sequence gets its token; finished sequences get
    /// [`SimEvent::Done`] and leave the batch, their prompt blocks staying in the cache.
    pub(crate) fn end_step(&mut self) {
        for mut seq in std::mem::take(&mut self.running) {
            if seq.remaining > 0 {
                if seq.events.send(SimEvent::Token).is_err() {
                    self.kv.release(seq.lease);
                    self.counters.cancelled += 1;
                    continue;
                }
                seq.remaining -= 1;
                self.counters.generated += 1;
            }
            if seq.remaining == 0 {
                // Gone at the very end: the answer was complete anyway.
                let _ = seq.events.send(SimEvent::Done);
                self.kv.release(seq.lease);
                self.counters.finished += 1;
                continue;
            }
            self.running.push(seq);
        }
    }

    /// A snapshot of the gauges and counters.
    pub(crate) fn metrics(&self) -> SimMetrics {
        let kv_blocks_used = self.kv.in_use();
        let kv_blocks_total = self.kv.capacity();
        SimMetrics {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_usage: if kv_blocks_total == 0 {
                0.0
            } else {
                (kv_blocks_used as f64 / kv_blocks_total as f64).min(1.0)
            },
            kv_blocks_used,
            kv_blocks_cached: self.kv.resident(),
            kv_blocks_total,
            kv_blocks_evicted: self.kv.evicted(),
            prefix_hit_tokens: self.counters.hit_tokens,
            prompt_tokens_total: self.counters.prompt_tokens,
            generated_tokens_total: self.counters.generated,
            requests_finished: self.counters.finished,
            requests_cancelled: self.counters.cancelled,
            requests_rejected: self.counters.rejected,
            steps: self.counters.steps,
            peak_running: self.counters.peak_running,
        }
    }

    /// Admits `request` into the batch if its blocks can be leased, and returns its prefill
    /// cost (zero if its receiver is gone: it is dropped). `Err` gives it back.
    fn admit(&mut self, request: Request, costs: &Costs) -> Result<Duration, Request> {
        if request.events.is_closed() {
            self.counters.cancelled += 1;
            return Ok(Duration::ZERO);
        }
        let hashes = &request.prompt.hashes;
        let cached = request.prompt.cached_tokens(self.kv.hit_blocks(hashes));
        let blocks = usize::try_from(request.blocks).unwrap_or(usize::MAX);
        let Some(lease) = self.kv.lease(hashes, blocks) else {
            return Err(request);
        };
        let cached_tokens = u32::try_from(cached).unwrap_or(u32::MAX);
        if request
            .events
            .send(SimEvent::Admitted { cached_tokens })
            .is_err()
        {
            self.kv.release(lease);
            self.counters.cancelled += 1;
            return Ok(Duration::ZERO);
        }
        self.counters.prompt_tokens += request.prompt.tokens;
        self.counters.hit_tokens += cached;
        self.running.push(Running {
            lease,
            remaining: request.max_tokens,
            events: request.events,
        });
        Ok(costs.prefill(request.prompt.tokens.saturating_sub(cached)))
    }

    /// Drops the waiting and running sequences whose receiver is gone, freeing their slots
    /// and unpinning their blocks.
    fn drop_cancelled(&mut self) {
        let waiting = self.waiting.len();
        self.waiting.retain(|request| !request.events.is_closed());
        self.counters.cancelled += (waiting - self.waiting.len()) as u64;
        for seq in std::mem::take(&mut self.running) {
            if seq.events.is_closed() {
                self.kv.release(seq.lease);
                self.counters.cancelled += 1;
            } else {
                self.running.push(seq);
            }
        }
    }
}
