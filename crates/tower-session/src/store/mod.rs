//! Where sessions live: the [`SessionStore`] trait and its two backends.
//!
//! - [`MemoryStore`]: in this process, bounded, for one replica or tests.
//! - `RedisStore` (feature `redis`): shared by every replica, standalone or
//!   Cluster, on `fred`.
//!
//! A store is a map from session id to a small map of *fields* (name → JSON
//! text), with an expiry. It knows nothing of cookies, users' sliding clocks
//! or serde: the layer decides what to write and when, and keeps its own
//! metadata in fields whose names start with `$`. Field-level updates are
//! what make two concurrent requests that change different fields both
//! persist, so a store must apply [`SessionStore::update`] field by field,
//! never by rewriting the whole record.
//!
//! Only the five record operations are required. History, the per-user
//! index ("log out everywhere") and profiles have default implementations
//! that answer [`StoreError::unsupported`], so a minimal store is short.
//!
//! # Example
//!
//! A store wrapper that counts loads, delegating everything else:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Duration;
//! use tower_session::store::{Changes, Fields};
//! use tower_session::{Id, MemoryStore, SessionStore, StoreError};
//!
//! #[derive(Debug, Default)]
//! struct Counting {
//!     inner: MemoryStore,
//!     loads: AtomicU64,
//! }
//!
//! impl SessionStore for Counting {
//!     async fn load(&self, id: &Id) -> Result<Option<Fields>, StoreError> {
//!         self.loads.fetch_add(1, Ordering::Relaxed);
//!         self.inner.load(id).await
//!     }
//!     async fn create(&self, id: &Id, fields: &Fields, ttl: Duration) -> Result<bool, StoreError> {
//!         self.inner.create(id, fields, ttl).await
//!     }
//!     async fn update(&self, id: &Id, changes: &Changes, ttl: Duration) -> Result<bool, StoreError> {
//!         self.inner.update(id, changes, ttl).await
//!     }
//!     async fn delete(&self, id: &Id) -> Result<(), StoreError> {
//!         self.inner.delete(id).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Counting::default();
//! let id = Id::random()?;
//! let fields = vec![("user".to_owned(), "\"ada\"".to_owned())];
//! assert!(store.create(&id, &fields, Duration::from_secs(60)).await?);
//! assert_eq!(store.load(&id).await?, Some(fields));
//! assert_eq!(store.loads.load(Ordering::Relaxed), 1);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::StoreError;
use crate::id::Id;

#[cfg(feature = "redis")]
mod batch;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};

/// A session's fields: name → JSON text, in no particular order.
pub type Fields = Vec<(String, String)>;

/// Field changes to apply to a stored session: fields to set and fields to
/// remove. A field is in at most one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    set: Fields,
    remove: Vec<String>,
}

impl Changes {
    /// Changes that set `set` and remove `remove`.
    pub fn new(set: Fields, remove: Vec<String>) -> Self {
        Self { set, remove }
    }

    /// Changes that set the `set` pairs and remove the `remove` names, as a
    /// profile update takes them.
    pub(crate) fn collect<K: Into<String>, V: Into<String>>(
        set: impl IntoIterator<Item = (K, V)>,
        remove: impl IntoIterator<Item = K>,
    ) -> Self {
        Self::new(
            set.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            remove.into_iter().map(Into::into).collect(),
        )
    }

    /// The fields to set (or overwrite).
    pub fn set(&self) -> &[(String, String)] {
        &self.set
    }

    /// The fields to remove.
    pub fn removed(&self) -> &[String] {
        &self.remove
    }

    /// The fields to set and the fields to remove.
    pub fn into_parts(self) -> (Fields, Vec<String>) {
        (self.set, self.remove)
    }

    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// Turns to add to a session's conversation history in one atomic step.
#[derive(Debug, Clone, Copy)]
pub struct HistoryAppend<'a> {
    /// A new system message, replacing the previous one. Kept apart from the
    /// capped list, so trimming never drops it.
    pub system: Option<&'a str>,
    /// Encoded turns, oldest first, appended at the end of the list.
    pub turns: &'a [String],
    /// After appending, keep only this many of the newest turns.
    pub max_turns: usize,
}

/// A session's stored history: the encoded system message and the newest
/// turns, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredHistory {
    /// The system message, if any.
    pub system: Option<String>,
    /// The turns, oldest first.
    pub turns: Vec<String>,
}

/// A place to keep sessions.
///
/// Implemented by [`MemoryStore`] and `RedisStore`; implement it to keep
/// sessions elsewhere. Every method is one logical operation; the layer calls
/// them only when a handler touched the session, and only with what changed.
///
/// Expiry: `ttl` is the time the session (its fields, history and system
/// message together) may stay idle from now. `create` and `update` set it;
/// the layer always passes a `$t` (last activity) field along, so a store
/// needs no clock of its own.
pub trait SessionStore: Send + Sync + 'static {
    /// Every field of session `id`, or `None` when there is no such session
    /// (never created, deleted or expired).
    fn load(&self, id: &Id) -> impl Future<Output = Result<Option<Fields>, StoreError>> + Send;

    /// Creates session `id` with `fields`, expiring after `ttl`, **only if no
    /// session `id` exists** (`SET NX` semantics). `Ok(false)` when the id is
    /// taken; the layer then draws another id, so a collision can never merge
    /// two sessions.
    fn create(
        &self,
        id: &Id,
        fields: &Fields,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Applies `changes` field by field to session `id` and renews the expiry
    /// of everything stored for it (fields, history) to `ttl`, **only if the
    /// session exists**. `Ok(false)` when it doesn't: nothing may be written
    /// then, or a deleted session would come back.
    fn update(
        &self,
        id: &Id,
        changes: &Changes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes session `id`, its history included. Deleting a missing
    /// session is not an error.
    fn delete(&self, id: &Id) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends to the history of session `id` atomically: pushes the turns,
    /// trims the list to `append.max_turns`, renews the expiry of the whole
    /// session to `ttl`. Returns the number of turns kept, or `None` when the
    /// session doesn't exist (nothing written).
    fn append_history(
        &self,
        id: &Id,
        append: HistoryAppend<'_>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        let _ = (id, append, ttl);
        async { Err(StoreError::unsupported("append_history")) }
    }

    /// The system message and the newest `last` turns of session `id`
    /// (empty when there is no such session).
    fn read_history(
        &self,
        id: &Id,
        last: usize,
    ) -> impl Future<Output = Result<StoredHistory, StoreError>> + Send {
        let _ = (id, last);
        async { Err(StoreError::unsupported("read_history")) }
    }

    /// Removes the history (turns and system message) of session `id`.
    fn clear_history(&self, id: &Id) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = id;
        async { Err(StoreError::unsupported("clear_history")) }
    }

    /// Copies the history of session `from` to session `to` (which must
    /// exist), for `cycle_id`. The default reads and appends.
    fn copy_history(
        &self,
        from: &Id,
        to: &Id,
        max_turns: usize,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let history = self.read_history(from, max_turns).await?;
            if history.system.is_none() && history.turns.is_empty() {
                return Ok(());
            }
            let append = HistoryAppend {
                system: history.system.as_deref(),
                turns: &history.turns,
                max_turns,
            };
            self.append_history(to, append, ttl).await.map(drop)
        }
    }

    /// Records that session `id` belongs to `user`, for
    /// [`delete_user_sessions`](SessionStore::delete_user_sessions). `ttl` is
    /// how long the session may still live; the index may forget it after
    /// that.
    fn index_session(
        &self,
        user: &str,
        id: &Id,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (user, id, ttl);
        async { Err(StoreError::unsupported("index_session")) }
    }

    /// Forgets that session `id` belongs to `user`.
    fn unindex_session(
        &self,
        user: &str,
        id: &Id,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (user, id);
        async { Err(StoreError::unsupported("unindex_session")) }
    }

    /// Deletes every session of `user` ("log out everywhere"); returns how
    /// many the index held.
    fn delete_user_sessions(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = user;
        async { Err(StoreError::unsupported("delete_user_sessions")) }
    }

    /// The profile of `user` (name → text), or `None` when it has none.
    fn load_profile(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Option<Fields>, StoreError>> + Send {
        let _ = user;
        async { Err(StoreError::unsupported("load_profile")) }
    }

    /// Applies `changes` to the profile of `user`, creating it if needed.
    /// Profiles don't expire with sessions.
    fn update_profile(
        &self,
        user: &str,
        changes: &Changes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (user, changes);
        async { Err(StoreError::unsupported("update_profile")) }
    }
}

/// A shared store is a store.
impl<T: SessionStore> SessionStore for Arc<T> {
    fn load(&self, id: &Id) -> impl Future<Output = Result<Option<Fields>, StoreError>> + Send {
        T::load(self, id)
    }
    fn create(
        &self,
        id: &Id,
        fields: &Fields,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        T::create(self, id, fields, ttl)
    }
    fn update(
        &self,
        id: &Id,
        changes: &Changes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        T::update(self, id, changes, ttl)
    }
    fn delete(&self, id: &Id) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::delete(self, id)
    }
    fn append_history(
        &self,
        id: &Id,
        append: HistoryAppend<'_>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send {
        T::append_history(self, id, append, ttl)
    }
    fn read_history(
        &self,
        id: &Id,
        last: usize,
    ) -> impl Future<Output = Result<StoredHistory, StoreError>> + Send {
        T::read_history(self, id, last)
    }
    fn clear_history(&self, id: &Id) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::clear_history(self, id)
    }
    fn copy_history(
        &self,
        from: &Id,
        to: &Id,
        max_turns: usize,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::copy_history(self, from, to, max_turns, ttl)
    }
    fn index_session(
        &self,
        user: &str,
        id: &Id,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::index_session(self, user, id, ttl)
    }
    fn unindex_session(
        &self,
        user: &str,
        id: &Id,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::unindex_session(self, user, id)
    }
    fn delete_user_sessions(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        T::delete_user_sessions(self, user)
    }
    fn load_profile(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Option<Fields>, StoreError>> + Send {
        T::load_profile(self, user)
    }
    fn update_profile(
        &self,
        user: &str,
        changes: &Changes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        T::update_profile(self, user, changes)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Declares [`DynStore`] and implements it for every store (boxing the
/// store's future), from one list of the [`SessionStore`] methods. Each
/// method takes `&'a self`; the list writes its arguments with that `'a`,
/// and `$out` is what its future yields in `Ok`.
macro_rules! dyn_store {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        /// [`SessionStore`] behind a pointer: the layer, the session and the
        /// handle are not generic over the store, so handlers name plain
        /// `Session`. A store call costs one boxed future, and only when the
        /// session is used.
        pub(crate) trait DynStore: Send + Sync + 'static {
            $(fn $name<'a>(&'a self, $($arg: $ty),*) -> BoxFuture<'a, Result<$out, StoreError>>;)*
        }

        impl<T: SessionStore> DynStore for T {
            $(
                fn $name<'a>(&'a self, $($arg: $ty),*) -> BoxFuture<'a, Result<$out, StoreError>> {
                    Box::pin(SessionStore::$name(self, $($arg),*))
                }
            )*
        }
    };
}

dyn_store! {
    fn load(id: &'a Id) -> Option<Fields>;
    fn create(id: &'a Id, fields: &'a Fields, ttl: Duration) -> bool;
    fn update(id: &'a Id, changes: &'a Changes, ttl: Duration) -> bool;
    fn delete(id: &'a Id) -> ();
    fn append_history(id: &'a Id, append: HistoryAppend<'a>, ttl: Duration) -> Option<usize>;
    fn read_history(id: &'a Id, last: usize) -> StoredHistory;
    fn clear_history(id: &'a Id) -> ();
    fn copy_history(from: &'a Id, to: &'a Id, max_turns: usize, ttl: Duration) -> ();
    fn index_session(user: &'a str, id: &'a Id, ttl: Duration) -> ();
    fn unindex_session(user: &'a str, id: &'a Id) -> ();
    fn delete_user_sessions(user: &'a str) -> usize;
    fn load_profile(user: &'a str) -> Option<Fields>;
    fn update_profile(user: &'a str, changes: &'a Changes) -> ();
}
