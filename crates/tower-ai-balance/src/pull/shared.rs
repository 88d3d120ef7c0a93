//! What a queue's submitters, tickets and pullers share: its keys and
//! settings, the Redis client, and the scripts through which every write
//! goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fred::error::Error as RedisError;
use fred::interfaces::LuaInterface;
use fred::types::Value;
use tower_ai_core::redis::{Degrade, KeySpace, Script, Tag, Unavailable};

use super::conn::BlockingPool;
use super::wire::{Kind, StreamEntry, number, pairs};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The consumer group every puller of a queue reads in.
pub(super) const GROUP: &str = "pullers";

/// Enqueues a request unless the queue is full. KEYS: queue. ARGV: the
/// bound (0: none), then the entry's fields. The entry's id, or nil.
const SUBMIT: &str = r"
local max = tonumber(ARGV[1])
if max > 0 and redis.call('XLEN', KEYS[1]) >= max then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
";

/// Creates the consumer group (and the stream), reading from the start so
/// that requests enqueued before any puller came are served; an existing
/// group is fine. KEYS: queue. ARGV: group.
const GROUP_CREATE: &str = r"
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP', 1, true) then
  return r
end
return 1
";

/// Claims one entry whose puller stopped heartbeating (its delivery count,
/// which `XAUTOCLAIM` just raised, is the new attempt's number). KEYS:
/// queue. ARGV: group, consumer, min idle ms, start. `{next start}` or
/// `{next start, id, deliveries, fields}`.
const CLAIM: &str = r"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', 1)
local e = r[2][1]
if not e then return {r[1]} end
if not e[2] then
  redis.call('XACK', KEYS[1], ARGV[1], e[1])
  return {r[1]}
end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)[1]
local deliveries = 1
if p then deliveries = p[4] end
return {r[1], e[1], deliveries, e[2]}
";

/// Resets an entry's idle time while its attempt still owns it (same
/// consumer, same delivery count: a puller that lost it to another never
/// takes it back). KEYS: queue. ARGV: group, consumer, id, attempt. 1 if
/// still owned.
const HEARTBEAT: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not p or p[2] ~= ARGV[2] or p[4] ~= tonumber(ARGV[4]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
";

/// Appends one entry to a reply stream if the attempt still owns its queue
/// entry, renews the reply's TTL, and heartbeats; a final entry (`end`,
/// `error`) acknowledges and deletes the queue entry instead, and `drop`
/// does only that. KEYS: queue, reply. ARGV: group, consumer, id, attempt,
/// ttl ms, kind, offset, payload. 1 if written.
const WRITE: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not p or p[2] ~= ARGV[2] or p[4] ~= tonumber(ARGV[4]) then return 0 end
local kind = ARGV[6]
if kind ~= 'drop' then
  redis.call('XADD', KEYS[2], '*', 'attempt', ARGV[4], 'kind', kind, 'offset', ARGV[7], 'payload', ARGV[8])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
if kind == 'end' or kind == 'error' or kind == 'drop' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
return 1
";

/// Reads a reply stream without blocking (for a ticket that has no
/// connection of its own). KEYS: reply. ARGV: count, last id.
const READ: &str = r"
return redis.call('XREAD', 'COUNT', ARGV[1], 'STREAMS', KEYS[1], ARGV[2])
";

struct Scripts {
    read: Script,
    submit: Script,
    group: Script,
    claim: Script,
    heartbeat: Script,
    write: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        read: Script::new(READ),
        submit: Script::new(SUBMIT),
        group: Script::new(GROUP_CREATE),
        claim: Script::new(CLAIM),
        heartbeat: Script::new(HEARTBEAT),
        write: Script::new(WRITE),
    })
}

/// Runs scripts on the client the queue was built with (a `Client` or a
/// `Pool`, whichever the application passed).
pub(super) trait Runner: Send + Sync {
    fn run<'a>(
        &'a self,
        script: &'a Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> BoxFuture<'a, Result<Value, RedisError>>;
}

pub(super) struct ClientRunner<C>(pub(super) C);

impl<C> Runner for ClientRunner<C>
where
    C: LuaInterface + Send + Sync + 'static,
{
    fn run<'a>(
        &'a self,
        script: &'a Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> BoxFuture<'a, Result<Value, RedisError>> {
        Box::pin(script.call::<Value, _, _, _>(&self.0, keys, args))
    }
}

/// A queue's settings, as the builder validated them.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) claim_idle: Duration,
    pub(super) heartbeat: Duration,
    pub(super) reply_ttl: Duration,
    pub(super) max_queued: u64,
    pub(super) max_attempts: u64,
}

impl Settings {
    /// How often a puller with a free slot looks for entries to recover:
    /// half the idle time that makes one recoverable.
    pub(super) fn claim_interval(&self) -> Duration {
        (self.claim_idle / 2).clamp(Duration::from_millis(5), Duration::from_secs(5))
    }

    /// How long a puller's retried write may keep trying: past it another
    /// puller may have taken the entry over anyway.
    pub(super) fn write_patience(&self) -> Duration {
        self.claim_idle / 2
    }
}

/// An entry a puller took: from the queue (attempt 1) or recovered from a
/// dead puller.
#[derive(Debug)]
pub(super) struct Claimed {
    pub(super) entry_id: String,
    pub(super) attempt: u64,
    pub(super) fields: Vec<(String, Value)>,
}

impl Claimed {
    /// A new entry as `XREADGROUP` delivered it.
    pub(super) fn delivered((entry_id, fields): StreamEntry) -> Self {
        Self {
            entry_id,
            attempt: 1,
            fields,
        }
    }
}

/// Everything one queue's handles share.
pub(super) struct Shared {
    runner: Box<dyn Runner>,
    pub(super) pool: Arc<BlockingPool>,
    pub(super) degrade: Degrade,
    pub(super) name: String,
    pub(super) queue_key: String,
    keys: KeySpace,
    tag: Tag,
    pub(super) settings: Settings,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("queue_key", &self.queue_key)
            .field("settings", &self.settings)
            .field("degrade", &self.degrade)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn new(
        runner: Box<dyn Runner>,
        pool: BlockingPool,
        degrade: Degrade,
        prefix: &str,
        name: &str,
        settings: Settings,
    ) -> Self {
        let keys = KeySpace::new(prefix, "balance");
        let tag = Tag::fixed(name);
        Self {
            runner,
            pool: Arc::new(pool),
            degrade,
            name: name.to_owned(),
            queue_key: keys.key(&tag, "queue"),
            keys,
            tag,
            settings,
        }
    }

    /// The reply stream of request `id`.
    pub(super) fn reply_key(&self, id: &str) -> String {
        self.keys.key(&self.tag, &format!("reply:{id}"))
    }

    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, Unavailable> {
        self.degrade.call(self.runner.run(script, keys, args)).await
    }

    /// Reads up to `count` entries of a reply stream after `last_id`,
    /// without blocking. One script call.
    pub(super) async fn read(
        &self,
        reply_key: &str,
        last_id: &str,
        count: u64,
    ) -> Result<Value, Unavailable> {
        self.run(
            &scripts().read,
            vec![reply_key.to_owned()],
            vec![count.to_string().into(), last_id.into()],
        )
        .await
    }

    /// Enqueues an entry with `fields`; `None` when the queue is full. One
    /// script call.
    pub(super) async fn submit(&self, fields: Vec<Value>) -> Result<Option<String>, Unavailable> {
        let mut args = Vec::with_capacity(fields.len() + 1);
        args.push(Value::from(self.settings.max_queued.to_string()));
        args.extend(fields);
        let reply = self
            .run(&scripts().submit, vec![self.queue_key.clone()], args)
            .await?;
        Ok(reply.as_string())
    }

    /// Makes sure the consumer group exists. One script call.
    pub(super) async fn create_group(&self) -> Result<(), Unavailable> {
        self.run(
            &scripts().group,
            vec![self.queue_key.clone()],
            vec![GROUP.into()],
        )
        .await
        .map(drop)
    }

    /// Claims one entry idle for `claim_idle` for `consumer`, scanning the
    /// pending entries from `start`: the next start (`0-0` once the scan
    /// wrapped) and what was claimed. One script call.
    pub(super) async fn claim(
        &self,
        consumer: &str,
        start: &str,
    ) -> Result<(String, Option<Claimed>), Unavailable> {
        let idle_ms = millis(self.settings.claim_idle).to_string();
        let reply = self
            .run(
                &scripts().claim,
                vec![self.queue_key.clone()],
                vec![GROUP.into(), consumer.into(), idle_ms.into(), start.into()],
            )
            .await?;
        let mut items = reply.into_array().into_iter();
        let next = items
            .next()
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| "0-0".to_owned());
        let (Some(entry_id), Some(deliveries), Some(fields)) = (
            items.next().and_then(|v| v.as_string()),
            items.next().as_ref().and_then(number),
            items.next(),
        ) else {
            return Ok((next, None));
        };
        Ok((
            next,
            Some(Claimed {
                entry_id,
                attempt: deliveries,
                fields: pairs(fields),
            }),
        ))
    }

    /// Resets the idle time of an entry `consumer`'s `attempt` owns:
    /// `false` once the attempt no longer owns it. One script call.
    pub(super) async fn heartbeat(
        &self,
        consumer: &str,
        entry_id: &str,
        attempt: u64,
    ) -> Result<bool, Unavailable> {
        let reply = self
            .run(
                &scripts().heartbeat,
                vec![self.queue_key.clone()],
                vec![
                    GROUP.into(),
                    consumer.into(),
                    entry_id.into(),
                    attempt.to_string().into(),
                ],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Writes one reply entry for an attempt that still owns its queue
    /// entry (see [`WRITE`]): `false` once it doesn't. `kind` `None` only
    /// acknowledges and deletes the queue entry. One script call.
    pub(super) async fn write(&self, write: &Write<'_>) -> Result<bool, Unavailable> {
        let args = vec![
            GROUP.into(),
            write.consumer.into(),
            write.entry_id.into(),
            write.attempt.to_string().into(),
            millis(self.settings.reply_ttl).max(1).to_string().into(),
            write.kind.map_or("drop", Kind::as_str).into(),
            write.offset.to_string().into(),
            Value::Bytes(write.payload.clone()),
        ];
        let reply = self
            .run(
                &scripts().write,
                vec![self.queue_key.clone(), write.reply_key.to_owned()],
                args,
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }
}

/// One reply entry to write.
#[derive(Debug)]
pub(super) struct Write<'a> {
    pub(super) consumer: &'a str,
    pub(super) entry_id: &'a str,
    pub(super) attempt: u64,
    pub(super) reply_key: &'a str,
    pub(super) kind: Option<Kind>,
    pub(super) offset: u64,
    pub(super) payload: bytes::Bytes,
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a Redis error says the consumer group (or its stream) is gone.
pub(super) fn is_nogroup(e: &Unavailable) -> bool {
    matches!(e, Unavailable::Failed(e) if e.details().contains("NOGROUP"))
}
