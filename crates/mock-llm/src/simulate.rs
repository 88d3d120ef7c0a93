//! Simulate mode ([`Config::simulate`](crate::Config::simulate)): a route's sequence on the
//! mock's own [`SimServer`], as a handler drives it.

use tokio::sync::watch;

use crate::fleet::{Generation, SimEvent, SimServer};
use crate::shutdown_requested;

/// One request's sequence on the simulator.
#[derive(Debug)]
pub(crate) struct Simulated {
    generation: Generation,
    /// An event [`Generation::try_recv`] took before the handler waited for one.
    early: Option<SimEvent>,
}

/// Why a wait for the simulator ended without the event waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The mock was shut down meanwhile.
    Shutdown,
    /// The sequence ended otherwise: rejected, or its events stopped (the runtime is going
    /// away).
    Lost,
}

impl Simulated {
    /// Submits `prompt` with an answer of `max_tokens` tokens to `server`. `Err` carries the
    /// KV blocks the sequence needs when the server rejects it as larger than its whole cache
    /// (the rejection is there as soon as the sequence is submitted).
    pub(crate) fn start(server: &SimServer, prompt: &str, max_tokens: u64) -> Result<Self, u64> {
        let max_tokens = u32::try_from(max_tokens).unwrap_or(u32::MAX);
        let mut generation = server.generate(prompt, max_tokens);
        match generation.try_recv() {
            Some(SimEvent::Rejected { needed_blocks }) => Err(needed_blocks),
            early => Ok(Self { generation, early }),
        }
    }

    /// The prompt tokens the prefix cache served, once the sequence was admitted.
    pub(crate) fn cached_tokens(&self) -> Option<u32> {
        self.generation.cached_tokens()
    }

    /// Waits for the sequence's next output token.
    pub(crate) async fn token(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        self.until(shutdown, SimEvent::Token).await
    }

    /// Waits until the sequence is done (its last token decoded, its slot free); `Ok` carries
    /// the prompt tokens the prefix cache served.
    pub(crate) async fn done(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<u32, Stop> {
        self.until(shutdown, SimEvent::Done).await?;
        self.cached_tokens().ok_or(Stop::Lost)
    }

    /// Waits for `wanted` (`Token` or `Done`), passing over `Admitted` (and tokens, when
    /// waiting for `Done`).
    async fn until(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        wanted: SimEvent,
    ) -> Result<(), Stop> {
        loop {
            let event = match self.early.take() {
                Some(event) => Some(event),
                None => tokio::select! {
                    biased;
                    () = shutdown_requested(shutdown) => return Err(Stop::Shutdown),
                    event = self.generation.recv() => event,
                },
            };
            match event {
                Some(event) if event == wanted => return Ok(()),
                Some(SimEvent::Admitted { .. }) => {}
                Some(SimEvent::Token) if wanted == SimEvent::Done => {}
                Some(SimEvent::Token | SimEvent::Done | SimEvent::Rejected { .. }) | None => {
                    return Err(Stop::Lost);
                }
            }
        }
    }
}
