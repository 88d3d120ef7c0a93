//! [`PullQueue`] and its builder: where requests for one model wait for a
//! puller.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface};
use tower_ai_core::redis::{Degrade, StoreOptions};

use super::conn::BlockingPool;
use super::error::PullError;
use super::shared::{ClientRunner, Settings, Shared};
use super::ticket::Ticket;
use super::wire::{new_id, request_fields, valid_id};

/// The requests for one model (or pool), waiting in a Redis Stream for a
/// [`Puller`](super::Puller) with a free slot.
///
/// Cheap to clone (an `Arc`); clones share the client, the Redis health and
/// the connections kept for reading answers. Every process that submits or
/// pulls for the same name (and prefix) shares one queue.
#[derive(Clone)]
pub struct PullQueue {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for PullQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullQueue")
            .field("name", &self.shared.name)
            .field("queue_key", &self.shared.queue_key)
            .field("health", &self.shared.degrade.health())
            .finish_non_exhaustive()
    }
}

impl PullQueue {
    /// A builder for the queue `name` (a model or pool name from
    /// configuration, never from a request) through `client`: a fred
    /// `Client` or `Pool`, standalone or Cluster, connected or not.
    ///
    /// Blocking reads get connections of their own, opened with `client`'s
    /// configuration.
    pub fn builder<C>(client: C, name: &str) -> PullQueueBuilder
    where
        C: ClientLike + LuaInterface + Send + Sync + 'static,
    {
        let template = Client::new(
            client.client_config(),
            Some(client.perf_config()),
            Some(client.connection_config().clone()),
            client.client_reconnect_policy(),
        );
        PullQueueBuilder {
            runner: Box::new(ClientRunner(client)),
            template,
            name: name.to_owned(),
            redis: StoreOptions::default(),
            claim_idle: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            reply_ttl: Duration::from_secs(600),
            max_queued: 10_000,
            max_attempts: 5,
            blocking_connections: 64,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The Redis health state every call of this queue goes through.
    pub fn health(&self) -> &Degrade {
        &self.shared.degrade
    }

    /// Enqueues a request: its method, path and query, `content-type` and
    /// `accept` headers, and body. Returns its ticket, whose
    /// [`response`](Ticket::response) is the answer.
    ///
    /// One script call (`XLEN` + `XADD`). Fails with [`PullError::Full`]
    /// when the queue holds [`max_queued`](PullQueueBuilder::max_queued)
    /// requests, and with [`PullError::Redis`] when Redis doesn't answer
    /// (the request may then have been enqueued all the same).
    pub async fn submit(&self, req: http::Request<Bytes>) -> Result<Ticket, PullError> {
        let id = new_id().map_err(|_| PullError::NoEntropy)?;
        let fields = request_fields(&id, &req);
        match self.shared.submit(fields).await? {
            Some(_) => {
                metrics::counter!("tower_ai_balance_pull_submitted_total").increment(1);
                Ok(Ticket::new(Arc::clone(&self.shared), id))
            }
            None => {
                metrics::counter!("tower_ai_balance_pull_refused_total").increment(1);
                Err(PullError::Full)
            }
        }
    }

    /// The ticket of a request submitted elsewhere (another replica), from
    /// its [`id`](Ticket::id); `None` when `id` isn't one this queue makes.
    /// Reading it from the start gives the same answer the submitter gets.
    pub fn ticket(&self, id: &str) -> Option<Ticket> {
        valid_id(id).then(|| Ticket::new(Arc::clone(&self.shared), id.to_owned()))
    }
}

/// Builds a [`PullQueue`].
///
/// | setting | default |
/// |---|---|
/// | [`prefix`](Self::prefix) | `tower-ai` |
/// | [`degrade`](Self::degrade) | a new `Degrade::new("balance-pull", DegradeConfig::default())` (50 ms timeout) |
/// | [`claim_idle`](Self::claim_idle) | 10 s |
/// | [`heartbeat`](Self::heartbeat) | 2 s |
/// | [`reply_ttl`](Self::reply_ttl) | 10 min |
/// | [`max_queued`](Self::max_queued) | 10,000 |
/// | [`max_attempts`](Self::max_attempts) | 5 |
/// | [`blocking_connections`](Self::blocking_connections) | 64 |
#[must_use]
pub struct PullQueueBuilder {
    runner: Box<dyn super::shared::Runner>,
    template: Client,
    name: String,
    redis: StoreOptions,
    claim_idle: Duration,
    heartbeat: Duration,
    reply_ttl: Duration,
    max_queued: u64,
    max_attempts: u64,
    blocking_connections: usize,
}

impl fmt::Debug for PullQueueBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullQueueBuilder")
            .field("name", &self.name)
            .field("redis", &self.redis)
            .field("claim_idle", &self.claim_idle)
            .field("heartbeat", &self.heartbeat)
            .field("reply_ttl", &self.reply_ttl)
            .field("max_queued", &self.max_queued)
            .field("max_attempts", &self.max_attempts)
            .field("blocking_connections", &self.blocking_connections)
            .finish_non_exhaustive()
    }
}

impl PullQueueBuilder {
    /// The application's key prefix (default `"tower-ai"`): keys are
    /// `{prefix}:balance:{name}:…`, all under one hash tag.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// The Redis health every call goes through, with its timeout and
    /// backoff (default: a new one named `"balance-pull"`). Blocking reads
    /// share it with a timeout of their own: their block time plus this
    /// timeout plus a second.
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// How long a request's puller may go without a heartbeat before
    /// another puller takes the request over as a new attempt (default
    /// 10 s; between 1 ms and a day). Pullers with a free slot look for such
    /// requests every half of this. A ticket whose reads of Redis keep
    /// failing for this long ends its answer with an error.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self
    }

    /// How often a puller proves it still works on a request (default 2 s;
    /// at most a third of [`claim_idle`](Self::claim_idle), so a live
    /// puller is never taken over). Each written chunk counts as one too.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How long a reply stream is kept after its last entry (default
    /// 10 minutes, at least 1 ms), and how long a ticket waits for the next
    /// one (the head, or the next chunk) before it gives up.
    pub fn reply_ttl(mut self, ttl: Duration) -> Self {
        self.reply_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The most requests the queue holds, waiting or running (default
    /// 10,000; 0: no bound); past it, `submit` fails with
    /// [`PullError::Full`].
    pub fn max_queued(mut self, requests: u64) -> Self {
        self.max_queued = requests;
        self
    }

    /// The most attempts of one request (default 5, at least 1): a request
    /// whose pullers keep dying (a request that crashes them) is answered
    /// with an error after this many.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = u64::from(attempts.max(1));
        self
    }

    /// Connections kept for reading answers, one per ticket being read
    /// (default 64); past it, tickets poll their reply stream every 20 ms.
    pub fn blocking_connections(mut self, connections: usize) -> Self {
        self.blocking_connections = connections;
        self
    }

    /// The queue. Nothing is sent to Redis yet: the consumer group is made
    /// by the first puller.
    pub fn build(self) -> PullQueue {
        let heartbeat = self
            .heartbeat
            .min(self.claim_idle / 3)
            .max(Duration::from_millis(1));
        let settings = Settings {
            claim_idle: self.claim_idle,
            heartbeat,
            reply_ttl: self.reply_ttl,
            max_queued: self.max_queued,
            max_attempts: self.max_attempts,
        };
        let shared = Shared::new(
            self.runner,
            BlockingPool::new(self.template, self.blocking_connections),
            self.redis.degrade_or("balance-pull"),
            self.redis.prefix(),
            &self.name,
            settings,
        );
        PullQueue {
            shared: Arc::new(shared),
        }
    }
}
