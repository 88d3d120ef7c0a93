//! The session's lifecycle in the store: a new id for the same session
//! (`cycle_id`), and deletion.

use super::record::{INDEXED, meta, user_of};
use super::state::{CookieAction, Inner, Load};
use crate::error::Error;
use crate::store::Fields;

impl Inner {
    /// Moves a stored session to a fresh id: creates it there with its
    /// fields, copies its history, deletes the old one. Does nothing for a
    /// visitor without a stored session.
    pub(super) async fn cycle_id(&self) -> Result<(), Error> {
        let _ops = self.ops.lock().await;
        self.mark_used();
        if self.head_gone() {
            return Err(Error::HeadSent);
        }
        self.load_locked().await?;
        let (old, mut fields, user, deadline) = {
            let state = self.state.lock();
            let Some(old) = state.id.filter(|_| state.load == Load::Loaded) else {
                return Ok(());
            };
            let fields: Fields = state
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (old, fields, state.stored_user.clone(), state.deadline_ms)
        };
        let now = self.now();
        let created = self.state.lock().created_ms.unwrap_or(now);
        meta(&mut fields, created, now, deadline);
        let user_field = self.config.user_field.as_ref();
        if fields.iter().any(|(k, _)| k == user_field) {
            // Indexed under its user by the save at the head.
            fields.push((INDEXED.to_owned(), now.to_string()));
        }
        let ttl = self.ttl_now(deadline, now);
        let new = self.create_new(&fields, ttl).await?;
        let store = &self.config.store;
        if let Err(e) = store
            .copy_history(&old, &new, self.config.history_turns, ttl)
            .await
        {
            tracing::warn!(error = %e, "session history not carried over to the new id");
        }
        if let Err(e) = store.delete(&old).await {
            return Err(self.failed("delete", e));
        }
        if let Some(user) = &user
            && let Err(e) = store.unindex_session(user, &old).await
        {
            tracing::debug!(error = %e, "old session id not removed from the user index");
        }
        let mut state = self.state.lock();
        state.id = Some(new);
        state.changes.clear();
        state.stored_user = state
            .fields
            .get(self.config.user_field.as_ref())
            .and_then(|v| user_of(v));
        state.reindex = true;
        state.touched_ms = Some(now);
        state.cookie = CookieAction::Set;
        state.max_age = ttl;
        metrics::counter!("tower_ai_session_cycled_total").increment(1);
        Ok(())
    }

    /// Deletes the stored session (and removes it from its user's index),
    /// then forgets it.
    pub(super) async fn delete(&self) -> Result<(), Error> {
        self.mark_used();
        let _ops = self.ops.lock().await;
        let (id, user) = {
            let state = self.state.lock();
            (state.id, state.stored_user.clone())
        };
        if let Some(id) = &id {
            if let Err(e) = self.config.store.delete(id).await {
                return Err(self.failed("delete", e));
            }
            if let Some(user) = &user
                && let Err(e) = self.config.store.unindex_session(user, id).await
            {
                tracing::debug!(error = %e, "deleted session not removed from the user index");
            }
        }
        self.deleted();
        metrics::counter!("tower_ai_session_deleted_total").increment(1);
        Ok(())
    }
}
