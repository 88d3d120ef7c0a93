//! [`Session`]: the handle the handler uses on the visitor's session.
//!
//! The handle is thin; the work is done on the state its clones share:
//! - `state`: what was loaded, what changed since, what the head carries;
//! - `load`: the one load per request, and failed store calls;
//! - `save`: saving what changed, planned and carried out in steps;
//! - `lifecycle`: a new id for the session, and deletion;
//! - `turns`: the history's persistence primitives;
//! - `record`, `fields`: the stored form of a session and its field map.

mod fields;
mod lifecycle;
mod load;
mod record;
mod save;
mod state;
mod turns;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use self::record::user_of_value;
pub(crate) use self::state::{CookieAction, HeadOutcome};
use self::state::{Inner, Load};
use crate::carrier::Source;
use crate::config::{Config, OutagePolicy};
use crate::error::Error;
use crate::id::Id;
use crate::profile::Profile;
use crate::store::Changes;
use crate::turn::Turn;

/// The visitor's session, lazy and field-level.
///
/// The layer puts one in every request's extensions (and the `axum` feature
/// makes it an extractor). It costs nothing until used: the store is read
/// on the first [`get`](Session::get), at most once per request, and only
/// the fields changed with [`insert`](Session::insert) /
/// [`remove`](Session::remove) are written back, once, before the response
/// head leaves (or, for changes made while a streamed body is being sent,
/// before its end reaches the client). A session that was only read is not
/// written; its TTL and cookie are renewed at most once per touch interval.
///
/// Cloning is cheap; clones are the same session, so another layer (a rate
/// limiter) and the handler share one load.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl Session {
    pub(crate) fn new(config: Arc<Config>, id: Option<Id>, source: Option<Source>) -> Self {
        Self {
            inner: Arc::new(Inner::new(config, id, source)),
        }
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn refuses_on_outage(&self) -> bool {
        self.inner.config.outage == OutagePolicy::Refuse
    }

    pub(crate) fn config_ref(&self) -> &Config {
        &self.inner.config
    }

    // ---------------------------------------------------------------- fields

    /// The value of field `key`, deserialised, or `None` when unset.
    ///
    /// The first read of a request loads the session (one store round trip;
    /// concurrent readers share it); later reads are local. A field changed
    /// earlier in the request is read back without loading.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        if let Some(found) = self.inner.local(key) {
            return decode(found.as_deref());
        }
        self.inner.ensure_loaded().await?;
        let raw = self.inner.current(key);
        decode(raw.as_deref())
    }

    /// Sets field `key` to `value` (serialised to JSON). Nothing is sent to
    /// the store now: the change is saved with the response, field by field,
    /// so a concurrent request changing another field keeps its change.
    /// Doesn't load the session.
    ///
    /// Setting the [user field](crate::SessionBuilder::user_field) links
    /// the session to that user (for "log out everywhere" and the profile).
    /// Call [`cycle_id`](Session::cycle_id) at login too.
    ///
    /// Fails on a `$` key (reserved), a value serde can't serialise, or
    /// [`Error::HeadSent`] when the head is gone and there is no stored
    /// session to save into.
    pub fn insert(&self, key: &str, value: impl Serialize) -> Result<(), Error> {
        let json = serde_json::to_string(&value)?;
        self.inner.change(key, Some(json))
    }

    /// Removes field `key` (saved like [`insert`](Session::insert); doesn't
    /// load the session). See [`take`](Session::take) to get the old value.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        self.inner.change(key, None)
    }

    /// Removes field `key` and returns its value (loads the session).
    pub async fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let old = self.get(key).await?;
        self.remove(key)?;
        Ok(old)
    }

    /// The names of the session's fields (loads the session).
    pub async fn keys(&self) -> Result<Vec<String>, Error> {
        self.inner.ensure_loaded().await?;
        Ok(self.inner.state.lock().fields.keys().cloned().collect())
    }

    /// Whether the session has no field (loads the session).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        self.inner.ensure_loaded().await?;
        Ok(self.inner.state.lock().fields.is_empty())
    }

    /// Removes every field (loads the session to know them); the session,
    /// its id and its history stay. Saved like [`insert`](Session::insert).
    pub async fn clear(&self) -> Result<(), Error> {
        for key in self.keys().await? {
            self.remove(&key)?;
        }
        Ok(())
    }

    /// The session's user: the value of the
    /// [user field](crate::SessionBuilder::user_field) (loads the
    /// session, once per request).
    pub async fn user_id(&self) -> Result<Option<String>, Error> {
        let field = self.config().user_field.clone();
        let raw: Option<serde_json::Value> = self.get(&field).await?;
        Ok(raw.and_then(user_of_value))
    }

    /// The user's [`Profile`], or `None` for a session without a user or a
    /// user without a profile. Loaded on first call (the session first if
    /// needed) and cached for the rest of the request, so other layers and
    /// the handler share one store round trip.
    pub async fn profile(&self) -> Result<Option<Profile>, Error> {
        if let Some(cached) = self.inner.state.lock().profile.clone() {
            return Ok(cached);
        }
        let Some(user) = self.user_id().await? else {
            return Ok(None);
        };
        let loaded = match self.config().store.load_profile(&user).await {
            Ok(fields) => fields.map(|f| Profile::new(&user, f)),
            Err(e) => return Err(self.inner.failed("load_profile", e)),
        };
        self.inner.state.lock().profile = Some(loaded.clone());
        Ok(loaded)
    }

    /// Sets the `set` fields and removes the `remove` fields of the user's
    /// profile, now (one store round trip). [`Error::NoUser`] when the
    /// session has no user.
    pub async fn update_profile<K: Into<String>, V: Into<String>>(
        &self,
        set: impl IntoIterator<Item = (K, V)>,
        remove: impl IntoIterator<Item = K>,
    ) -> Result<(), Error> {
        let user = self.user_id().await?.ok_or(Error::NoUser)?;
        let changes = Changes::collect(set, remove);
        if let Err(e) = self.config().store.update_profile(&user, &changes).await {
            return Err(self.inner.failed("update_profile", e));
        }
        self.inner.state.lock().profile = None;
        Ok(())
    }

    /// The session id, when the visitor has a session (for logs of your own:
    /// treat it as a secret).
    pub fn id(&self) -> Option<Id> {
        self.inner.state.lock().id
    }

    /// Whether the visitor has no session id and nothing was set in this
    /// request's session: it can't be signed in, and finding that out needs
    /// no store access.
    pub(crate) fn is_blank(&self) -> bool {
        let state = self.inner.state.lock();
        state.id.is_none() && state.changes.is_empty()
    }

    /// Whether the stored session was read in this request.
    pub fn is_loaded(&self) -> bool {
        self.inner.state.lock().load == Load::Loaded
    }

    // ------------------------------------------------------------- lifecycle

    /// Gives the session a new id, keeping its data and history — call it at
    /// login, so an id planted before login (session fixation) is worthless
    /// after it. The old id stops working at once on every replica. The new
    /// cookie goes out with the response, so this must happen before the
    /// head ([`Error::HeadSent`] otherwise).
    ///
    /// A few store round trips (load if needed, create, copy the history,
    /// delete the old session). For a visitor without a stored session it
    /// does nothing: the session will get a fresh id when it is saved.
    pub async fn cycle_id(&self) -> Result<(), Error> {
        self.inner.cycle_id().await
    }

    /// Deletes the session now — its fields and history, on every replica
    /// at once — and tells the client to drop its cookie. Anything inserted
    /// afterwards in the same request starts a new session with a new id.
    /// One store round trip (two when the session has a user, to update the
    /// user's index).
    pub async fn delete(&self) -> Result<(), Error> {
        self.inner.delete().await
    }

    /// Logs the visitor out: the same as [`delete`](Session::delete).
    pub async fn logout(&self) -> Result<(), Error> {
        self.delete().await
    }

    /// Removes all data and deletes the session, as `tower-sessions`'
    /// `flush` does: the same as [`delete`](Session::delete).
    pub async fn flush(&self) -> Result<(), Error> {
        self.delete().await
    }

    /// Logs the session's user out everywhere: deletes every session in
    /// the user's index (on every replica at once), this one included.
    /// Returns how many the index held. [`Error::NoUser`] when the session
    /// has no user.
    pub async fn logout_everywhere(&self) -> Result<usize, Error> {
        let user = self.user_id().await?.ok_or(Error::NoUser)?;
        let deleted = match self.config().store.delete_user_sessions(&user).await {
            Ok(n) => n,
            Err(e) => return Err(self.inner.failed("delete_user_sessions", e)),
        };
        self.delete().await?;
        Ok(deleted)
    }

    /// Saves the changes made so far now, instead of with the response (one
    /// store round trip, none when nothing changed). Useful before a long
    /// stream, or from a task that outlives the response.
    pub async fn save(&self) -> Result<(), Error> {
        self.inner.mark_used();
        let _ops = self.inner.ops.lock().await;
        self.inner.persist_locked(false).await
    }

    // --------------------------------------------------------------- history

    pub(crate) async fn append_turns(&self, turns: Vec<Turn>) -> Result<usize, Error> {
        self.inner.append_turns(turns).await
    }

    pub(crate) fn queue_turn(&self, turn: Turn) -> Result<(), Error> {
        self.inner.queue_turn(turn)
    }

    /// The system message and the newest `last` turns. Loads the session in
    /// parallel when needed, so reading the history is activity too and a
    /// deleted session shows nothing.
    pub(crate) async fn read_turns(&self, last: usize) -> Result<(Option<Turn>, Vec<Turn>), Error> {
        self.inner.read_turns(last).await
    }

    pub(crate) async fn clear_turns(&self) -> Result<(), Error> {
        self.inner.clear_turns().await
    }

    // ------------------------------------------------ used by the layer

    /// Whether the head needs store work or header changes: one atomic
    /// load for a session nobody used, one lock otherwise.
    pub(crate) fn needs_finish(&self) -> bool {
        self.inner.needs_finish()
    }

    /// Whether changes wait to be saved (cheap: one atomic load).
    pub(crate) fn is_dirty(&self) -> bool {
        self.inner.is_dirty()
    }

    /// Saves before the head and says what to put on it. Consumes a clone.
    pub(crate) async fn finish_head(self) -> HeadOutcome {
        {
            let _ops = self.inner.ops.lock().await;
            if let Err(e) = self.inner.persist_locked(false).await {
                tracing::debug!(error = %e, "session not saved at the response head");
            }
        }
        self.head_sent()
    }

    /// Marks the head as sent and says what to put on it.
    pub(crate) fn head_sent(&self) -> HeadOutcome {
        self.inner.head_sent()
    }

    /// Saves changes made while the body streamed, before its end is passed
    /// on.
    pub(crate) async fn finish_body(self) {
        let _ops = self.inner.ops.lock().await;
        if let Err(e) = self.inner.persist_locked(false).await {
            metrics::counter!("tower_ai_session_unsaved_total").increment(1);
            tracing::warn!(error = %e, "session changes made during the stream not saved");
        }
    }
}

fn decode<T: DeserializeOwned>(raw: Option<&str>) -> Result<Option<T>, Error> {
    raw.map(serde_json::from_str)
        .transpose()
        .map_err(Error::Json)
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Session")
            .field("id", &state.id)
            .field("load", &state.load)
            .field("changes", &state.changes.len())
            .finish_non_exhaustive()
    }
}
