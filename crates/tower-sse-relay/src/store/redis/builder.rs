//! How a [`RedisStore`] is made: [`RedisStoreBuilder`] and its defaults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tower_ai_core::redis::{Degrade, Script, StoreOptions};

use super::RedisStore;
use super::inner::Inner;
use crate::store::MemoryStore;

/// The append script: `XADD … MAXLEN` for each entry, then `PEXPIRE`.
static APPEND: &str = include_str!("../append.lua");

impl RedisStore {
    /// A store on `client` with the defaults: `builder(client).build()`.
    pub fn new(client: Client) -> Self {
        Self::builder(client).build()
    }

    /// A builder for a store on `client`.
    pub fn builder(client: Client) -> RedisStoreBuilder {
        RedisStoreBuilder {
            client,
            redis: StoreOptions::default(),
            max_events: 10_000,
            ttl: Duration::from_secs(600),
            local: None,
            page: 256,
            block: Duration::from_secs(1),
            max_tails: 64,
            max_idle: Duration::from_secs(600),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    client: Client,
    redis: StoreOptions,
    max_events: u64,
    ttl: Duration,
    local: Option<MemoryStore>,
    page: u64,
    block: Duration,
    max_tails: usize,
    max_idle: Duration,
    poll_interval: Duration,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `"tower-ai"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// The most events kept of one stream (`XADD … MAXLEN`, default
    /// 10,000, at least 1); past it the oldest are dropped.
    pub fn max_events(mut self, events: u64) -> Self {
        self.max_events = events;
        self
    }

    /// How long a stream is kept after its last event (the key's TTL,
    /// default 10 minutes, at least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The Redis health this store reports to and obeys: its call timeout
    /// and backoff, shared with every store given a clone of it (default: a
    /// new `Degrade::new("sse-relay", DegradeConfig::default())`, a 50 ms
    /// timeout).
    ///
    /// The blocking `XREAD`s of remote tails share this health but wait for
    /// their own time: [`block`](Self::block) plus the call timeout plus a
    /// second.
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// This process's copy of the streams it generates and tails (default:
    /// a new [`MemoryStore`]).
    pub fn local(mut self, local: MemoryStore) -> Self {
        self.local = Some(local);
        self
    }

    /// Entries read per `XRANGE`/`XREAD` (default 256, at least 1).
    pub fn page(mut self, entries: u64) -> Self {
        self.page = entries;
        self
    }

    /// How long one blocking `XREAD` waits (default 1 s, at least 1 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// The most connections for blocking reads, one per remote stream being
    /// read in this process (default 64); past it tails poll.
    pub fn max_tails(mut self, connections: usize) -> Self {
        self.max_tails = connections;
        self
    }

    /// How long a remote stream may go without an event before its readers
    /// here stop (default 10 minutes: the generating replica may be gone;
    /// zero counts as 1 ms).
    pub fn max_idle(mut self, idle: Duration) -> Self {
        self.max_idle = idle;
        self
    }

    /// How often a tail without a connection of its own polls (default
    /// 50 ms; zero counts as 1 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The store. A bound or duration below the minimum its setter names is
    /// raised to that minimum.
    pub fn build(self) -> RedisStore {
        const MILLI: Duration = Duration::from_millis(1);
        let nonzero = |d: Duration| if d.is_zero() { MILLI } else { d };
        let inner = Inner {
            client: self.client,
            keys: self.redis.keys("sse"),
            append: Script::new(APPEND),
            degrade: self.redis.degrade_or("sse-relay"),
            local: self.local.unwrap_or_default(),
            max_len: self.max_events.max(1),
            ttl_ms: u64::try_from(self.ttl.max(MILLI).as_millis()).unwrap_or(u64::MAX),
            page: self.page.max(1),
            block: self.block.max(MILLI),
            max_idle: nonzero(self.max_idle),
            poll_interval: nonzero(self.poll_interval),
            max_tails: self.max_tails,
            tails: Mutex::new(HashMap::new()),
            blocking: Mutex::new(Vec::new()),
            tail_slots: Arc::new(Semaphore::new(self.max_tails.min(Semaphore::MAX_PERMITS))),
            pending: Mutex::new(HashMap::new()),
        };
        RedisStore {
            inner: Arc::new(inner),
        }
    }
}
