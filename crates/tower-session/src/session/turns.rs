//! The history's persistence primitives, on the session's state: append,
//! queue, read and clear turns in the session's store record.

use super::load::count;
use super::state::{Inner, Load};
use crate::error::{Error, StoreError};
use crate::store::HistoryAppend;
use crate::turn::{Role, Turn};

impl Inner {
    /// Appends `turns` now (creating the session first when the visitor has
    /// none); returns how many turns the history holds.
    pub(super) async fn append_turns(&self, turns: Vec<Turn>) -> Result<usize, Error> {
        let (system, turns) = self.encode_turns(turns)?;
        self.mark_used();
        let _ops = self.ops.lock().await;
        let max_turns = self.config.history_turns;
        // Twice at most: the session may vanish between the two steps.
        for _ in 0..2 {
            let Some(id) = self.ensure_stored_locked().await? else {
                return Err(Error::HeadSent);
            };
            let deadline = self.state.lock().deadline_ms;
            let ttl = self.ttl_now(deadline, self.now());
            let append = HistoryAppend {
                system: system.as_deref(),
                turns: &turns,
                max_turns,
            };
            match self.config.store.append_history(&id, append, ttl).await {
                Ok(Some(kept)) => {
                    count("append_history", "ok");
                    return Ok(kept);
                }
                Ok(None) => {
                    count("append_history", "missing");
                    let mut state = self.state.lock();
                    state.id = None;
                    state.load = Load::Missing;
                }
                Err(e) => return Err(self.failed("append_history", e)),
            }
        }
        Err(Error::Store(StoreError::other(
            "the session disappeared while appending to its history",
        )))
    }

    /// Queues `turn` for the next save.
    pub(super) fn queue_turn(&self, turn: Turn) -> Result<(), Error> {
        let (system, turns) = self.encode_turns(vec![turn])?;
        self.queue_turns(system, turns)
    }

    /// The turns as stored: the (last) system message apart, the others in
    /// order. Fails on a turn over the size limit.
    fn encode_turns(&self, turns: Vec<Turn>) -> Result<(Option<String>, Vec<String>), Error> {
        let max = self.config.max_turn_bytes;
        let mut system = None;
        let mut encoded = Vec::with_capacity(turns.len());
        for turn in turns {
            if turn.content.len() > max {
                return Err(Error::TurnTooLarge {
                    len: turn.content.len(),
                    max,
                });
            }
            let json = serde_json::to_string(&turn)?;
            if turn.role == Role::System {
                system = Some(json);
            } else {
                encoded.push(json);
            }
        }
        Ok((system, encoded))
    }

    /// The system message and the newest `last` turns. Loads the session in
    /// parallel when needed, so reading the history is activity too and a
    /// deleted session shows nothing.
    pub(super) async fn read_turns(&self, last: usize) -> Result<(Option<Turn>, Vec<Turn>), Error> {
        self.mark_used();
        let Some(id) = self.state.lock().id else {
            return Ok((None, Vec::new()));
        };
        let store = &self.config.store;
        let last = last.min(self.config.history_turns);
        let (loaded, read) = tokio::join!(self.ensure_loaded(), store.read_history(&id, last));
        loaded?;
        if self.state.lock().id != Some(id) {
            return Ok((None, Vec::new()));
        }
        let stored = match read {
            Ok(stored) => stored,
            Err(e) => return Err(self.failed("read_history", e)),
        };
        let decode = |json: &str| {
            serde_json::from_str::<Turn>(json).map_err(|e| {
                Error::Store(StoreError::corrupt(format!("unreadable history turn: {e}")))
            })
        };
        let system = stored.system.as_deref().map(decode).transpose()?;
        let turns = stored
            .turns
            .iter()
            .map(|t| decode(t))
            .collect::<Result<_, _>>()?;
        Ok((system, turns))
    }

    /// Removes every turn and the system message, stored and queued.
    pub(super) async fn clear_turns(&self) -> Result<(), Error> {
        self.mark_used();
        let Some(id) = self.state.lock().id else {
            return Ok(());
        };
        {
            let mut state = self.state.lock();
            state.system = None;
            state.turns.clear();
        }
        match self.config.store.clear_history(&id).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed("clear_history", e)),
        }
    }
}
