//! Natural batching of independent store calls.
//!
//! Under load, many requests load or save different sessions at the same
//! time. Sending each as its own command costs a command's worth of client
//! and server work per request; sending the ones that are waiting together
//! in one script costs one. A [`Batcher`] queues calls: when none is in
//! flight, the first caller starts a flush at once (no added latency when
//! idle); calls that arrive while a flush is in flight go together in the
//! next one. The flush runs in a spawned task, so a caller that goes away
//! can't strand the others.

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::StoreError;

type Reply<Out> = oneshot::Sender<Result<Out, StoreError>>;

/// A queue of calls of one kind; see the [module docs](self).
pub(crate) struct Batcher<Op, Out> {
    queue: Mutex<Queue<Op, Out>>,
    max: usize,
}

struct Queue<Op, Out> {
    pending: Vec<(Op, Reply<Out>)>,
    flushing: bool,
}

/// A call's place in the queue: the receiver of its result, and whether the
/// caller must start the flush.
pub(crate) struct Ticket<Out> {
    pub(crate) reply: oneshot::Receiver<Result<Out, StoreError>>,
    pub(crate) lead: bool,
}

impl<Op, Out> Batcher<Op, Out> {
    /// A batcher sending at most `max` calls in one flush.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                flushing: false,
            }),
            max: max.max(1),
        }
    }

    /// Queues `op`. When the ticket says `lead`, the caller must run
    /// [`Batcher::next`] until it returns `None`.
    pub(crate) fn push(&self, op: Op) -> Ticket<Out> {
        let (tx, rx) = oneshot::channel();
        let mut queue = self.queue.lock();
        queue.pending.push((op, tx));
        let lead = !queue.flushing;
        queue.flushing = true;
        Ticket { reply: rx, lead }
    }

    /// The next calls to send, or `None` (and the flush ends) when none is
    /// waiting.
    pub(crate) fn next(&self) -> Option<Vec<(Op, Reply<Out>)>> {
        let mut queue = self.queue.lock();
        if queue.pending.is_empty() {
            queue.flushing = false;
            return None;
        }
        let take = queue.pending.len().min(self.max);
        let rest = queue.pending.split_off(take);
        Some(std::mem::replace(&mut queue.pending, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_caller_leads_and_the_queue_drains_in_batches() {
        let b: Batcher<u32, u32> = Batcher::new(2);
        let first = b.push(1);
        let second = b.push(2);
        let third = b.push(3);
        assert!(first.lead && !second.lead && !third.lead);
        let batch = b
            .next()
            .map(|v| v.into_iter().map(|(op, _)| op).collect::<Vec<_>>());
        assert_eq!(batch, Some(vec![1, 2]));
        let batch = b
            .next()
            .map(|v| v.into_iter().map(|(op, _)| op).collect::<Vec<_>>());
        assert_eq!(batch, Some(vec![3]));
        assert!(b.next().is_none());
        // The flush ended: the next caller leads again.
        assert!(b.push(4).lead);
    }
}
