//! Saving what changed: a save's `Plan`, taken from the state at once, then
//! carried out in steps (update the stored session or create one, append
//! the queued history, keep the user's index right, record what was done).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::load::count;
use super::record::{INDEXED, TOUCHED, meta, millis, user_of};
use super::state::{CookieAction, Inner, Load};
use crate::error::{Error, StoreError};
use crate::id::Id;
use crate::store::{Changes, Fields, HistoryAppend};

/// How many ids `create` may find taken in a row before giving up; with 192
/// random bits, even one is a sign of a broken entropy source.
const CREATE_ATTEMPTS: usize = 4;

/// One save: the changes taken from the state (changes made while it runs
/// wait for the next save), and what they call for.
struct Plan {
    /// The session's id as the save began.
    id: Option<Id>,
    load: Load,
    set: Fields,
    remove: Vec<String>,
    system: Option<String>,
    turns: Vec<String>,
    /// A renewal of the TTL was due.
    touch: bool,
    /// The session's user, with this request's changes.
    user: Option<String>,
    /// The user of the stored session.
    stored_user: Option<String>,
    /// An id found past its absolute lifetime, to delete.
    doomed: Option<Id>,
    /// The request's clock (unix ms).
    now: u64,
    /// The TTL to give the store now.
    ttl: Duration,
    /// Fields are set or removed.
    writes: bool,
    /// History turns (or a system message) are queued.
    history: bool,
    /// The user differs from the stored session's.
    user_moved: bool,
    /// The user's index entry must be refreshed.
    index_due: bool,
}

/// How updating the stored session went.
enum Updated {
    /// Saved: renew the cookie with the TTL.
    RenewCookie,
    /// Saved, or only its renewal failed: the cookie stays as it is.
    KeepCookie,
    /// The session was gone; the state now reads as missing.
    Gone,
}

impl Inner {
    /// Saves what changed: field changes, queued history, a due touch, the
    /// user index. `create` makes a session even with nothing to save (for
    /// the history). Call with `ops` held.
    pub(super) async fn persist_locked(&self, create: bool) -> Result<(), Error> {
        // A change of user needs the stored one, to keep the indexes right.
        let user_field = self.config.user_field.as_ref();
        let user_changes = self.state.lock().changes.contains_key(user_field);
        if user_changes {
            self.load_locked().await?;
        }
        let now = self.now();
        let head_gone = self.head_gone();
        let mut plan = self.take_plan(now);
        if let Some(doomed) = plan.doomed.take()
            && let Err(e) = self.config.store.delete(&doomed).await
        {
            tracing::debug!(error = %e, "expired session not deleted");
        }
        if plan.load == Load::Failed {
            if plan.writes || !plan.turns.is_empty() {
                metrics::counter!("tower_ai_session_unsaved_total").increment(1);
                tracing::warn!("session changes not saved: the store failed earlier");
            }
            return Ok(());
        }

        let mut id = plan.id;
        let mut cookie = None;
        if let Some(current) = id.filter(|_| plan.writes || plan.touch || plan.history) {
            match self.update_stored(current, &mut plan).await? {
                Updated::RenewCookie => cookie = Some(CookieAction::Set),
                Updated::KeepCookie => {}
                Updated::Gone => id = None,
            }
        }
        if id.is_none() && (plan.writes || plan.history || create) {
            id = Some(self.create_stored(&mut plan, head_gone).await?);
            cookie = Some(CookieAction::Set);
        }
        let Some(id) = id else {
            return Ok(());
        };
        if plan.history {
            self.append_queued_history(id, &plan).await?;
        }
        self.record_saved(id, &plan, cookie).await;
        Ok(())
    }

    /// Takes this request's unsaved work from the state (clearing the dirty
    /// flag) and decides what it calls for.
    fn take_plan(&self, now: u64) -> Plan {
        let user_field = self.config.user_field.as_ref();
        let mut state = self.state.lock();
        self.dirty.store(false, Ordering::Release);
        let mut set = Vec::new();
        let mut remove = Vec::new();
        for (k, change) in state.changes.drain() {
            match change {
                Some(v) => set.push((k, v)),
                None => remove.push(k),
            }
        }
        let system = state.system.take();
        let turns = std::mem::take(&mut state.turns);
        let touch = std::mem::take(&mut state.touch_due);
        let user = state.fields.get(user_field).and_then(|v| user_of(v));
        let stored_user = state.stored_user.clone();
        let reindex = std::mem::take(&mut state.reindex);
        let doomed = state.doomed.take();
        let (id, load, deadline, indexed) =
            (state.id, state.load, state.deadline_ms, state.indexed_ms);
        drop(state);

        let ttl = self.ttl_now(deadline, now);
        let writes = !set.is_empty() || !remove.is_empty();
        let history = system.is_some() || !turns.is_empty();
        let user_moved = user != stored_user;
        // The user's index keeps an entry for twice the TTL after it was
        // last refreshed, and a write or a touch refreshes it once half a
        // TTL has passed: an active session always outlives its entry's
        // refresh, so "log out everywhere" finds it.
        let index_due = user.is_some()
            && (user_moved
                || reindex
                || ((writes || touch)
                    && indexed.is_none_or(|i| now.saturating_sub(i) >= millis(ttl) / 2)));
        Plan {
            id,
            load,
            set,
            remove,
            system,
            turns,
            touch,
            user,
            stored_user,
            doomed,
            now,
            ttl,
            writes,
            history,
            user_moved,
            index_due,
        }
    }

    /// Writes the field changes, the renewal time and the index stamp into
    /// the stored session `id`, renewing its TTL. One store round trip.
    async fn update_stored(&self, id: Id, plan: &mut Plan) -> Result<Updated, Error> {
        plan.set.push((TOUCHED.to_owned(), plan.now.to_string()));
        if plan.index_due {
            plan.set.push((INDEXED.to_owned(), plan.now.to_string()));
        }
        let changes = Changes::new(
            std::mem::take(&mut plan.set),
            std::mem::take(&mut plan.remove),
        );
        let result = self.config.store.update(&id, &changes, plan.ttl).await;
        plan.set = changes.into_parts().0;
        match result {
            Ok(true) => {
                count("update", "ok");
                // Renew the cookie with the TTL: when a touch was due, or
                // when nothing tells when it was last renewed.
                if plan.touch || plan.load == Load::NotLoaded {
                    Ok(Updated::RenewCookie)
                } else {
                    Ok(Updated::KeepCookie)
                }
            }
            Ok(false) => {
                count("update", "missing");
                tracing::debug!("session gone before its changes were saved: starting afresh");
                self.missing();
                Ok(Updated::Gone)
            }
            Err(e) if plan.writes || plan.history => Err(self.failed("update", e)),
            Err(e) => {
                count("update", "error");
                tracing::debug!(error = %e, "session TTL not renewed");
                Ok(Updated::KeepCookie)
            }
        }
    }

    /// Stores a new session holding this request's changes and makes it the
    /// request's session. Refused once the head is gone: its cookie could no
    /// longer be sent.
    async fn create_stored(&self, plan: &mut Plan, head_gone: bool) -> Result<Id, Error> {
        if head_gone {
            metrics::counter!("tower_ai_session_unsaved_total").increment(1);
            tracing::warn!(
                "session changes made after the response head for a visitor without a session: not saved"
            );
            return Err(Error::HeadSent);
        }
        let now = plan.now;
        let deadline = self.config.absolute.map(|a| now + millis(a));
        // Only this request's changes: a session deleted meanwhile must
        // not come back.
        let mut fields = std::mem::take(&mut plan.set);
        meta(&mut fields, now, now, deadline);
        if plan.user.is_some() {
            fields.push((INDEXED.to_owned(), now.to_string()));
        }
        let new = self.create_new(&fields, self.config.ttl).await?;
        let mut state = self.state.lock();
        state.id = Some(new);
        state.load = Load::Loaded;
        state.created_ms = Some(now);
        state.touched_ms = Some(now);
        state.deadline_ms = deadline;
        Ok(new)
    }

    /// Appends the queued history turns (and system message) to `id`'s
    /// history, trimmed to the limit.
    async fn append_queued_history(&self, id: Id, plan: &Plan) -> Result<(), Error> {
        let append = HistoryAppend {
            system: plan.system.as_deref(),
            turns: &plan.turns,
            max_turns: self.config.history_turns,
        };
        match self
            .config
            .store
            .append_history(&id, append, plan.ttl)
            .await
        {
            Ok(_) => {
                count("append_history", "ok");
                Ok(())
            }
            Err(e) => Err(self.failed("append_history", e)),
        }
    }

    /// Keeps the user's index right (the session added under its user,
    /// removed from a previous user's), then records in the state what the
    /// save did: the stored user, the renewal and index times, the cookie.
    async fn record_saved(&self, id: Id, plan: &Plan, cookie: Option<CookieAction>) {
        let store = &self.config.store;
        let created_now = plan.id != Some(id);
        if let Some(user) = &plan.user
            && (plan.index_due || created_now)
            && let Err(e) = store.index_session(user, &id, plan.ttl * 2).await
        {
            tracing::debug!(error = %e, "session not added to the user index");
        }
        if let (Some(old), Some(old_id), true) = (&plan.stored_user, plan.id, plan.user_moved)
            && let Err(e) = store.unindex_session(old, &old_id).await
        {
            tracing::debug!(error = %e, "session not removed from the old user's index");
        }
        let mut state = self.state.lock();
        state.stored_user = plan.user.clone();
        if plan.user_moved {
            state.profile = None;
        }
        if plan.writes || plan.touch {
            state.touched_ms = Some(plan.now);
        }
        if plan.index_due || created_now {
            state.indexed_ms = Some(plan.now);
        }
        if let Some(action) = cookie {
            state.cookie = action;
            state.max_age = plan.ttl;
        }
    }

    /// Makes sure the session is stored (creating it, with the changes made
    /// so far, when the visitor has none) and returns its id; `None` when it
    /// would need a new cookie after the head. Call with `ops` held.
    pub(super) async fn ensure_stored_locked(&self) -> Result<Option<Id>, Error> {
        self.load_locked().await?;
        let (id, load) = {
            let state = self.state.lock();
            (state.id, state.load)
        };
        if load == Load::Failed {
            return Err(self.load_result(load).err().unwrap_or_else(|| {
                Error::Store(StoreError::unavailable("the session store is unavailable"))
            }));
        }
        if let Some(id) = id {
            return Ok(Some(id));
        }
        self.persist_locked(true).await?;
        Ok(self.state.lock().id)
    }

    /// Creates a session under a fresh id, drawing again if one is taken.
    pub(super) async fn create_new(&self, fields: &Fields, ttl: Duration) -> Result<Id, Error> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = Id::random()?;
            match self.config.store.create(&id, fields, ttl).await {
                Ok(true) => {
                    count("create", "ok");
                    metrics::counter!("tower_ai_session_created_total").increment(1);
                    return Ok(id);
                }
                Ok(false) => {
                    count("create", "taken");
                    tracing::warn!("a freshly drawn session id was taken: drawing again");
                }
                Err(e) => return Err(self.failed("create", e)),
            }
        }
        Err(Error::Store(StoreError::other(
            "no free session id after several draws",
        )))
    }

    /// The TTL to give the store now: the idle TTL, shortened near an
    /// absolute deadline.
    pub(super) fn ttl_now(&self, deadline_ms: Option<u64>, now: u64) -> Duration {
        let ttl = self.config.ttl;
        match deadline_ms {
            Some(d) => ttl.min(Duration::from_millis(d.saturating_sub(now).max(1))),
            None => ttl,
        }
    }
}
