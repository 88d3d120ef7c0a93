//! The state every clone of a [`RedisStore`](super::RedisStore) shares: the
//! client, the key space, the Redis health, the local copy, the bounds, the
//! remote tails running here and the writes Redis has not confirmed.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tower_ai_core::redis::{Degrade, KeySpace, Script, Tag};

use crate::id::StreamId;
use crate::store::MemoryStore;

/// What every clone of a [`RedisStore`](super::RedisStore) holds, behind
/// one `Arc`.
pub(super) struct Inner {
    pub(super) client: Client,
    pub(super) keys: KeySpace,
    pub(super) append: Script,
    pub(super) degrade: Degrade,
    pub(super) local: MemoryStore,
    pub(super) max_len: u64,
    pub(super) ttl_ms: u64,
    pub(super) page: u64,
    pub(super) block: Duration,
    pub(super) max_idle: Duration,
    pub(super) poll_interval: Duration,
    pub(super) max_tails: usize,
    /// Remote tails running in this process, by stream.
    pub(super) tails: Mutex<HashMap<StreamId, Weak<TailHandle>>>,
    /// Idle connections for blocking reads.
    pub(super) blocking: Mutex<Vec<Client>>,
    pub(super) tail_slots: Arc<Semaphore>,
    /// Entries of streams generated here that Redis has not confirmed yet:
    /// sent again with the next append (appends are idempotent).
    pub(super) pending: Mutex<HashMap<StreamId, Pending>>,
}

/// One stream entry to write: id, field, value.
pub(super) type RawEntry = (String, &'static str, Bytes);

/// What Redis has not confirmed of a stream.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) entries: Vec<RawEntry>,
    /// More went unconfirmed than Redis keeps of a stream: it can't be
    /// caught up any more, so only the end marker will be written.
    pub(super) given_up: bool,
}

/// Held by every reader of a remote tail; the tail stops when none is left.
#[derive(Debug)]
pub(super) struct TailHandle;

impl Inner {
    /// The key of stream `id`.
    pub(super) fn key(&self, id: &StreamId) -> String {
        // A `StreamId` holds 22 base64url characters, checked when it was
        // made or read: nothing else reaches the key.
        self.keys.key(&Tag::fixed(id.as_str()), "events")
    }
}
