//! What a caller of [`SimServer::generate`](super::SimServer::generate) holds: the events of
//! its sequence.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::AbortHandle;

/// One event of a sequence, in this order: `Admitted`, then `max_tokens` × `Token`, then
/// `Done`; or `Rejected` alone.
///
/// Each event is sent at the virtual instant it happens: `Admitted` when a step takes the
/// sequence into the batch, each `Token` at the end of a step, `Done` right after the last
/// token (at the same instant). Time to first token is the time to the first `Token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimEvent {
    /// The sequence left the waiting queue and joined the running batch.
    Admitted {
        /// Prompt tokens served by the prefix cache (a multiple of 16): the prefill computes
        /// only the rest.
        cached_tokens: u32,
    },
    /// One output token.
    Token,
    /// The answer is complete; the sequence left the batch.
    Done,
    /// The sequence (prompt and answer) needs more KV blocks than the whole cache holds, so it
    /// can never run; nothing follows.
    Rejected {
        /// The blocks it needs.
        needed_blocks: u64,
    },
}

/// A sequence submitted to a [`SimServer`](super::SimServer): its prompt length and the
/// stream of its [`SimEvent`]s.
///
/// Dropping it cancels the sequence: the server notices at its next step boundary and frees the
/// slot and the pinned blocks. It keeps the server running, even if every
/// [`SimServer`](super::SimServer) handle is dropped. The stream ends after `Done` or
/// `Rejected`; it ends without either only if the runtime shuts down.
#[derive(Debug)]
pub struct Generation {
    prompt_tokens: u32,
    cached_tokens: Option<u32>,
    events: UnboundedReceiver<SimEvent>,
    _server: Arc<LoopGuard>,
}

impl Generation {
    pub(crate) fn new(
        prompt_tokens: u32,
        events: UnboundedReceiver<SimEvent>,
        server: Arc<LoopGuard>,
    ) -> Self {
        Self {
            prompt_tokens,
            cached_tokens: None,
            events,
            _server: server,
        }
    }

    /// The prompt's length in tokens (4 bytes of UTF-8 each, a last partial one included).
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// The prompt tokens the prefix cache served, once the [`SimEvent::Admitted`] event was
    /// received; `None` before.
    pub fn cached_tokens(&self) -> Option<u32> {
        self.cached_tokens
    }

    /// The next event, waiting for it; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<SimEvent> {
        let event = self.events.recv().await;
        self.observe(event)
    }

    /// The next event if one is already there, without waiting; `None` if there is none yet
    /// or the stream has ended. A [`SimEvent::Rejected`] is there as soon as
    /// [`SimServer::generate`](super::SimServer::generate) returns, so a caller can refuse the
    /// request before it answers anything.
    pub fn try_recv(&mut self) -> Option<SimEvent> {
        let event = self.events.try_recv().ok();
        self.observe(event)
    }

    fn observe(&mut self, event: Option<SimEvent>) -> Option<SimEvent> {
        if let Some(SimEvent::Admitted { cached_tokens }) = event {
            self.cached_tokens = Some(cached_tokens);
        }
        event
    }
}

impl Stream for Generation {
    type Item = SimEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SimEvent>> {
        let polled = self.events.poll_recv(cx);
        polled.map(|event| self.observe(event))
    }
}

/// Stops a server's step loop when the last handle or generation holding it
/// is dropped.
#[derive(Debug)]
pub(crate) struct LoopGuard(pub(crate) AbortHandle);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
