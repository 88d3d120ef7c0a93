//! [`RedisIndex`]: the vector index on Redis's query engine (feature
//! `redis`): Redis 8, Redis Stack or any server with the RediSearch module,
//! standalone or Cluster.
//!
//! # Layout
//!
//! One index per embedding model and dimensions, named after both
//! (`{prefix}:context:{{model_dims}}:idx`), over HASHes whose keys share one
//! hash tag: `{prefix}:context:{{model_dims}}:r:<digest>`. Each record is one
//! hash: the scope's digest (a `TAG` field, the only one searched besides the
//! vector), the normalized vector as little-endian `f32` bytes (a `VECTOR
//! HNSW … FLOAT32 … COSINE` field), and, loaded only for the hits, the scope,
//! the id, the payload and a write sequence number.
//!
//! - **One hash tag per index.** Redis's query engine indexes the keys of the
//!   node it runs on: on a Cluster, an index sees only its node's slots. All
//!   the keys of one index carry the same hash tag, so they live in one slot,
//!   and `FT.CREATE` and `FT.SEARCH` are sent to the node owning that slot;
//!   one index is thus one node's work (shard by model, or by prefix, to
//!   spread several indexes over the nodes).
//! - **No user input in keys or queries.** A record's key is a BLAKE3
//!   digest of its scope and id, and the `TAG` field holds a digest of the
//!   scope (case-sensitive hex): a scope is never parsed by the query
//!   language, so no scope (with spaces, `|`, `}`, `,`, a different case,
//!   or query syntax) can match another's records. The scope as written is
//!   stored beside it and checked again on every hit.
//! - **Ties.** Each upsert numbers its records (a counter in the index's
//!   slot): among equal scores the record written first comes first, as in
//!   [`MemoryIndex`](crate::MemoryIndex).
//! - **Writes.** An upsert checks every record, then writes them all in one
//!   Lua script (one round trip, atomic), with `PEXPIRE` for a TTL. Redis
//!   expires a record on its own clock and the index forgets it then.
//! - **Searches.** One `FT.SEARCH` with a `KNN` clause under a `TAG`
//!   pre-filter on the query's scopes: HNSW, approximate, with
//!   [`ef_runtime`](RedisIndexBuilder::ef_runtime) trading speed for recall,
//!   or exact (every record of the searched scopes compared) with
//!   [`exact`](RedisIndexBuilder::exact). Redis itself searches a small
//!   scope exhaustively.
//!
//! # When Redis is down
//!
//! Every call goes through a [`Degrade`]: a search or delete that takes
//! longer than its timeout (default 50 ms), or fails, returns
//! [`IndexError::Unavailable`], and Redis is marked down; for the backoff
//! that follows, calls fail at once without touching Redis, then one probe
//! tries again. There is no local fallback: a caller that can do without
//! retrieval (or the semantic cache) goes on without it. An upsert has its
//! own, longer timeout ([`write_timeout`](RedisIndexBuilder::write_timeout)),
//! and on `Unavailable` it may or may not have been written (a timeout
//! doesn't cancel a command already sent); writing it again is safe, since
//! an upsert replaces. When Redis comes back (after a restart, empty), the
//! index is created again before the next call.
//!
//! # Example
//!
//! ```no_run
//! use tower_ai_context::redis::RedisIndex;
//! use tower_ai_context::{Query, Record, VectorIndex};
//! use tower_ai_core::redis::{ConnectOptions, connect};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let client = connect(&["redis://127.0.0.1:6379"], &ConnectOptions::default())
//!     .await
//!     .unwrap();
//! let index = RedisIndex::builder(client, "embed-small", 3).build();
//! index
//!     .upsert(vec![Record::new("tenant:acme", "doc-1#0", vec![1.0, 0.0, 0.0], "Acme ships on Mondays.")])
//!     .await
//!     .unwrap();
//! let hits = index
//!     .search(Query::new(&[0.9, 0.1, 0.0], &["tenant:acme", "public"]).k(5))
//!     .await
//!     .unwrap();
//! assert_eq!(&*hits[0].id, "doc-1#0");
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use fred::error::Error as RedisError;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use tower_ai_core::redis::{Degrade, Script, StoreOptions, Tag, Unavailable};

use crate::index::{BoxFuture, Hit, IndexError, Query, Record, VectorIndex, normalized};

/// Writes records. KEYS: the sequence counter, then one key per record.
/// ARGV: per record, its scope digest, scope, id, payload, vector and TTL
/// in milliseconds (negative: none).
const UPSERT: &str = r"
local n = #KEYS - 1
local last = redis.call('INCRBY', KEYS[1], n)
for i = 1, n do
  local a = (i - 1) * 6
  local key = KEYS[i + 1]
  redis.call('HSET', key, 'scope', ARGV[a + 1], 'scope_name', ARGV[a + 2], 'id', ARGV[a + 3],
    'payload', ARGV[a + 4], 'vector', ARGV[a + 5], 'seq', string.format('%d', last - n + i))
  local ttl = tonumber(ARGV[a + 6])
  if ttl >= 0 then
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('PERSIST', key)
  end
end
return n
";

fn upsert_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(UPSERT))
}

/// The commands the index sends, over any `fred` client.
trait Conn: Send + Sync {
    fn custom(
        &self,
        cmd: CustomCommand,
        args: Vec<Value>,
    ) -> BoxFuture<'_, Result<Value, RedisError>>;

    fn upsert(&self, keys: Vec<String>, args: Vec<Value>) -> BoxFuture<'_, Result<(), RedisError>>;

    fn del(&self, keys: Vec<String>) -> BoxFuture<'_, Result<i64, RedisError>>;
}

struct ClientConn<C>(C);

impl<C> Conn for ClientConn<C>
where
    C: ClientLike + LuaInterface + KeysInterface + Send + Sync + 'static,
{
    fn custom(
        &self,
        cmd: CustomCommand,
        args: Vec<Value>,
    ) -> BoxFuture<'_, Result<Value, RedisError>> {
        Box::pin(self.0.custom::<Value, Value>(cmd, args))
    }

    fn upsert(&self, keys: Vec<String>, args: Vec<Value>) -> BoxFuture<'_, Result<(), RedisError>> {
        Box::pin(async move {
            upsert_script()
                .call::<Value, _, _, _>(&self.0, keys, args)
                .await
                .map(drop)
        })
    }

    fn del(&self, keys: Vec<String>) -> BoxFuture<'_, Result<i64, RedisError>> {
        Box::pin(self.0.del::<i64, _>(keys))
    }
}

/// A [`VectorIndex`] on Redis's query engine: HNSW vectors, scopes as `TAG`
/// pre-filters, one index per model under one Cluster hash tag (see the
/// [module docs](self)).
///
/// Cloning is cheap; clones share the connection and the health state.
#[derive(Clone)]
pub struct RedisIndex {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Box<dyn Conn>,
    name: String,
    dimensions: usize,
    degrade: Degrade,
    write_timeout: Duration,
    ef_runtime: usize,
    exact: bool,
    hnsw: (usize, usize),
    /// The index's name in Redis.
    index: String,
    /// The prefix of every record key (what `FT.CREATE … PREFIX` names).
    record_prefix: String,
    /// The write sequence counter.
    seq_key: String,
    /// The Cluster slot of every key.
    slot: u16,
    /// `recoveries + 1` of the health state when the index was last known
    /// to exist (0: never).
    ensured: AtomicU64,
}

impl fmt::Debug for RedisIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIndex")
            .field("name", &self.inner.name)
            .field("index", &self.inner.index)
            .field("exact", &self.inner.exact)
            .field("ef_runtime", &self.inner.ef_runtime)
            .field("health", &self.inner.degrade.health())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisIndex`].
#[must_use]
pub struct RedisIndexBuilder {
    conn: Box<dyn Conn>,
    model: String,
    dimensions: usize,
    redis: StoreOptions,
    write_timeout: Duration,
    ef_runtime: usize,
    exact: bool,
    hnsw: (usize, usize),
}

impl fmt::Debug for RedisIndexBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIndexBuilder")
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .field("redis", &self.redis)
            .field("write_timeout", &self.write_timeout)
            .field("ef_runtime", &self.ef_runtime)
            .field("exact", &self.exact)
            .finish_non_exhaustive()
    }
}

impl RedisIndexBuilder {
    /// The application's key prefix (default `"tower-ai"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis.set_prefix(prefix);
        self
    }

    /// The Redis health state to use, e.g. one shared with other layers on
    /// the same connection (default: a new one named `"context"`). Its
    /// timeout bounds every search and delete.
    pub fn degrade(mut self, degrade: Degrade) -> Self {
        self.redis.set_degrade(degrade);
        self
    }

    /// How long an upsert (or the index's creation) may take (default
    /// 1 s): a batch of records carries more than a search. Write large
    /// batches in chunks that fit in it.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The HNSW search's candidate list (`EF_RUNTIME`, default 64; never
    /// less than the records asked for): larger finds the true nearest
    /// more often, and costs more.
    pub fn ef_runtime(mut self, ef: usize) -> Self {
        self.ef_runtime = ef.max(1);
        self
    }

    /// The HNSW graph's links per node (`M`, default 16) and its build-time
    /// candidate list (`EF_CONSTRUCTION`, default 200), fixed when the index
    /// is created.
    pub fn hnsw(mut self, m: usize, ef_construction: usize) -> Self {
        self.hnsw = (m.max(2), ef_construction.max(1));
        self
    }

    /// Exact searches (default `false`): every record of the searched
    /// scopes is compared with the query (the query engine's ad hoc brute
    /// force), as [`MemoryIndex`](crate::MemoryIndex) does, instead of
    /// walking the HNSW graph. Exact answers, at a cost linear in the
    /// scopes' records.
    pub fn exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }

    /// The index (created in Redis on first use, or by
    /// [`RedisIndex::ensure`]).
    pub fn build(self) -> RedisIndex {
        let keys = self.redis.keys("context");
        let tag = Tag::fixed(&format!("{}_{}", sanitized(&self.model), self.dimensions));
        let record_prefix = keys.key(&tag, "r:");
        let seq_key = keys.key(&tag, "seq");
        let index = keys.key(&tag, "idx");
        let slot = fred::util::redis_keyslot(seq_key.as_bytes());
        RedisIndex {
            inner: Arc::new(Inner {
                conn: self.conn,
                name: format!("{}:{}", self.model, self.dimensions),
                dimensions: self.dimensions,
                degrade: self.redis.degrade_or("context"),
                write_timeout: self.write_timeout,
                ef_runtime: self.ef_runtime,
                exact: self.exact,
                hnsw: self.hnsw,
                index,
                record_prefix,
                seq_key,
                slot,
                ensured: AtomicU64::new(0),
            }),
        }
    }
}

impl RedisIndex {
    /// An index for the vectors of embedding model `model`, of
    /// `dimensions` dimensions, through `client` (a `fred` client,
    /// standalone or Cluster).
    pub fn builder<C>(client: C, model: &str, dimensions: usize) -> RedisIndexBuilder
    where
        C: ClientLike + LuaInterface + KeysInterface + Send + Sync + 'static,
    {
        RedisIndexBuilder {
            conn: Box::new(ClientConn(client)),
            model: model.to_owned(),
            dimensions,
            redis: StoreOptions::default(),
            write_timeout: Duration::from_secs(1),
            ef_runtime: 64,
            exact: false,
            hnsw: (16, 200),
        }
    }

    /// The Redis health state this index's calls go through.
    pub fn health(&self) -> &Degrade {
        &self.inner.degrade
    }

    /// The index's name in Redis (what `FT.INFO` takes).
    pub fn index_name(&self) -> &str {
        &self.inner.index
    }

    /// Creates the index in Redis if it isn't there (one round trip; calls
    /// do it on first use, and again after Redis was down).
    pub async fn ensure(&self) -> Result<(), IndexError> {
        let inner = &self.inner;
        let generation = inner.degrade.recoveries() + 1;
        if inner.ensured.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        let (m, ef_construction) = inner.hnsw;
        let args: Vec<Value> = vec![
            inner.index.as_str().into(),
            "ON".into(),
            "HASH".into(),
            "PREFIX".into(),
            "1".into(),
            inner.record_prefix.as_str().into(),
            "SCHEMA".into(),
            "scope".into(),
            "TAG".into(),
            "CASESENSITIVE".into(),
            "vector".into(),
            "VECTOR".into(),
            "HNSW".into(),
            "10".into(),
            "TYPE".into(),
            "FLOAT32".into(),
            "DIM".into(),
            inner.dimensions.to_string().into(),
            "DISTANCE_METRIC".into(),
            "COSINE".into(),
            "M".into(),
            m.to_string().into(),
            "EF_CONSTRUCTION".into(),
            ef_construction.to_string().into(),
        ];
        let cmd = CustomCommand::new_static("FT.CREATE", ClusterHash::Custom(inner.slot), false);
        let created = inner
            .degrade
            .call_within(inner.write_timeout, async {
                match inner.conn.custom(cmd, args).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.details().contains("already exists") => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
        created.map_err(unavailable)?;
        inner.ensured.store(generation, Ordering::Release);
        Ok(())
    }

    fn record_key(&self, scope: &str, id: &str) -> String {
        let mut input = Vec::with_capacity(8 + scope.len() + id.len());
        input.extend_from_slice(&(scope.len() as u64).to_le_bytes());
        input.extend_from_slice(scope.as_bytes());
        input.extend_from_slice(id.as_bytes());
        format!("{}{}", self.inner.record_prefix, Tag::digest(&input))
    }

    async fn upsert_now(&self, records: Vec<Record>) -> Result<(), IndexError> {
        let inner = &self.inner;
        let mut vectors = Vec::with_capacity(records.len());
        for record in &records {
            vectors.push(normalized(&record.vector, inner.dimensions)?);
        }
        if records.is_empty() {
            return Ok(());
        }
        self.ensure().await?;
        let mut keys = Vec::with_capacity(records.len() + 1);
        keys.push(inner.seq_key.clone());
        let mut args: Vec<Value> = Vec::with_capacity(records.len() * 6);
        for (record, vector) in records.into_iter().zip(vectors) {
            keys.push(self.record_key(&record.scope, &record.id));
            let ttl = record
                .ttl
                .map_or(-1, |ttl| i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            args.push(Tag::digest(record.scope.as_bytes()).as_str().into());
            args.push(Value::String(record.scope.as_ref().into()));
            args.push(Value::String(record.id.as_ref().into()));
            args.push(Value::Bytes(record.payload));
            args.push(Value::Bytes(vector_bytes(&vector)));
            args.push(Value::Integer(ttl));
        }
        inner
            .degrade
            .call_within(inner.write_timeout, inner.conn.upsert(keys, args))
            .await
            .map_err(unavailable)
    }

    async fn search_now(&self, query: &Query<'_>) -> Result<Vec<Hit>, IndexError> {
        let inner = &self.inner;
        let vector = normalized(query.vector, inner.dimensions)?;
        let mut scopes: Vec<&str> = query.scopes.to_vec();
        scopes.sort_unstable();
        scopes.dedup();
        if query.k == 0 || scopes.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure().await?;
        let filter = scopes
            .iter()
            .map(|s| Tag::digest(s.as_bytes()).as_str().to_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        let blob = vector_bytes(&vector);
        // Equal distances at the k-th place: fetch more until the whole tie
        // is in, so the record written first wins as in MemoryIndex.
        let mut fetch = query.k;
        let mut rows = loop {
            let rows = match self.knn(&filter, &blob, fetch).await {
                Err(IndexError::Unavailable(e)) if e.contains("no such index") => {
                    inner.ensured.store(0, Ordering::Release);
                    self.ensure().await?;
                    self.knn(&filter, &blob, fetch).await?
                }
                other => other?,
            };
            let complete = rows.len() < fetch
                || rows
                    .last()
                    .is_some_and(|last| last.distance > rows[query.k - 1].distance);
            if complete || fetch >= 1 << 20 {
                break rows;
            }
            fetch = fetch.saturating_mul(2);
        };
        rows.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.seq.cmp(&b.seq)));
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let score = (1.0 - row.distance) as f32;
                let scope = scopes.iter().find(|s| **s == row.scope)?;
                (score >= query.min_score).then(|| Hit {
                    scope: Arc::from(*scope),
                    id: row.id.into(),
                    score,
                    payload: row.payload,
                })
            })
            .take(query.k)
            .collect())
    }

    /// One `FT.SEARCH`: the `fetch` nearest in the filter's scopes, sorted
    /// by distance.
    async fn knn(&self, filter: &str, blob: &Bytes, fetch: usize) -> Result<Vec<Row>, IndexError> {
        let inner = &self.inner;
        let fetch_text = fetch.to_string();
        let query = if inner.exact {
            format!(
                "(@scope:{{{filter}}})=>[KNN {fetch} @vector $BLOB AS dist]=>{{$HYBRID_POLICY: ADHOC_BF}}"
            )
        } else {
            format!(
                "(@scope:{{{filter}}})=>[KNN {fetch} @vector $BLOB EF_RUNTIME {} AS dist]",
                inner.ef_runtime.max(fetch)
            )
        };
        let args: Vec<Value> = vec![
            inner.index.as_str().into(),
            query.into(),
            "PARAMS".into(),
            "2".into(),
            "BLOB".into(),
            Value::Bytes(blob.clone()),
            "SORTBY".into(),
            "dist".into(),
            "ASC".into(),
            "RETURN".into(),
            "5".into(),
            "dist".into(),
            "scope_name".into(),
            "id".into(),
            "payload".into(),
            "seq".into(),
            "LIMIT".into(),
            "0".into(),
            fetch_text.into(),
            "DIALECT".into(),
            "2".into(),
        ];
        let cmd = CustomCommand::new_static("FT.SEARCH", ClusterHash::Custom(inner.slot), false);
        let reply = inner
            .degrade
            .call(async {
                match inner.conn.custom(cmd, args).await {
                    // Not a failure of Redis: the caller creates the index.
                    Err(e) if e.details().contains("no such index") => Ok(None),
                    other => other.map(Some),
                }
            })
            .await
            .map_err(unavailable)?;
        match reply {
            Some(reply) => Ok(rows(reply)),
            None => Err(IndexError::Unavailable("no such index".to_owned())),
        }
    }

    async fn delete_now(&self, scope: &str, ids: &[&str]) -> Result<usize, IndexError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(scope, id)).collect();
        let deleted = self
            .inner
            .degrade
            .call(self.inner.conn.del(keys))
            .await
            .map_err(unavailable)?;
        Ok(usize::try_from(deleted).unwrap_or(0))
    }
}

impl VectorIndex for RedisIndex {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn dimensions(&self) -> usize {
        self.inner.dimensions
    }

    fn upsert(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), IndexError>> {
        Box::pin(self.upsert_now(records))
    }

    fn search<'a>(&'a self, query: Query<'a>) -> BoxFuture<'a, Result<Vec<Hit>, IndexError>> {
        Box::pin(async move { self.search_now(&query).await })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a str,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<usize, IndexError>> {
        Box::pin(self.delete_now(scope, ids))
    }
}

/// One search result as Redis returns it.
struct Row {
    distance: f64,
    seq: u64,
    scope: String,
    id: String,
    payload: Bytes,
}

/// The rows of an `FT.SEARCH` reply, RESP2 (`[total, key, [field, value,
/// …], …]`) or RESP3 (a map with `results`). A result with a field missing
/// (its record expired as it was read) is left out.
fn rows(reply: Value) -> Vec<Row> {
    let fields: Vec<Vec<(String, Value)>> = match reply {
        Value::Array(items) => items
            .into_iter()
            .skip(1)
            .filter_map(|item| match item {
                Value::Array(pairs) => Some(pairs_of(pairs)),
                Value::Map(map) => Some(map_pairs(map)),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map_pairs(map)
            .into_iter()
            .find(|(k, _)| k == "results")
            .map(|(_, results)| match results {
                Value::Array(results) => results
                    .into_iter()
                    .filter_map(|result| {
                        let Value::Map(result) = result else {
                            return None;
                        };
                        let (_, attributes) = map_pairs(result)
                            .into_iter()
                            .find(|(k, _)| k == "extra_attributes")?;
                        match attributes {
                            Value::Map(map) => Some(map_pairs(map)),
                            Value::Array(pairs) => Some(pairs_of(pairs)),
                            _ => None,
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    fields.into_iter().filter_map(row).collect()
}

fn pairs_of(values: Vec<Value>) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(values.len() / 2);
    let mut values = values.into_iter();
    while let (Some(k), Some(v)) = (values.next(), values.next()) {
        if let Some(k) = k.as_str() {
            out.push((k.into_owned(), v));
        }
    }
    out
}

fn map_pairs(map: fred::types::Map) -> Vec<(String, Value)> {
    map.inner()
        .into_iter()
        .filter_map(|(k, v)| k.as_str().map(|k| (k.to_owned(), v)))
        .collect()
}

fn row(fields: Vec<(String, Value)>) -> Option<Row> {
    let (mut distance, mut seq, mut scope, mut id, mut payload) = (None, None, None, None, None);
    for (name, value) in fields {
        match name.as_str() {
            "dist" => distance = value.as_str().and_then(|s| s.parse::<f64>().ok()),
            "seq" => seq = value.as_str().and_then(|s| s.parse::<u64>().ok()),
            "scope_name" => scope = value.as_str().map(|s| s.into_owned()),
            "id" => id = value.as_str().map(|s| s.into_owned()),
            "payload" => payload = value.into_bytes(),
            _ => {}
        }
    }
    Some(Row {
        distance: distance?,
        seq: seq?,
        scope: scope?,
        id: id?,
        payload: payload.unwrap_or_default(),
    })
}

fn vector_bytes(vector: &[f32]) -> Bytes {
    let mut bytes = Vec::with_capacity(vector.len() * 4);
    for x in vector {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(bytes)
}

/// A model name fit for a key and an index name: ASCII letters, digits,
/// `.`, `_` and `-` kept, anything else `_`, and then, so that two names
/// can't meet, a digest of the original.
fn sanitized(model: &str) -> String {
    let clean: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == model {
        clean
    } else {
        format!("{clean}-{}", &Tag::digest(model.as_bytes()).as_str()[..8])
    }
}

fn unavailable(e: Unavailable) -> IndexError {
    IndexError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_sanitized_without_collisions() {
        assert_eq!(
            sanitized("text-embedding-3-small"),
            "text-embedding-3-small"
        );
        let a = sanitized("BAAI/bge small");
        let b = sanitized("BAAI_bge_small");
        assert!(a.starts_with("BAAI_bge_small-"));
        assert_ne!(a, b);
        assert!(
            sanitized("{x}:y")
                .bytes()
                .all(|b| b != b'{' && b != b'}' && b != b':')
        );
    }

    #[test]
    fn vectors_are_little_endian_f32() {
        assert_eq!(
            &vector_bytes(&[1.0, -2.0])[..],
            &[0, 0, 128, 63, 0, 0, 0, 192]
        );
    }

    #[test]
    fn resp2_rows_are_read_and_incomplete_ones_dropped() {
        let pairs = |p: &[(&str, &str)]| {
            Value::Array(
                p.iter()
                    .flat_map(|(k, v)| [Value::from(*k), Value::from(*v)])
                    .collect(),
            )
        };
        let reply = Value::Array(vec![
            Value::Integer(2),
            Value::from("k1"),
            pairs(&[
                ("dist", "0.25"),
                ("scope_name", "s"),
                ("id", "a"),
                ("payload", "p"),
                ("seq", "7"),
            ]),
            Value::from("k2"),
            pairs(&[("dist", "0.5")]),
        ]);
        let rows = rows(reply);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].distance, 0.25);
        assert_eq!(rows[0].seq, 7);
        assert_eq!(rows[0].id, "a");
        assert_eq!(&rows[0].payload[..], b"p");
    }
}
