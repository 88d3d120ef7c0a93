//! How a [`RedisStore`] is made: [`RedisStoreBuilder`] and its defaults.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tower_ai_core::redis::{Degrade, DegradeConfig, KeySpace, Script};

use super::RedisStore;
use super::inner::Inner;
use crate::error::ConfigError;
use crate::store::MemoryStore;

/// The append script: `XADD … MAXLEN` for each entry, then `PEXPIRE`.
static APPEND: &str = include_str!("../append.lua");

impl RedisStore {
    /// A store on `client` with the defaults.
    pub fn new(client: Client) -> Self {
        Self::builder(client).build_unchecked()
    }

    /// A builder for a store on `client`.
    pub fn builder(client: Client) -> RedisStoreBuilder {
        RedisStoreBuilder {
            client,
            prefix: "tower-ai".to_owned(),
            max_events: 10_000,
            ttl: Duration::from_secs(600),
            degrade: DegradeConfig::default(),
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
    prefix: String,
    max_events: u64,
    ttl: Duration,
    degrade: DegradeConfig,
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
        self.prefix = prefix.into();
        self
    }

    /// The most events kept of one stream (`XADD … MAXLEN`, default
    /// 10,000); past it the oldest are dropped.
    pub fn max_events(mut self, events: u64) -> Self {
        self.max_events = events;
        self
    }

    /// How long a stream is kept after its last event (the key's TTL,
    /// default 10 minutes).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The Redis call timeout and backoff (default: 50 ms timeout).
    pub fn degrade(mut self, config: DegradeConfig) -> Self {
        self.degrade = config;
        self
    }

    /// This process's copy of the streams it generates and tails (default:
    /// a new [`MemoryStore`]).
    pub fn local(mut self, local: MemoryStore) -> Self {
        self.local = Some(local);
        self
    }

    /// Entries read per `XRANGE`/`XREAD` (default 256).
    pub fn page(mut self, entries: u64) -> Self {
        self.page = entries;
        self
    }

    /// How long one blocking `XREAD` waits (default 1 s).
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
    /// here stop (default 10 minutes: the generating replica may be gone).
    pub fn max_idle(mut self, idle: Duration) -> Self {
        self.max_idle = idle;
        self
    }

    /// How often a tail without a connection of its own polls (default
    /// 50 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The store.
    ///
    /// # Errors
    ///
    /// When a bound or duration is zero.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        if self.max_events == 0 || self.page == 0 {
            return Err(ConfigError::new("max_events and page must be above zero"));
        }
        if self.ttl < Duration::from_millis(1)
            || self.block < Duration::from_millis(1)
            || self.max_idle.is_zero()
            || self.poll_interval.is_zero()
        {
            return Err(ConfigError::new(
                "the TTL, block time, idle limit and poll interval must be above zero",
            ));
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> RedisStore {
        let inner = Inner {
            client: self.client,
            keys: KeySpace::new(&self.prefix, "sse"),
            append: Script::new(APPEND),
            degrade: Degrade::new("sse", self.degrade),
            local: self.local.unwrap_or_default(),
            max_len: self.max_events,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            page: self.page,
            block: self.block,
            max_idle: self.max_idle,
            poll_interval: self.poll_interval,
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
