//! Reading the stored session, at most once per request, and the
//! bookkeeping of failed store calls that the outage policy reads.

use super::state::{Inner, Load};
use crate::config::OutagePolicy;
use crate::error::{Error, StoreError};

/// Counts a store call by operation and outcome.
pub(super) fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!("tower_ai_session_store_calls_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

impl Inner {
    /// The error for a failed store call, recording it for the outage
    /// policy.
    pub(super) fn failed(&self, op: &'static str, e: StoreError) -> Error {
        count(op, "error");
        tracing::warn!(op, error = %e, "session store call failed");
        if e.is_outage() {
            self.state.lock().failed = true;
        }
        Error::Store(e)
    }

    /// Loads the session if it hasn't been looked up; concurrent callers
    /// share one load.
    pub(super) async fn ensure_loaded(&self) -> Result<(), Error> {
        self.mark_used();
        let load = self.state.lock().load;
        if load == Load::NotLoaded {
            let _ops = self.ops.lock().await;
            return self.load_locked().await;
        }
        self.load_result(load)
    }

    /// What a load that ended in `load` means for the caller: an error only
    /// after a failure under [`OutagePolicy::Refuse`].
    pub(super) fn load_result(&self, load: Load) -> Result<(), Error> {
        match (load, self.config.outage) {
            (Load::Failed, OutagePolicy::Refuse) => Err(Error::Store(StoreError::unavailable(
                "the session store failed earlier in this request",
            ))),
            _ => Ok(()),
        }
    }

    /// Loads the stored session if the request has an id and it hasn't been
    /// looked up. Call with `ops` held.
    pub(super) async fn load_locked(&self) -> Result<(), Error> {
        let id = {
            let state = self.state.lock();
            if state.load != Load::NotLoaded {
                return self.load_result(state.load);
            }
            match state.id {
                Some(id) => id,
                None => return Ok(()),
            }
        };
        let result = self.config.store.load(&id).await;
        match result {
            Ok(Some(fields)) => {
                count("load", "hit");
                self.loaded(id, fields);
                Ok(())
            }
            Ok(None) => {
                count("load", "miss");
                tracing::debug!("unknown or expired session id: starting afresh");
                self.missing();
                Ok(())
            }
            Err(e) => {
                let mut state = self.state.lock();
                state.load = Load::Failed;
                drop(state);
                let err = self.failed("load", e);
                match self.config.outage {
                    OutagePolicy::Refuse => Err(err),
                    OutagePolicy::Continue => Ok(()),
                }
            }
        }
    }
}
