//! The state of one request's session, shared by its clones: what was
//! loaded, what changed since (the dirty tracking), and what the response
//! head must carry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::fields::FieldMap;
use super::record::{millis, user_of};
use crate::carrier::Source;
use crate::config::{Config, OutagePolicy};
use crate::error::Error;
use crate::id::Id;
use crate::profile::Profile;
use crate::store::Fields;

/// What a session's clones share.
pub(super) struct Inner {
    pub(super) config: Arc<Config>,
    /// Where the request's id came from, if it had one.
    pub(super) source: Option<Source>,
    pub(super) state: Mutex<State>,
    /// Serialises the store work of one request's session (load, save,
    /// lifecycle), so concurrent calls from one handler don't race. Never
    /// held by the hot read path once loaded.
    pub(super) ops: tokio::sync::Mutex<()>,
    /// Changes are queued that the body's end must save.
    pub(super) dirty: AtomicBool,
    /// The wall clock (unix ms) as first read in this request: one read
    /// serves the whole request.
    clock: AtomicU64,
    /// Something used the session (read, changed, asked the store): until
    /// then the head needs no work and no lock.
    used: AtomicBool,
    /// The response head has left: a new cookie can no longer be sent.
    head_gone: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Load {
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

pub(super) struct State {
    pub(super) id: Option<Id>,
    pub(super) load: Load,
    /// The user's fields: as loaded, with this request's changes applied.
    pub(super) fields: FieldMap<String>,
    pub(super) created_ms: Option<u64>,
    pub(super) touched_ms: Option<u64>,
    pub(super) deadline_ms: Option<u64>,
    pub(super) indexed_ms: Option<u64>,
    /// Changes not yet saved: `Some` sets, `None` removes.
    pub(super) changes: FieldMap<Option<String>>,
    pub(super) system: Option<String>,
    pub(super) turns: Vec<String>,
    pub(super) cookie: CookieAction,
    pub(super) max_age: Duration,
    /// A read found the session idle for longer than the touch interval.
    pub(super) touch_due: bool,
    /// The user of the stored session, as last loaded or saved.
    pub(super) stored_user: Option<String>,
    /// Index the session under its user at the next save (after a cycle).
    pub(super) reindex: bool,
    /// An id found past its absolute lifetime, to delete.
    pub(super) doomed: Option<Id>,
    /// A store call failed in a way the outage policy applies to.
    pub(super) failed: bool,
    pub(super) profile: Option<Option<Profile>>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Inner {
    /// The state of a request's session, before anything used it.
    pub(super) fn new(config: Arc<Config>, id: Option<Id>, source: Option<Source>) -> Self {
        let max_age = config.ttl;
        Self {
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
            clock: AtomicU64::new(0),
            used: AtomicBool::new(false),
            head_gone: AtomicBool::new(false),
        }
    }

    pub(super) fn mark_used(&self) {
        self.used.store(true, Ordering::Release);
    }

    pub(super) fn head_gone(&self) -> bool {
        self.head_gone.load(Ordering::Acquire)
    }

    /// The wall clock in unix ms, read once per request (a session's
    /// timestamps need no more precision than a request's duration).
    pub(super) fn now(&self) -> u64 {
        let cached = self.clock.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        let now = now_ms().max(1);
        self.clock.store(now, Ordering::Relaxed);
        now
    }

    // ---------------------------------------------------------------- fields

    /// The field's raw JSON when it can be answered without the store.
    pub(super) fn local(&self, key: &str) -> Option<Option<String>> {
        self.mark_used();
        let state = self.state.lock();
        if let Some(change) = state.changes.get(key) {
            return Some(change.clone());
        }
        (state.load != Load::NotLoaded).then(|| state.fields.get(key).cloned())
    }

    /// The field's raw JSON as this request sees it: changed, else loaded.
    pub(super) fn current(&self, key: &str) -> Option<String> {
        let state = self.state.lock();
        match state.changes.get(key) {
            Some(change) => change.clone(),
            None => state.fields.get(key).cloned(),
        }
    }

    /// Records a change of field `key` (`None` removes it), to be saved.
    pub(super) fn change(&self, key: &str, value: Option<String>) -> Result<(), Error> {
        if key.starts_with('$') {
            return Err(Error::ReservedKey);
        }
        self.mark_used();
        let mut state = self.state.lock();
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
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Queues encoded history turns (and a system message) for the next
    /// save.
    pub(super) fn queue_turns(
        &self,
        system: Option<String>,
        turns: Vec<String>,
    ) -> Result<(), Error> {
        self.mark_used();
        let mut state = self.state.lock();
        if self.head_gone() && state.id.is_none() {
            return Err(Error::HeadSent);
        }
        if system.is_some() {
            state.system = system;
        }
        state.turns.extend(turns);
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    // ------------------------------------------------------------- transitions

    /// Adopts the stored session `fields` of `id`, under this request's
    /// changes; an id past its absolute lifetime reads as missing instead
    /// (and is deleted at the next save).
    pub(super) fn loaded(&self, id: Id, fields: Fields) {
        let config = &self.config;
        let now = self.now();
        let mut state = self.state.lock();
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
                map.push_new(k, v);
            }
        }
        if state.deadline_ms.is_some_and(|d| d <= now) {
            drop(state);
            tracing::debug!("session past its absolute lifetime: starting afresh");
            self.missing();
            self.state.lock().doomed = Some(id);
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
    pub(super) fn missing(&self) {
        let mut state = self.state.lock();
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
        if self.source == Some(Source::Cookie) && state.cookie == CookieAction::Keep {
            state.cookie = CookieAction::Remove;
        }
    }

    /// The session was deleted: forget it and everything queued for it, and
    /// have the client drop its cookie.
    pub(super) fn deleted(&self) {
        let mut state = self.state.lock();
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
        if self.source.is_some() || state.cookie == CookieAction::Set {
            state.cookie = CookieAction::Remove;
        }
        self.dirty.store(false, Ordering::Release);
    }

    // ------------------------------------------------------- the response head

    /// Whether the head needs store work or header changes: one atomic
    /// load for a session nobody used, one lock otherwise.
    pub(super) fn needs_finish(&self) -> bool {
        if !self.used.load(Ordering::Acquire) {
            return false;
        }
        if self.dirty.load(Ordering::Acquire) {
            return true;
        }
        let state = self.state.lock();
        state.touch_due
            || state.cookie != CookieAction::Keep
            || state.failed
            || state.doomed.is_some()
            || state.reindex
    }

    /// Whether changes wait to be saved (cheap: one atomic load).
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Marks the head as sent and says what to put on it.
    pub(super) fn head_sent(&self) -> HeadOutcome {
        self.head_gone.store(true, Ordering::Release);
        if !self.used.load(Ordering::Acquire) {
            return HeadOutcome::none();
        }
        let mut state = self.state.lock();
        HeadOutcome {
            cookie: std::mem::replace(&mut state.cookie, CookieAction::Keep),
            id: state.id,
            max_age: state.max_age,
            source: self.source,
            refuse: state.failed && self.config.outage == OutagePolicy::Refuse,
        }
    }
}
