//! [`Pool`]: a set of endpoints, their load, the prefix index, and the pick.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{ConfigError, MAX_ENDPOINTS, Settings, Strategy};
use crate::endpoint::Endpoint;
use crate::load::{Load, Permit, State};
use crate::prefix::{PrefixIndex, StickyIndex};
use crate::prompt::{Prompt, sticky_digest};
use crate::signals::Signals;
#[cfg(feature = "redis")]
use crate::store::redis::{Link, SharedMask};
use tower_ai_core::key::{ClientKey, KeyExtractor, RequestHead};

/// A set of endpoints that serve the same model, and what the balancer
/// knows of them: permits and tokens in flight, failures and cooldowns, and
/// which prompt prefixes each one served last.
///
/// Cheap to clone (an `Arc`); every clone shares the state. A
/// [`BalanceLayer`](crate::BalanceLayer) balances over one pool, or over the
/// pool each request carries in its extensions.
///
/// ```
/// use tower_ai_balance::{Endpoint, Pool, Strategy};
///
/// let pool = Pool::builder("llama-3-8b")
///     .strategy(Strategy::cache_aware())
///     .endpoint(Endpoint::new("gpu-0", "http://10.0.0.1:8000").max_concurrency(64))
///     .endpoint(Endpoint::new("gpu-1", "http://10.0.0.2:8000").max_concurrency(64))
///     .build()
///     .unwrap();
/// assert_eq!(pool.status().len(), 2);
/// ```
#[derive(Debug)]
pub struct Pool<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug)]
struct Shared<T> {
    name: Arc<str>,
    endpoints: Box<[Endpoint<T>]>,
    state: Arc<State>,
    settings: Settings,
    index: Mutex<PrefixIndex>,
    sticky: Option<Sticky>,
    /// Advances on every pick: round-robin's turn and p2c's random draws.
    turn: AtomicU64,
    /// The state shared with other replicas, when there is one.
    #[cfg(feature = "redis")]
    remote: Option<Arc<Link>>,
}

/// Session stickiness: requests with the same key go to the same endpoint
/// while it can take them and the load is in balance.
struct Sticky {
    key: StickyKey,
    index: Mutex<StickyIndex>,
}

type StickyKey = Arc<dyn Fn(RequestHead<'_>) -> Option<ClientKey> + Send + Sync>;

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky").finish_non_exhaustive()
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Every endpoint that isn't cooling down is full; waiting for a permit
    /// timed out.
    Full,
    /// Every endpoint is cooling down; the first one is back at this instant.
    Cooling(Instant),
}

/// An endpoint picked for a request, with the request's permit on it.
#[derive(Debug)]
pub(crate) struct Picked<T> {
    pub(crate) endpoint: Endpoint<T>,
    pub(crate) permit: Permit,
}

impl<T> Pool<T> {
    /// A builder for a pool named `name` (a label in metrics and status;
    /// take it from configuration).
    pub fn builder(name: impl Into<Arc<str>>) -> PoolBuilder<T> {
        PoolBuilder {
            name: name.into(),
            endpoints: Vec::new(),
            settings: Settings::default(),
            sticky: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool's endpoints, in the order they were added.
    pub fn endpoints(&self) -> &[Endpoint<T>] {
        &self.shared.endpoints
    }

    /// Records what the endpoint named `endpoint` reports of its own load
    /// (from its `/metrics`, see [`signals`](crate::signals)); `None` when
    /// it can't be read. Its waiting requests count as tokens in flight, and
    /// a full KV cache as no room. `false` when no endpoint has that name.
    pub fn report(&self, endpoint: &str, signals: Option<Signals>) -> bool {
        let Some(i) = self
            .shared
            .endpoints
            .iter()
            .position(|e| e.name() == endpoint)
        else {
            return false;
        };
        self.shared.state.loads[i].report(signals);
        self.shared.state.freed.notify_waiters();
        true
    }

    /// The pool's strategy.
    pub fn strategy(&self) -> Strategy {
        self.shared.settings.strategy
    }

    /// Each endpoint's load and health now, in the order they were added.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        let state = &self.shared.state;
        self.shared
            .endpoints
            .iter()
            .zip(state.loads.iter())
            .enumerate()
            .map(|(i, (endpoint, load))| {
                let blocks = load.blocks.load(Ordering::Relaxed);
                EndpointStatus {
                    name: endpoint.name().to_owned(),
                    in_flight: load.in_flight_everywhere(),
                    max_concurrency: load.max_concurrency,
                    tokens_in_flight: load.tokens_everywhere(),
                    consecutive_failures: load.consecutive_failures(),
                    cooling_for: state.cooling(i, now).map(|until| until - now),
                    requests: load.requests.load(Ordering::Relaxed),
                    failures: load.failures.load(Ordering::Relaxed),
                    cooldowns: load.cooldowns.load(Ordering::Relaxed),
                    reported_waiting: load.reported_waiting.load(Ordering::Relaxed),
                    kv_usage: load.kv_usage(),
                    prefix_hit_rate: if blocks == 0 {
                        0.0
                    } else {
                        load.blocks_matched.load(Ordering::Relaxed) as f64 / blocks as f64
                    },
                }
            })
            .collect()
    }

    /// The digest of the request's sticky key, when the pool has a sticky
    /// extractor and the request a key.
    pub(crate) fn sticky_key(&self, head: RequestHead<'_>) -> Option<u64> {
        let sticky = self.shared.sticky.as_ref()?;
        (sticky.key)(head).map(|key| sticky_digest(&key.to_bytes()))
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub(crate) fn state(&self) -> &State {
        &self.shared.state
    }
}

impl<T: Clone> Pool<T> {
    /// Picks an endpoint for `prompt` and takes a permit on it, waiting up to
    /// the queue timeout while every available endpoint is full. Endpoints
    /// in `tried` (bit `i` = endpoint `i`) are picked only when no other is
    /// available.
    pub(crate) async fn acquire(
        &self,
        prompt: &Prompt,
        tried: u64,
    ) -> Result<Picked<T>, Unavailable> {
        #[cfg(feature = "redis")]
        let shared = self.read_shared(prompt).await;
        #[cfg(feature = "redis")]
        let others: Vec<u64> = shared.iter().flatten().map(|m| m.mask).collect();
        #[cfg(not(feature = "redis"))]
        let others: Vec<u64> = Vec::new();
        let deadline = Instant::now() + self.shared.settings.queue_timeout;
        loop {
            // Registered before the pick, so a permit released between the
            // pick and the wait still wakes this request.
            let mut freed = pin!(self.shared.state.freed.notified());
            freed.as_mut().enable();
            match self.pick(prompt, tried, Instant::now(), &others) {
                Ok(picked) => {
                    #[cfg(feature = "redis")]
                    self.write_shared(prompt, shared, picked.permit.endpoint());
                    return Ok(picked);
                }
                Err(Wait::Cooling(until)) => return Err(Unavailable::Cooling(until)),
                Err(Wait::Full(cooling)) => {
                    let wake = cooling.map_or(deadline, |until| until.min(deadline));
                    if tokio::time::timeout_at(wake, freed).await.is_err()
                        && Instant::now() >= deadline
                    {
                        return Err(Unavailable::Full);
                    }
                }
            }
        }
    }

    /// The other replicas' prefix masks for the prompt's blocks, when the
    /// pick will use them.
    #[cfg(feature = "redis")]
    async fn read_shared(&self, prompt: &Prompt) -> Option<Vec<SharedMask>> {
        let link = self.shared.remote.as_ref()?;
        if prompt.blocks.is_empty()
            || !matches!(self.shared.settings.strategy, Strategy::CacheAware(_))
        {
            return None;
        }
        link.read_prefix(&prompt.blocks).await
    }

    /// Tells the other replicas, off the request's path, that `endpoint`
    /// now holds the prompt's blocks.
    #[cfg(feature = "redis")]
    fn write_shared(&self, prompt: &Prompt, shared: Option<Vec<SharedMask>>, endpoint: usize) {
        let (Some(link), Some(read)) = (self.shared.remote.clone(), shared) else {
            return;
        };
        let blocks = prompt.blocks[..read.len().min(prompt.blocks.len())].to_vec();
        tokio::spawn(async move { link.write_prefix(&blocks, &read, endpoint).await });
    }

    fn pick(
        &self,
        prompt: &Prompt,
        tried: u64,
        now: Instant,
        others: &[u64],
    ) -> Result<Picked<T>, Wait> {
        let shared = &*self.shared;
        let state = &shared.state;
        // A permit can be taken by another request between the choice and
        // the acquisition: choose again, at most once per endpoint.
        for _ in 0..=shared.endpoints.len() {
            let mut open = 0u64;
            let mut cooling: Option<Instant> = None;
            for (i, load) in state.loads.iter().enumerate() {
                match state.cooling(i, now) {
                    Some(until) => cooling = Some(cooling.map_or(until, |c| c.min(until))),
                    None if load.has_room() => open |= 1 << i,
                    None => {}
                }
            }
            if open == 0 {
                let every_one_cooling = cooling.is_some()
                    && (0..shared.endpoints.len()).all(|i| state.cooling(i, now).is_some());
                return Err(match cooling {
                    Some(until) if every_one_cooling => Wait::Cooling(until),
                    _ => Wait::Full(cooling),
                });
            }
            let fresh = open & !tried;
            let candidates = if fresh != 0 { fresh } else { open };
            let (i, matched) = self.choose(candidates, prompt, others);
            if let Some(permit) = state.acquire(i, prompt.tokens) {
                state.loads[i].count_blocks(prompt.blocks.len() as u64, u64::from(matched));
                if matches!(shared.settings.strategy, Strategy::CacheAware(_)) {
                    shared.index.lock().record(&prompt.blocks, i);
                }
                if let (Some(sticky), Some(key)) = (&shared.sticky, prompt.sticky) {
                    sticky.index.lock().record(key, i);
                }
                return Ok(Picked {
                    endpoint: shared.endpoints[i].clone(),
                    permit,
                });
            }
        }
        Err(Wait::Full(None))
    }

    /// The strategy's choice among `candidates` (bit `i` = endpoint `i`,
    /// at least one set), and how many of the prompt's blocks it holds.
    fn choose(&self, candidates: u64, prompt: &Prompt, others: &[u64]) -> (usize, u32) {
        let shared = &*self.shared;
        let turn = shared.turn.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = self.sticky_choice(candidates, prompt, turn) {
            return (held, 0);
        }
        match shared.settings.strategy {
            Strategy::RoundRobin => {
                let n = shared.endpoints.len();
                let start = (turn % n as u64) as u32;
                // The first candidate at or after `start`, wrapping around.
                let rotated = candidates.rotate_right(start);
                let offset = rotated.trailing_zeros();
                (((start + offset) as usize) % 64, 0)
            }
            Strategy::LeastLoaded => {
                let count = candidates.count_ones();
                let draw = splitmix(turn);
                let a = nth_bit(candidates, (draw % u64::from(count)) as u32);
                if count == 1 {
                    return (a, 0);
                }
                let rest = candidates & !(1 << a);
                let b = nth_bit(rest, ((draw >> 32) % u64::from(count - 1)) as u32);
                (if self.score(b) < self.score(a) { b } else { a }, 0)
            }
            Strategy::CacheAware(thresholds) => {
                let (least, low, high) = self.spread(candidates, turn);
                let out_of_balance = high - low > thresholds.balance_abs_tokens as f64
                    && high > low * thresholds.balance_rel;
                if prompt.blocks.is_empty() || out_of_balance {
                    return (least, 0);
                }
                let matches =
                    shared
                        .index
                        .lock()
                        .matches(&prompt.blocks, shared.endpoints.len(), others);
                let mut best = least;
                for i in rotated(candidates, turn) {
                    let better = matches[i] > matches[best]
                        || (matches[i] == matches[best] && self.score(i) < self.score(best));
                    if better {
                        best = i;
                    }
                }
                let share = f64::from(matches[best]) / prompt.blocks.len() as f64;
                if matches[best] > 0 && share >= thresholds.match_threshold {
                    (best, matches[best])
                } else {
                    (least, matches[least])
                }
            }
        }
    }

    /// The endpoint the request's sticky key last went to, if it is a
    /// candidate and not out of balance with the least loaded one (judged
    /// with the cache-aware thresholds: the pool's, else their defaults).
    fn sticky_choice(&self, candidates: u64, prompt: &Prompt, turn: u64) -> Option<usize> {
        let sticky = self.shared.sticky.as_ref()?;
        let held = sticky.index.lock().get(prompt.sticky?)?;
        if held >= 64 || candidates & (1 << held) == 0 {
            return None;
        }
        let thresholds = match self.shared.settings.strategy {
            Strategy::CacheAware(thresholds) => thresholds,
            _ => crate::config::CacheAware::new(),
        };
        let (_, low, _) = self.spread(candidates, turn);
        let load = self.score(held).0;
        let out_of_balance = load - low > thresholds.balance_abs_tokens as f64
            && load > low * thresholds.balance_rel;
        (!out_of_balance).then_some(held)
    }

    /// Tokens in flight per unit of weight, requests in flight breaking
    /// ties.
    fn score(&self, i: usize) -> (f64, u32) {
        let load = &self.shared.state.loads[i];
        let weight = f64::from(self.shared.endpoints[i].share());
        (
            load.tokens_everywhere() as f64 / weight,
            load.in_flight_everywhere(),
        )
    }

    /// The least loaded candidate, and the lowest and highest scores. Ties
    /// go to the first candidate from a position that moves each turn, so
    /// an idle fleet is filled evenly.
    fn spread(&self, candidates: u64, turn: u64) -> (usize, f64, f64) {
        let mut order = rotated(candidates, turn);
        let mut least = order.next().unwrap_or(0);
        let mut least_score = self.score(least);
        let mut high = least_score.0;
        for i in order {
            let score = self.score(i);
            high = high.max(score.0);
            if score < least_score {
                least = i;
                least_score = score;
            }
        }
        (least, least_score.0, high)
    }
}

/// Why a pick found nothing right now.
enum Wait {
    /// Every open endpoint is full; the earliest cooldown end, if any is
    /// cooling.
    Full(Option<Instant>),
    /// Every endpoint is cooling down.
    Cooling(Instant),
}

/// Builds a [`Pool`].
#[must_use]
pub struct PoolBuilder<T> {
    name: Arc<str>,
    endpoints: Vec<Endpoint<T>>,
    settings: Settings,
    sticky: Option<StickyKey>,
    #[cfg(feature = "redis")]
    redis: Option<Link>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for PoolBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .field("settings", &self.settings)
            .field("sticky", &self.sticky.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> PoolBuilder<T> {
    /// Adds an endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint<T>) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Adds endpoints.
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = Endpoint<T>>) -> Self {
        self.endpoints.extend(endpoints);
        self
    }

    /// How endpoints are picked; [`Strategy::CacheAware`] by default.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.settings.strategy = strategy;
        self
    }

    /// Session stickiness: requests whose `key` (a header, the caller's
    /// key, a session id) is the same go to the endpoint the last one went
    /// to, while it has room, isn't cooling down and the load is in balance
    /// (the cache-aware thresholds); otherwise the strategy picks and the
    /// key follows. Keys are kept as digests, at most `index_capacity` of
    /// them, in this replica only.
    pub fn sticky<K: KeyExtractor>(mut self, key: K) -> Self {
        self.sticky = Some(Arc::new(move |head| key.extract_head(head)));
        self
    }

    /// Bytes of canonical prompt text per prefix block; 64 (about 16 tokens,
    /// vLLM's and SGLang's KV-cache block) by default.
    pub fn block_bytes(mut self, bytes: usize) -> Self {
        self.settings.block_bytes = bytes;
        self
    }

    /// How many prefix blocks the index remembers (about 16 bytes each);
    /// 262,144 by default. What was used least recently is forgotten first.
    pub fn index_capacity(mut self, blocks: usize) -> Self {
        self.settings.index_capacity = blocks;
        self
    }

    /// Output tokens counted in flight for a request that sets no limit;
    /// 256 by default.
    pub fn default_output_tokens(mut self, tokens: u64) -> Self {
        self.settings.default_output_tokens = tokens;
        self
    }

    /// The largest request body the balancer reads (it must hold the body
    /// to retry it); larger ones get `413`. 1 MiB by default.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.settings.max_body = bytes;
        self
    }

    /// Attempts after the first, each on a new pick; 2 by default. A retry
    /// happens only before any byte of the answer is returned.
    pub fn retries(mut self, retries: u32) -> Self {
        self.settings.retries = retries;
        self
    }

    /// The backoff before the first retry (25 ms), doubled for each next
    /// one up to `max` (1 s), with jitter.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.settings.backoff = first;
        self.settings.backoff_max = max;
        self
    }

    /// The longest a retry waits for an endpoint to come back from a
    /// cooldown or a `Retry-After`; past it the client gets the last answer
    /// (its `Retry-After` included). 5 s by default.
    pub fn max_retry_wait(mut self, wait: Duration) -> Self {
        self.settings.max_retry_wait = wait;
        self
    }

    /// Cools an endpoint down for `cooldown` after `failures` failures in a
    /// row (connection errors, `408`, `429`, `5xx`; other `4xx` are the
    /// client's fault and count as healthy); 3 and 10 s by default.
    pub fn cooldown(mut self, failures: u32, cooldown: Duration) -> Self {
        self.settings.cooldown_after = failures;
        self.settings.cooldown = cooldown;
        self
    }

    /// The longest a `Retry-After` from an endpoint keeps it cooling down;
    /// 60 s by default.
    pub fn max_cooldown(mut self, max: Duration) -> Self {
        self.settings.max_cooldown = max;
        self
    }

    /// How long a request waits for a permit when every endpoint is full
    /// before it gets `503`; 10 s by default.
    pub fn queue_timeout(mut self, wait: Duration) -> Self {
        self.settings.queue_timeout = wait;
        self
    }

    /// Shares the pool's load and prefix index with every replica using the
    /// same Redis and pool name (see [`RedisStore`](crate::RedisStore)). The
    /// pool must then be built inside a Tokio runtime: a task publishes its
    /// load.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: &crate::RedisStore) -> Self {
        self.redis = Some(store.link(&self.name));
        self
    }

    /// The pool, or why it can't be built: no endpoint, more than 64, two
    /// with one name, a limit or weight of 0, a threshold out of range, or
    /// shared state outside a Tokio runtime.
    pub fn build(self) -> Result<Pool<T>, ConfigError>
    where
        T: Send + Sync + 'static,
    {
        self.settings.validate(self.endpoints.len())?;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if endpoint.permits() == 0 || endpoint.share() == 0 {
                return Err(ConfigError::ZeroLimit(endpoint.name().to_owned()));
            }
            if self.endpoints[..i]
                .iter()
                .any(|e| e.name() == endpoint.name())
            {
                return Err(ConfigError::DuplicateName(endpoint.name().to_owned()));
            }
        }
        debug_assert!(self.endpoints.len() <= MAX_ENDPOINTS);
        let loads = self
            .endpoints
            .iter()
            .map(|e| Load::new(e.permits(), Arc::clone(&self.name), e.name_arc()))
            .collect();
        let state = Arc::new(State::new(loads, &self.settings));
        #[cfg(feature = "redis")]
        let remote = self.redis.map(Arc::new);
        // Replicas sharing a pool start their turns at different places, so
        // an idle fleet's ties don't all go to the first endpoint.
        #[cfg(feature = "redis")]
        let first_turn = remote.as_ref().map_or(0, |_| random_u64());
        #[cfg(not(feature = "redis"))]
        let first_turn = 0;
        #[cfg(feature = "redis")]
        let runtime = match &remote {
            Some(_) => {
                Some(tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?)
            }
            None => None,
        };
        let pool = Pool {
            shared: Arc::new(Shared {
                name: self.name,
                endpoints: self.endpoints.into_boxed_slice(),
                state,
                index: Mutex::new(PrefixIndex::new(self.settings.index_capacity)),
                sticky: self.sticky.map(|key| Sticky {
                    key,
                    index: Mutex::new(StickyIndex::new(self.settings.index_capacity)),
                }),
                settings: self.settings,
                turn: AtomicU64::new(first_turn),
                #[cfg(feature = "redis")]
                remote: remote.clone(),
            }),
        };
        #[cfg(feature = "redis")]
        if let (Some(link), Some(runtime)) = (remote, runtime) {
            runtime.spawn(sync_load(link, Arc::downgrade(&pool.shared)));
        }
        Ok(pool)
    }
}

/// Publishes this replica's load and reads the others' every sync
/// interval, while the pool lives (a permit outliving it doesn't keep it
/// publishing: a dropped pool's load lapses with its lease).
#[cfg(feature = "redis")]
async fn sync_load<T>(link: Arc<Link>, pool: std::sync::Weak<Shared<T>>) {
    let mut ticker = tokio::time::interval(link.sync_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(own) = pool.upgrade().map(|p| p.state.own_load()) else {
            break;
        };
        let others = link.sync_load(&own).await;
        let Some(shared) = pool.upgrade() else {
            break;
        };
        shared.state.set_remote_load(others);
    }
}

/// One endpoint's load and health, from [`Pool::status`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint's name.
    pub name: String,
    /// Requests in flight: permits held, until each response body ends.
    pub in_flight: u32,
    /// Its permits.
    pub max_concurrency: u32,
    /// Estimated tokens of the requests in flight.
    pub tokens_in_flight: u64,
    /// Failures since its last healthy answer.
    pub consecutive_failures: u32,
    /// How long it is still cooling down, if it is.
    pub cooling_for: Option<Duration>,
    /// Requests sent to it.
    pub requests: u64,
    /// Failed attempts on it.
    pub failures: u64,
    /// Times it was cooled down.
    pub cooldowns: u64,
    /// Requests waiting in its own queue, as it last reported.
    pub reported_waiting: u32,
    /// Its KV-cache usage (0 to 1), as it last reported, if it did.
    pub kv_usage: Option<f64>,
    /// The share of prompt blocks sent to it that the prefix index said it
    /// already held (0 to 1): the cache hits the balancer aimed for.
    pub prefix_hit_rate: f64,
}

/// Bit positions of `bits`, lowest first.
fn bits(mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            i
        })
    })
}

/// Bit positions of `bits`, starting from position `turn % 64` and
/// wrapping around.
fn rotated(bits_set: u64, turn: u64) -> impl Iterator<Item = usize> {
    let start = (turn % 64) as u32;
    bits(bits_set.rotate_right(start)).map(move |i| (i + start as usize) % 64)
}

/// The position of the `n`th set bit of `bits` (0-based; `n` < popcount).
fn nth_bit(bits_set: u64, n: u32) -> usize {
    bits(bits_set).nth(n as usize).unwrap_or(0)
}

/// A random value, different in each process and each call.
#[cfg(feature = "redis")]
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A well-mixed 64-bit value from a counter.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
