//! An in-process, bounded session store.
//!
//! [`MemoryStore`] keeps sessions in this process: for a single replica, for
//! development and for tests. It is bounded: at most `capacity` sessions (and
//! as many user indexes and profiles); past that the least useful entries are
//! evicted (`moka`'s TinyLFU), and an idle session is forgotten when its TTL
//! passes, so a client that makes sessions in a loop can't grow memory
//! without limit. Clones share the same sessions.
//!
//! Expiry follows `tokio`'s clock, so tests with paused time see sessions
//! expire when they advance it.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use tower_session::{Id, MemoryStore, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::with_capacity(10_000);
//! let id = Id::random()?;
//! store.create(&id, &vec![("n".into(), "1".into())], Duration::from_secs(60)).await?;
//! assert!(store.load(&id).await?.is_some());
//!
//! tokio::time::advance(Duration::from_secs(61)).await;
//! assert!(store.load(&id).await?.is_none());
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use moka::Expiry;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Changes, Fields, HistoryAppend, SessionStore, StoredHistory};
use crate::error::StoreError;
use crate::id::Id;

/// The default bound: 100,000 sessions.
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// Sessions in this process, bounded; see the [module docs](self).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: moka::sync::Cache<Id, Arc<Entry>>,
    users: moka::sync::Cache<String, Arc<Mutex<HashMap<Id, Instant>>>>,
    profiles: moka::sync::Cache<String, Arc<Mutex<HashMap<String, String>>>>,
}

struct Entry {
    record: Mutex<Record>,
    /// When `moka` may evict the entry: nanoseconds after [`EPOCH`]. Kept
    /// ahead of the session's own deadline (by up to one TTL), so renewing
    /// a session rarely needs to tell `moka`, and read without a lock.
    evict_after: AtomicU64,
}

struct Record {
    fields: HashMap<String, String>,
    system: Option<String>,
    turns: VecDeque<String>,
    expires_at: Instant,
    /// The deadline `moka` was last given, on the same clock as
    /// `expires_at`.
    told: Instant,
    /// Set under the lock when the session is deleted, so a request holding
    /// the entry can't write to it after it left the map.
    deleted: bool,
}

/// The origin of [`Entry::evict_after`].
static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl Entry {
    fn new(record: Record) -> Self {
        let entry = Self {
            record: Mutex::new(record),
            evict_after: AtomicU64::new(0),
        };
        {
            let mut record = entry.record.lock();
            entry.tell(&mut record, Instant::now());
        }
        entry
    }

    /// Sets the eviction time to the record's deadline plus as much again
    /// as it has left (at most one TTL of headroom).
    fn tell(&self, record: &mut Record, now: Instant) {
        let left = record.expires_at.saturating_duration_since(now);
        record.told = record.expires_at + left;
        let at = std::time::Instant::now() + left * 2;
        let nanos = at.saturating_duration_since(*EPOCH).as_nanos();
        self.evict_after
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn remaining(&self, at: std::time::Instant) -> Duration {
        let evict = *EPOCH + Duration::from_nanos(self.evict_after.load(Ordering::Acquire));
        evict.saturating_duration_since(at)
    }
}

impl Record {
    fn is_live(&self, now: Instant) -> bool {
        !self.deleted && now < self.expires_at
    }
}

/// Tells `moka` when an entry may go: at its `evict_after`, re-read on every
/// access so a renewed session isn't evicted at its old time. Whether a
/// session is alive is decided by its record's own deadline, checked on
/// every access; `moka` only frees the memory of dead ones.
struct ByDeadline;

impl Expiry<Id, Arc<Entry>> for ByDeadline {
    fn expire_after_create(
        &self,
        _: &Id,
        entry: &Arc<Entry>,
        at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.remaining(at))
    }

    fn expire_after_read(
        &self,
        _: &Id,
        entry: &Arc<Entry>,
        at: std::time::Instant,
        _: Option<Duration>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.remaining(at))
    }

    fn expire_after_update(
        &self,
        _: &Id,
        entry: &Arc<Entry>,
        at: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.remaining(at))
    }
}

impl MemoryStore {
    /// A store bounded to [`DEFAULT_CAPACITY`] sessions.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store bounded to `capacity` sessions (and as many user indexes and
    /// profiles).
    pub fn with_capacity(capacity: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: moka::sync::Cache::builder()
                    .max_capacity(capacity)
                    .expire_after(ByDeadline)
                    .build(),
                users: moka::sync::Cache::new(capacity),
                profiles: moka::sync::Cache::new(capacity),
            }),
        }
    }

    /// How many sessions are held (approximate: expired entries leave the
    /// map lazily).
    pub fn len(&self) -> u64 {
        self.inner.sessions.run_pending_tasks();
        self.inner.sessions.entry_count()
    }

    /// Whether no session is held (see [`MemoryStore::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live entry for `id`, or `None` (removing a dead one).
    fn live(&self, id: &Id) -> Option<Arc<Entry>> {
        let entry = self.inner.sessions.get(id)?;
        if entry.record.lock().is_live(Instant::now()) {
            Some(entry)
        } else {
            self.inner.sessions.invalidate(id);
            None
        }
    }

    /// Runs `f` on the live record of `id`, renewing its expiry to `ttl`.
    fn with_live<T>(&self, id: &Id, ttl: Duration, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
        let entry = self.inner.sessions.get(id)?;
        let (out, retold) = {
            let mut record = entry.record.lock();
            let now = Instant::now();
            if !record.is_live(now) {
                drop(record);
                self.inner.sessions.invalidate(id);
                return None;
            }
            record.expires_at = now + ttl;
            let out = f(&mut record);
            let retold = record.expires_at > record.told;
            if retold {
                entry.tell(&mut record, now);
            }
            (out, retold)
        };
        if retold {
            // A read makes `moka` recompute the entry's eviction time.
            let _ = self.inner.sessions.get(id);
        }
        Some(out)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.inner.sessions.entry_count())
            .finish_non_exhaustive()
    }
}

fn trim(turns: &mut VecDeque<String>, max: usize) {
    while turns.len() > max {
        turns.pop_front();
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &Id) -> Result<Option<Fields>, StoreError> {
        Ok(self.live(id).map(|entry| {
            let record = entry.record.lock();
            record
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    async fn create(&self, id: &Id, fields: &Fields, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let record = || Record {
            fields: fields.iter().cloned().collect(),
            system: None,
            turns: VecDeque::new(),
            expires_at: now + ttl,
            told: now,
            deleted: false,
        };
        let entry = self
            .inner
            .sessions
            .entry(*id)
            .or_insert_with(|| Arc::new(Entry::new(record())));
        if entry.is_fresh() {
            return Ok(true);
        }
        // The id is in the map: taken, unless what's there is dead.
        let existing = entry.into_value();
        let mut current = existing.record.lock();
        if current.is_live(now) {
            return Ok(false);
        }
        *current = record();
        existing.tell(&mut current, now);
        drop(current);
        self.inner.sessions.insert(*id, existing);
        Ok(true)
    }

    async fn update(&self, id: &Id, changes: &Changes, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self
            .with_live(id, ttl, |record| {
                for (k, v) in changes.set() {
                    record.fields.insert(k.clone(), v.clone());
                }
                for k in changes.removed() {
                    record.fields.remove(k);
                }
            })
            .is_some())
    }

    async fn delete(&self, id: &Id) -> Result<(), StoreError> {
        if let Some(entry) = self.inner.sessions.get(id) {
            entry.record.lock().deleted = true;
            self.inner.sessions.invalidate(id);
        }
        Ok(())
    }

    async fn append_history(
        &self,
        id: &Id,
        append: HistoryAppend<'_>,
        ttl: Duration,
    ) -> Result<Option<usize>, StoreError> {
        Ok(self.with_live(id, ttl, |record| {
            if let Some(system) = append.system {
                record.system = Some(system.to_owned());
            }
            record.turns.extend(append.turns.iter().cloned());
            trim(&mut record.turns, append.max_turns);
            record.turns.len()
        }))
    }

    async fn read_history(&self, id: &Id, last: usize) -> Result<StoredHistory, StoreError> {
        Ok(self
            .live(id)
            .map(|entry| {
                let record = entry.record.lock();
                let skip = record.turns.len().saturating_sub(last);
                StoredHistory {
                    system: record.system.clone(),
                    turns: record.turns.iter().skip(skip).cloned().collect(),
                }
            })
            .unwrap_or_default())
    }

    async fn clear_history(&self, id: &Id) -> Result<(), StoreError> {
        if let Some(entry) = self.live(id) {
            let mut record = entry.record.lock();
            record.system = None;
            record.turns.clear();
        }
        Ok(())
    }

    async fn index_session(&self, user: &str, id: &Id, ttl: Duration) -> Result<(), StoreError> {
        let index = self
            .inner
            .users
            .get_with_by_ref(user, || Arc::new(Mutex::new(HashMap::new())));
        let now = Instant::now();
        let mut index = index.lock();
        // Forget sessions that can no longer be alive, so the index stays
        // as small as the user's live sessions.
        index.retain(|_, until| *until > now);
        index.insert(*id, now + ttl);
        Ok(())
    }

    async fn unindex_session(&self, user: &str, id: &Id) -> Result<(), StoreError> {
        if let Some(index) = self.inner.users.get(user) {
            index.lock().remove(id);
        }
        Ok(())
    }

    async fn delete_user_sessions(&self, user: &str) -> Result<usize, StoreError> {
        let Some(index) = self.inner.users.remove(user) else {
            return Ok(0);
        };
        let ids: Vec<Id> = index.lock().drain().map(|(id, _)| id).collect();
        for id in &ids {
            SessionStore::delete(self, id).await?;
        }
        Ok(ids.len())
    }

    async fn load_profile(&self, user: &str) -> Result<Option<Fields>, StoreError> {
        Ok(self.inner.profiles.get(user).map(|profile| {
            profile
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    async fn update_profile(&self, user: &str, changes: &Changes) -> Result<(), StoreError> {
        let profile = self
            .inner
            .profiles
            .get_with_by_ref(user, || Arc::new(Mutex::new(HashMap::new())));
        let mut profile = profile.lock();
        for (k, v) in changes.set() {
            profile.insert(k.clone(), v.clone());
        }
        for k in changes.removed() {
            profile.remove(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn create_is_nx_and_update_needs_a_live_session() {
        let store = MemoryStore::with_capacity(16);
        let id = Id::random().unwrap();
        let ttl = Duration::from_secs(10);
        assert!(
            store
                .create(&id, &fields(&[("a", "1")]), ttl)
                .await
                .unwrap()
        );
        assert!(
            !store
                .create(&id, &fields(&[("a", "2")]), ttl)
                .await
                .unwrap()
        );
        assert_eq!(store.load(&id).await.unwrap(), Some(fields(&[("a", "1")])));

        let changes = Changes::new(fields(&[("b", "2")]), vec!["a".into()]);
        assert!(store.update(&id, &changes, ttl).await.unwrap());
        assert_eq!(store.load(&id).await.unwrap(), Some(fields(&[("b", "2")])));

        store.delete(&id).await.unwrap();
        assert!(!store.update(&id, &changes, ttl).await.unwrap());
        assert_eq!(store.load(&id).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn updates_slide_the_expiry() {
        let store = MemoryStore::with_capacity(16);
        let id = Id::random().unwrap();
        let ttl = Duration::from_secs(10);
        store.create(&id, &Fields::new(), ttl).await.unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(8)).await;
            assert!(store.update(&id, &Changes::default(), ttl).await.unwrap());
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(store.load(&id).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.load(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_store_is_bounded() {
        let store = MemoryStore::with_capacity(100);
        for _ in 0..1_000 {
            let id = Id::random().unwrap();
            store
                .create(&id, &Fields::new(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(store.len() <= 100, "{} entries", store.len());
    }

    #[tokio::test(start_paused = true)]
    async fn history_is_capped_and_keeps_the_system_message() {
        let store = MemoryStore::with_capacity(16);
        let id = Id::random().unwrap();
        let ttl = Duration::from_secs(10);
        let turns: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let append = HistoryAppend {
            system: Some("sys"),
            turns: &turns,
            max_turns: 3,
        };
        assert_eq!(store.append_history(&id, append, ttl).await.unwrap(), None);
        store.create(&id, &Fields::new(), ttl).await.unwrap();
        assert_eq!(
            store.append_history(&id, append, ttl).await.unwrap(),
            Some(3)
        );
        let history = store.read_history(&id, 2).await.unwrap();
        assert_eq!(history.system.as_deref(), Some("sys"));
        assert_eq!(history.turns, vec!["3".to_owned(), "4".to_owned()]);
    }
}
