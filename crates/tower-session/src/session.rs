//! [`Session`]: the handler's view of the visitor's session.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::carrier::Source;
use crate::error::{Error, StoreError};
use crate::history::{History, Role, Turn};
use crate::id::Id;
use crate::layer::{Config, OutagePolicy};
use crate::profile::Profile;
use crate::store::{Changes, Fields, HistoryAppend};

/// When the session was created (unix ms).
const CREATED: &str = "$c";
/// When the session was last renewed (unix ms): decides whether a read must
/// renew the TTL.
const TOUCHED: &str = "$t";
/// When the session must end whatever its activity (unix ms), with an
/// absolute lifetime.
const DEADLINE: &str = "$d";
/// When the session was last (re)added to its user's index (unix ms).
const INDEXED: &str = "$i";

/// How many ids `create` may find taken in a row before giving up; with 192
/// random bits, even one is a sign of a broken entropy source.
const CREATE_ATTEMPTS: usize = 4;

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

struct Inner {
    config: Arc<Config>,
    /// Where the request's id came from, if it had one.
    source: Option<Source>,
    state: Mutex<State>,
    /// Serialises the store work of one request's session (load, save,
    /// lifecycle), so concurrent calls from one handler don't race. Never
    /// held by the hot read path once loaded.
    ops: tokio::sync::Mutex<()>,
    /// Changes are queued that the body's end must save.
    dirty: AtomicBool,
    /// The wall clock (unix ms) as first read in this request: one read
    /// serves the whole request.
    clock: std::sync::atomic::AtomicU64,
    /// Something used the session (read, changed, asked the store): until
    /// then the head needs no work and no lock.
    used: AtomicBool,
    /// The response head has left: a new cookie can no longer be sent.
    head_gone: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// The request's id (if any) hasn't been looked up.
    NotLoaded,
    /// The stored session was read.
    Loaded,
    /// There is no stored session: a new visitor, an unknown or expired id,
    /// or one deleted in this request.
    Missing,
    /// The store failed; under `Continue` the session reads as empty and
    /// nothing is saved.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieAction {
    Keep,
    Set,
    Remove,
}

struct State {
    id: Option<Id>,
    load: Load,
    /// The user's fields: as loaded, with this request's changes applied.
    fields: FieldMap<String>,
    created_ms: Option<u64>,
    touched_ms: Option<u64>,
    deadline_ms: Option<u64>,
    indexed_ms: Option<u64>,
    /// Changes not yet saved: `Some` sets, `None` removes.
    changes: FieldMap<Option<String>>,
    system: Option<String>,
    turns: Vec<String>,
    cookie: CookieAction,
    max_age: Duration,
    /// A read found the session idle for longer than the touch interval.
    touch_due: bool,
    /// The user of the stored session, as last loaded or saved.
    stored_user: Option<String>,
    /// Index the session under its user at the next save (after a cycle).
    reindex: bool,
    /// An id found past its absolute lifetime, to delete.
    doomed: Option<Id>,
    /// A store call failed in a way the outage policy applies to.
    failed: bool,
    profile: Option<Option<Profile>>,
}

/// What the layer does to the response head.
#[derive(Debug)]
pub(crate) struct HeadOutcome {
    pub(crate) cookie: CookieAction,
    pub(crate) id: Option<Id>,
    pub(crate) max_age: Duration,
    pub(crate) source: Option<Source>,
    pub(crate) refuse: bool,
}

impl HeadOutcome {
    /// Nothing to do to the head.
    pub(crate) fn none() -> Self {
        Self {
            cookie: CookieAction::Keep,
            id: None,
            max_age: Duration::ZERO,
            source: None,
            refuse: false,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The text of a user field's JSON value: a string as itself, anything else
/// as JSON.
fn user_of(json: &str) -> Option<String> {
    user_of_value(serde_json::from_str(json).ok()?)
}

fn user_of_value(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!("tower_ai_session_store_calls_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

impl Session {
    pub(crate) fn new(config: Arc<Config>, id: Option<Id>, source: Option<Source>) -> Self {
        let max_age = config.ttl;
        Self {
            inner: Arc::new(Inner {
                config,
                source,
                state: Mutex::new(State {
                    id,
                    load: if id.is_some() {
                        Load::NotLoaded
                    } else {
                        Load::Missing
                    },
                    fields: FieldMap::default(),
                    created_ms: None,
                    touched_ms: None,
                    deadline_ms: None,
                    indexed_ms: None,
                    changes: FieldMap::default(),
                    system: None,
                    turns: Vec::new(),
                    cookie: CookieAction::Keep,
                    max_age,
                    touch_due: false,
                    stored_user: None,
                    reindex: false,
                    doomed: None,
                    failed: false,
                    profile: None,
                }),
                ops: tokio::sync::Mutex::new(()),
                dirty: AtomicBool::new(false),
                clock: std::sync::atomic::AtomicU64::new(0),
                used: AtomicBool::new(false),
                head_gone: AtomicBool::new(false),
            }),
        }
    }

    fn config(&self) -> &Config {
        &self.inner.config
    }

    fn mark_used(&self) {
        self.inner.used.store(true, Ordering::Release);
    }

    fn head_gone(&self) -> bool {
        self.inner.head_gone.load(Ordering::Acquire)
    }

    /// The wall clock in unix ms, read once per request (a session's
    /// timestamps need no more precision than a request's duration).
    fn now(&self) -> u64 {
        let cached = self.inner.clock.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        let now = now_ms().max(1);
        self.inner.clock.store(now, Ordering::Relaxed);
        now
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
        if let Some(found) = self.local(key) {
            return decode(found.as_deref());
        }
        self.ensure_loaded().await?;
        let raw = {
            let state = self.inner.state.lock();
            match state.changes.get(key) {
                Some(change) => change.clone(),
                None => state.fields.get(key).cloned(),
            }
        };
        decode(raw.as_deref())
    }

    /// The field's raw JSON when it can be answered without the store.
    fn local(&self, key: &str) -> Option<Option<String>> {
        self.mark_used();
        let state = self.inner.state.lock();
        if let Some(change) = state.changes.get(key) {
            return Some(change.clone());
        }
        (state.load != Load::NotLoaded).then(|| state.fields.get(key).cloned())
    }

    /// Sets field `key` to `value` (serialised to JSON). Nothing is sent to
    /// the store now: the change is saved with the response, field by field,
    /// so a concurrent request changing another field keeps its change.
    /// Doesn't load the session.
    ///
    /// Setting the [user field](crate::SessionLayerBuilder::user_field) links
    /// the session to that user (for "log out everywhere" and the profile).
    /// Call [`cycle_id`](Session::cycle_id) at login too.
    ///
    /// Fails on a `$` key (reserved), a value serde can't serialise, or
    /// [`Error::HeadSent`] when the head is gone and there is no stored
    /// session to save into.
    pub fn insert(&self, key: &str, value: impl Serialize) -> Result<(), Error> {
        let json = serde_json::to_string(&value)?;
        self.change(key, Some(json))
    }

    /// Removes field `key` (saved like [`insert`](Session::insert); doesn't
    /// load the session). See [`take`](Session::take) to get the old value.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        self.change(key, None)
    }

    /// Removes field `key` and returns its value (loads the session).
    pub async fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let old = self.get(key).await?;
        self.remove(key)?;
        Ok(old)
    }

    fn change(&self, key: &str, value: Option<String>) -> Result<(), Error> {
        if key.starts_with('$') {
            return Err(Error::ReservedKey);
        }
        self.mark_used();
        let mut state = self.inner.state.lock();
        if self.head_gone() && state.id.is_none() {
            return Err(Error::HeadSent);
        }
        if state.load != Load::NotLoaded {
            match &value {
                Some(v) => state.fields.insert(key.to_owned(), v.clone()),
                None => state.fields.remove(key),
            };
        }
        state.changes.insert(key.to_owned(), value);
        self.inner.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The names of the session's fields (loads the session).
    pub async fn keys(&self) -> Result<Vec<String>, Error> {
        self.ensure_loaded().await?;
        Ok(self.inner.state.lock().fields.keys().cloned().collect())
    }

    /// Whether the session has no field (loads the session).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        self.ensure_loaded().await?;
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
    /// [user field](crate::SessionLayerBuilder::user_field) (loads the
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
            Err(e) => return Err(self.failed("load_profile", e)),
        };
        self.inner.state.lock().profile = Some(loaded.clone());
        Ok(loaded)
    }

    /// Sets the `set` fields and removes the `remove` fields of the user's
    /// profile, now (one store round trip). [`Error::NoUser`] when the
    /// session has no user.
    pub async fn update_profile<K, V>(
        &self,
        set: impl IntoIterator<Item = (K, V)>,
        remove: impl IntoIterator<Item = K>,
    ) -> Result<(), Error>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let user = self.user_id().await?.ok_or(Error::NoUser)?;
        let changes = Changes::new(
            set.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            remove.into_iter().map(Into::into).collect(),
        );
        if let Err(e) = self.config().store.update_profile(&user, &changes).await {
            return Err(self.failed("update_profile", e));
        }
        self.inner.state.lock().profile = None;
        Ok(())
    }

    /// The session's conversation memory.
    pub fn history(&self) -> History {
        History::new(self.clone())
    }

    /// The session id, when the visitor has a session (for logs of your own:
    /// treat it as a secret).
    pub fn id(&self) -> Option<Id> {
        self.inner.state.lock().id
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
        let _ops = self.inner.ops.lock().await;
        self.mark_used();
        if self.head_gone() {
            return Err(Error::HeadSent);
        }
        self.load_locked().await?;
        let (old, mut fields, user, deadline) = {
            let state = self.inner.state.lock();
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
        let created = self.inner.state.lock().created_ms.unwrap_or(now);
        meta(&mut fields, created, now, deadline);
        let user_field = self.config().user_field.as_ref();
        if fields.iter().any(|(k, _)| k == user_field) {
            // Indexed under its user by the save at the head.
            fields.push((INDEXED.to_owned(), now.to_string()));
        }
        let ttl = self.ttl_now(deadline, now);
        let new = self.create_new(&fields, ttl).await?;
        let store = &self.config().store;
        if let Err(e) = store
            .copy_history(&old, &new, self.config().history_turns, ttl)
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
        let mut state = self.inner.state.lock();
        state.id = Some(new);
        state.changes.clear();
        state.stored_user = state
            .fields
            .get(self.config().user_field.as_ref())
            .and_then(|v| user_of(v));
        state.reindex = true;
        state.touched_ms = Some(now);
        state.cookie = CookieAction::Set;
        state.max_age = ttl;
        metrics::counter!("tower_ai_session_cycled_total").increment(1);
        Ok(())
    }

    /// Deletes the session now — its fields and history, on every replica
    /// at once — and tells the client to drop its cookie. Anything inserted
    /// afterwards in the same request starts a new session with a new id.
    /// One store round trip (two when the session has a user, to update the
    /// user's index).
    pub async fn delete(&self) -> Result<(), Error> {
        self.mark_used();
        let _ops = self.inner.ops.lock().await;
        let (id, user) = {
            let state = self.inner.state.lock();
            (state.id, state.stored_user.clone())
        };
        if let Some(id) = &id {
            if let Err(e) = self.config().store.delete(id).await {
                return Err(self.failed("delete", e));
            }
            if let Some(user) = &user
                && let Err(e) = self.config().store.unindex_session(user, id).await
            {
                tracing::debug!(error = %e, "deleted session not removed from the user index");
            }
        }
        let mut state = self.inner.state.lock();
        state.id = None;
        state.load = Load::Missing;
        state.fields.clear();
        state.changes.clear();
        state.system = None;
        state.turns.clear();
        state.touch_due = false;
        state.stored_user = None;
        state.reindex = false;
        state.profile = None;
        if self.inner.source.is_some() || state.cookie == CookieAction::Set {
            state.cookie = CookieAction::Remove;
        }
        self.inner.dirty.store(false, Ordering::Release);
        metrics::counter!("tower_ai_session_deleted_total").increment(1);
        Ok(())
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
            Err(e) => return Err(self.failed("delete_user_sessions", e)),
        };
        self.delete().await?;
        Ok(deleted)
    }

    /// Saves the changes made so far now, instead of with the response (one
    /// store round trip, none when nothing changed). Useful before a long
    /// stream, or from a task that outlives the response.
    pub async fn save(&self) -> Result<(), Error> {
        self.mark_used();
        let _ops = self.inner.ops.lock().await;
        self.persist_locked(false).await
    }

    // --------------------------------------------------------------- history

    pub(crate) async fn append_turns(&self, turns: Vec<Turn>) -> Result<usize, Error> {
        let (system, turns) = self.encode_turns(turns)?;
        self.mark_used();
        let _ops = self.inner.ops.lock().await;
        let max_turns = self.config().history_turns;
        // Twice at most: the session may vanish between the two steps.
        for _ in 0..2 {
            let Some(id) = self.ensure_stored_locked().await? else {
                return Err(Error::HeadSent);
            };
            let deadline = self.inner.state.lock().deadline_ms;
            let ttl = self.ttl_now(deadline, self.now());
            let append = HistoryAppend {
                system: system.as_deref(),
                turns: &turns,
                max_turns,
            };
            match self.config().store.append_history(&id, append, ttl).await {
                Ok(Some(kept)) => {
                    count("append_history", "ok");
                    return Ok(kept);
                }
                Ok(None) => {
                    count("append_history", "missing");
                    let mut state = self.inner.state.lock();
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

    pub(crate) fn queue_turn(&self, turn: Turn) -> Result<(), Error> {
        let (system, turns) = self.encode_turns(vec![turn])?;
        self.mark_used();
        let mut state = self.inner.state.lock();
        if self.head_gone() && state.id.is_none() {
            return Err(Error::HeadSent);
        }
        if system.is_some() {
            state.system = system;
        }
        state.turns.extend(turns);
        self.inner.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn encode_turns(&self, turns: Vec<Turn>) -> Result<(Option<String>, Vec<String>), Error> {
        let max = self.config().max_turn_bytes;
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
    pub(crate) async fn read_turns(&self, last: usize) -> Result<(Option<Turn>, Vec<Turn>), Error> {
        self.mark_used();
        let Some(id) = self.inner.state.lock().id else {
            return Ok((None, Vec::new()));
        };
        let store = &self.config().store;
        let last = last.min(self.config().history_turns);
        let (loaded, read) = tokio::join!(self.ensure_loaded(), store.read_history(&id, last));
        loaded?;
        if self.inner.state.lock().id != Some(id) {
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

    pub(crate) async fn clear_turns(&self) -> Result<(), Error> {
        self.mark_used();
        let Some(id) = self.inner.state.lock().id else {
            return Ok(());
        };
        {
            let mut state = self.inner.state.lock();
            state.system = None;
            state.turns.clear();
        }
        match self.config().store.clear_history(&id).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed("clear_history", e)),
        }
    }

    // ------------------------------------------------------------ store work

    /// The error for a failed store call, recording it for the outage
    /// policy.
    fn failed(&self, op: &'static str, e: StoreError) -> Error {
        count(op, "error");
        tracing::warn!(op, error = %e, "session store call failed");
        if e.is_outage() {
            self.inner.state.lock().failed = true;
        }
        Error::Store(e)
    }

    async fn ensure_loaded(&self) -> Result<(), Error> {
        self.mark_used();
        let load = self.inner.state.lock().load;
        if load == Load::NotLoaded {
            let _ops = self.inner.ops.lock().await;
            return self.load_locked().await;
        }
        self.load_result(load)
    }

    fn load_result(&self, load: Load) -> Result<(), Error> {
        match (load, self.config().outage) {
            (Load::Failed, OutagePolicy::Refuse) => Err(Error::Store(StoreError::unavailable(
                "the session store failed earlier in this request",
            ))),
            _ => Ok(()),
        }
    }

    /// Loads the stored session if the request has an id and it hasn't been
    /// looked up. Call with `ops` held.
    async fn load_locked(&self) -> Result<(), Error> {
        let id = {
            let state = self.inner.state.lock();
            if state.load != Load::NotLoaded {
                return self.load_result(state.load);
            }
            match state.id {
                Some(id) => id,
                None => return Ok(()),
            }
        };
        let result = self.config().store.load(&id).await;
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
                let mut state = self.inner.state.lock();
                state.load = Load::Failed;
                drop(state);
                let err = self.failed("load", e);
                match self.config().outage {
                    OutagePolicy::Refuse => Err(err),
                    OutagePolicy::Continue => Ok(()),
                }
            }
        }
    }

    fn loaded(&self, id: Id, fields: Fields) {
        let config = self.config();
        let now = self.now();
        let mut state = self.inner.state.lock();
        let mut map = FieldMap::with_capacity(fields.len());
        for (k, v) in fields {
            if let Some(meta) = k.strip_prefix('$') {
                let value = v.parse::<u64>().ok();
                match meta {
                    "c" => state.created_ms = value,
                    "t" => state.touched_ms = value,
                    "d" => state.deadline_ms = value,
                    "i" => state.indexed_ms = value,
                    _ => {}
                }
            } else {
                // Field names are unique in a stored session.
                map.0.push((k, v));
            }
        }
        if state.deadline_ms.is_some_and(|d| d <= now) {
            drop(state);
            tracing::debug!("session past its absolute lifetime: starting afresh");
            self.missing();
            self.inner.state.lock().doomed = Some(id);
            return;
        }
        state.stored_user = map.get(config.user_field.as_ref()).and_then(|v| user_of(v));
        // This request's changes win over what was stored.
        for (k, change) in state.changes.iter() {
            match change {
                Some(v) => map.insert(k.clone(), v.clone()),
                None => map.remove(k),
            };
        }
        state.fields = map;
        state.touch_due = state
            .touched_ms
            .is_none_or(|t| now.saturating_sub(t) >= millis(config.touch_interval));
        state.load = Load::Loaded;
    }

    /// The request's id leads nowhere: never adopt it.
    fn missing(&self) {
        let mut state = self.inner.state.lock();
        state.id = None;
        state.load = Load::Missing;
        state.fields.clear();
        state.stored_user = None;
        let State {
            fields, changes, ..
        } = &mut *state;
        for (k, change) in changes.iter() {
            if let Some(v) = change {
                fields.insert(k.clone(), v.clone());
            }
        }
        if self.inner.source == Some(Source::Cookie) && state.cookie == CookieAction::Keep {
            state.cookie = CookieAction::Remove;
        }
    }

    /// The TTL to give the store now: the idle TTL, shortened near an
    /// absolute deadline.
    fn ttl_now(&self, deadline_ms: Option<u64>, now: u64) -> Duration {
        let ttl = self.config().ttl;
        match deadline_ms {
            Some(d) => ttl.min(Duration::from_millis(d.saturating_sub(now).max(1))),
            None => ttl,
        }
    }

    /// Creates a session under a fresh id, drawing again if one is taken.
    async fn create_new(&self, fields: &Fields, ttl: Duration) -> Result<Id, Error> {
        for _ in 0..CREATE_ATTEMPTS {
            let id = Id::random()?;
            match self.config().store.create(&id, fields, ttl).await {
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

    /// Makes sure the session is stored (creating it, with the changes made
    /// so far, when the visitor has none) and returns its id; `None` when it
    /// would need a new cookie after the head. Call with `ops` held.
    async fn ensure_stored_locked(&self) -> Result<Option<Id>, Error> {
        self.load_locked().await?;
        let (id, load) = {
            let state = self.inner.state.lock();
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
        Ok(self.inner.state.lock().id)
    }

    /// Saves what changed: field changes, queued history, a due touch, the
    /// user index. `create` makes a session even with nothing to save (for
    /// the history). Call with `ops` held.
    async fn persist_locked(&self, create: bool) -> Result<(), Error> {
        let config = Arc::clone(&self.inner.config);
        let user_field = config.user_field.as_ref();
        // A change of user needs the stored one, to keep the indexes right.
        let user_changes = self.inner.state.lock().changes.contains_key(user_field);
        if user_changes {
            self.load_locked().await?;
        }
        let now = self.now();
        let head_gone = self.head_gone();
        let plan = {
            let mut state = self.inner.state.lock();
            self.inner.dirty.store(false, Ordering::Release);
            let mut set = Vec::new();
            let mut remove = Vec::new();
            for (k, change) in state.changes.drain() {
                match change {
                    Some(v) => set.push((k, v)),
                    None => remove.push(k),
                }
            }
            Plan {
                id: state.id,
                load: state.load,
                set,
                remove,
                system: state.system.take(),
                turns: std::mem::take(&mut state.turns),
                touch: std::mem::take(&mut state.touch_due),
                user: state.fields.get(user_field).and_then(|v| user_of(v)),
                stored_user: state.stored_user.clone(),
                reindex: std::mem::take(&mut state.reindex),
                doomed: state.doomed.take(),
                deadline: state.deadline_ms,
                indexed: state.indexed_ms,
            }
        };
        if let Some(doomed) = plan.doomed
            && let Err(e) = config.store.delete(&doomed).await
        {
            tracing::debug!(error = %e, "expired session not deleted");
        }
        if plan.load == Load::Failed {
            if !plan.set.is_empty() || !plan.remove.is_empty() || !plan.turns.is_empty() {
                metrics::counter!("tower_ai_session_unsaved_total").increment(1);
                tracing::warn!("session changes not saved: the store failed earlier");
            }
            return Ok(());
        }
        let writes = !plan.set.is_empty() || !plan.remove.is_empty();
        let history = plan.system.is_some() || !plan.turns.is_empty();
        let ttl = self.ttl_now(plan.deadline, now);
        let mut id = plan.id;
        let mut cookie = None;
        // The user's index keeps an entry for twice the TTL after it was
        // last refreshed, and a write or a touch refreshes it once half a
        // TTL has passed: an active session always outlives its entry's
        // refresh, so "log out everywhere" finds it.
        let user_moved = plan.user != plan.stored_user;
        let index_due = plan.user.is_some()
            && (user_moved
                || plan.reindex
                || ((writes || plan.touch)
                    && plan
                        .indexed
                        .is_none_or(|i| now.saturating_sub(i) >= millis(ttl) / 2)));

        let mut set = plan.set;
        if let Some(current) = id.filter(|_| writes || plan.touch || history) {
            set.push((TOUCHED.to_owned(), now.to_string()));
            if index_due {
                set.push((INDEXED.to_owned(), now.to_string()));
            }
            let changes = Changes::new(set, plan.remove);
            let result = config.store.update(&current, &changes, ttl).await;
            set = changes.into_parts().0;
            match result {
                Ok(true) => {
                    count("update", "ok");
                    // Renew the cookie with the TTL: when a touch was due, or
                    // when nothing tells when it was last renewed.
                    if plan.touch || plan.load == Load::NotLoaded {
                        cookie = Some(CookieAction::Set);
                    }
                }
                Ok(false) => {
                    count("update", "missing");
                    tracing::debug!("session gone before its changes were saved: starting afresh");
                    self.missing();
                    id = None;
                }
                Err(e) if writes || history => return Err(self.failed("update", e)),
                Err(e) => {
                    count("update", "error");
                    tracing::debug!(error = %e, "session TTL not renewed");
                }
            }
        }

        if id.is_none() && (writes || history || create) {
            if head_gone {
                metrics::counter!("tower_ai_session_unsaved_total").increment(1);
                tracing::warn!(
                    "session changes made after the response head for a visitor without a session: not saved"
                );
                return Err(Error::HeadSent);
            }
            // Only this request's changes: a session deleted meanwhile must
            // not come back.
            let mut fields = set;
            meta(
                &mut fields,
                now,
                now,
                config.absolute.map(|a| now + millis(a)),
            );
            if plan.user.is_some() {
                fields.push((INDEXED.to_owned(), now.to_string()));
            }
            let new = self.create_new(&fields, config.ttl).await?;
            id = Some(new);
            cookie = Some(CookieAction::Set);
            let mut state = self.inner.state.lock();
            state.id = Some(new);
            state.load = Load::Loaded;
            state.created_ms = Some(now);
            state.touched_ms = Some(now);
            state.deadline_ms = config.absolute.map(|a| now + millis(a));
        }

        if let (Some(id), true) = (id, history) {
            let append = HistoryAppend {
                system: plan.system.as_deref(),
                turns: &plan.turns,
                max_turns: config.history_turns,
            };
            match config.store.append_history(&id, append, ttl).await {
                Ok(_) => count("append_history", "ok"),
                Err(e) => return Err(self.failed("append_history", e)),
            }
        }

        if let Some(id) = id {
            let created_now = plan.id != Some(id);
            if let Some(user) = &plan.user
                && (index_due || created_now)
                && let Err(e) = config.store.index_session(user, &id, ttl * 2).await
            {
                tracing::debug!(error = %e, "session not added to the user index");
            }
            if let (Some(old), Some(old_id), true) = (&plan.stored_user, plan.id, user_moved)
                && let Err(e) = config.store.unindex_session(old, &old_id).await
            {
                tracing::debug!(error = %e, "session not removed from the old user's index");
            }
            let mut state = self.inner.state.lock();
            state.stored_user = plan.user.clone();
            if user_moved {
                state.profile = None;
            }
            if writes || plan.touch {
                state.touched_ms = Some(now);
            }
            if index_due || created_now {
                state.indexed_ms = Some(now);
            }
            if let Some(action) = cookie {
                state.cookie = action;
                state.max_age = ttl;
            }
        }
        Ok(())
    }

    // ------------------------------------------------ used by the layer

    /// Whether the head needs store work or header changes: one atomic
    /// load for a session nobody used, one lock otherwise.
    pub(crate) fn needs_finish(&self) -> bool {
        if !self.inner.used.load(Ordering::Acquire) {
            return false;
        }
        if self.inner.dirty.load(Ordering::Acquire) {
            return true;
        }
        let state = self.inner.state.lock();
        state.touch_due
            || state.cookie != CookieAction::Keep
            || state.failed
            || state.doomed.is_some()
            || state.reindex
    }

    /// Whether changes wait to be saved (cheap: one atomic load).
    pub(crate) fn is_dirty(&self) -> bool {
        self.inner.dirty.load(Ordering::Acquire)
    }

    /// Saves before the head and says what to put on it. Consumes a clone.
    pub(crate) async fn finish_head(self) -> HeadOutcome {
        {
            let _ops = self.inner.ops.lock().await;
            if let Err(e) = self.persist_locked(false).await {
                tracing::debug!(error = %e, "session not saved at the response head");
            }
        }
        self.head_sent()
    }

    /// Marks the head as sent and says what to put on it.
    pub(crate) fn head_sent(&self) -> HeadOutcome {
        self.inner.head_gone.store(true, Ordering::Release);
        if !self.inner.used.load(Ordering::Acquire) {
            return HeadOutcome::none();
        }
        let mut state = self.inner.state.lock();
        HeadOutcome {
            cookie: std::mem::replace(&mut state.cookie, CookieAction::Keep),
            id: state.id,
            max_age: state.max_age,
            source: self.inner.source,
            refuse: state.failed && self.inner.config.outage == OutagePolicy::Refuse,
        }
    }

    /// Saves changes made while the body streamed, before its end is passed
    /// on.
    pub(crate) async fn finish_body(self) {
        let _ops = self.inner.ops.lock().await;
        if let Err(e) = self.persist_locked(false).await {
            metrics::counter!("tower_ai_session_unsaved_total").increment(1);
            tracing::warn!(error = %e, "session changes made during the stream not saved");
        }
    }
}

struct Plan {
    id: Option<Id>,
    load: Load,
    set: Fields,
    remove: Vec<String>,
    system: Option<String>,
    turns: Vec<String>,
    touch: bool,
    user: Option<String>,
    stored_user: Option<String>,
    reindex: bool,
    doomed: Option<Id>,
    deadline: Option<u64>,
    indexed: Option<u64>,
}

fn meta(fields: &mut Fields, created: u64, now: u64, deadline: Option<u64>) {
    fields.retain(|(k, _)| !k.starts_with('$'));
    fields.push((CREATED.to_owned(), created.to_string()));
    fields.push((TOUCHED.to_owned(), now.to_string()));
    if let Some(d) = deadline {
        fields.push((DEADLINE.to_owned(), d.to_string()));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn decode<T: DeserializeOwned>(raw: Option<&str>) -> Result<Option<T>, Error> {
    raw.map(serde_json::from_str)
        .transpose()
        .map_err(Error::Json)
}

/// A session's few fields: a vector searched in order is faster than a hash
/// map at this size, and allocates once.
struct FieldMap<V>(Vec<(String, V)>);

impl<V> Default for FieldMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> FieldMap<V> {
    fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.position(key).map(|i| &self.0[i].1)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    fn insert(&mut self, key: String, value: V) {
        match self.position(&key) {
            Some(i) => self.0[i].1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(i) = self.position(key) {
            self.0.swap_remove(i);
        }
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    fn drain(&mut self) -> std::vec::Drain<'_, (String, V)> {
        self.0.drain(..)
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
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
