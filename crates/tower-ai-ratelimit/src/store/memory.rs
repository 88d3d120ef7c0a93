//! The in-memory backend: every algorithm, for one process.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tower_ai_core::key::ClientKey;

use crate::algorithm::{Spec, State};
use crate::clock::{Clock, SystemClock};
use crate::store::{Charge, Verdict};

const SHARDS: usize = 64;
/// A shard sweeps its idle keys when it reaches twice the keys it kept at
/// its last sweep, and at least this many.
const MIN_SWEEP: usize = 16;
/// While the table is full, a shard is swept for room at most this often (in
/// clock nanoseconds): a sweep reads the whole shard, and a client sending a
/// new key with every request must not make each of them pay for one.
const FULL_SWEEP_EVERY: u64 = 1_000_000_000;
/// While the table is full, the warning is logged at most this often.
const FULL_WARNING_EVERY: u64 = 10_000_000_000;
/// No warning yet.
const NEVER: u64 = u64::MAX;

/// Rate-limit state for one process.
///
/// Keyed state lives in 64 shards, each a table under one mutex held for a
/// few dozen nanoseconds; each key holds the states of all its policies
/// together, so a request checked against several policies is admitted by
/// all or charged by none. The time is read inside the lock, so a thread
/// paused between reading the clock and deciding can't decide on a stale
/// time (governor-style limiters can, and then refuse a quota that was never
/// approached).
///
/// Memory is bounded: a key whose every policy is back to its fresh state is
/// forgotten by a sweep of its shard, which runs when the shard has doubled
/// since its last sweep (amortised O(1) per new key), and at most `max_keys`
/// keys are held. Past that, new keys share one overflow entry (strict: they
/// are limited together) until sweeps free room; a full shard is swept at
/// most once a second, so a spray of new keys costs each request a lookup,
/// not a scan.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    clock: Arc<dyn Clock>,
    max_keys: usize,
    keys: AtomicUsize,
    overflow: Mutex<Entry>,
    /// When the table-full warning was last logged ([`NEVER`]: not yet).
    warned: AtomicU64,
    /// Sweeps made, for the tests.
    #[cfg(test)]
    sweeps: AtomicUsize,
}

/// One shard: a table keyed by the precomputed hash, so a key is hashed
/// once per check (for the shard and the table alike).
struct Shard {
    map: hashbrown::HashTable<(ClientKey, Entry)>,
    next_sweep: usize,
    /// When this shard was last swept for room in a full table.
    full_sweep: Option<u64>,
}

impl Shard {
    fn get(&mut self, hash: u64, key: &ClientKey) -> Option<&mut Entry> {
        self.map.find_mut(hash, |(k, _)| k == key).map(|(_, e)| e)
    }
}

/// One key's states, by policy slot, each with its policy's numbers. The
/// first lives inline (most keys have one policy), the rest beside it.
#[derive(Default)]
struct Entry {
    first: Option<(u32, Spec, State)>,
    rest: Vec<(u32, Spec, State)>,
}

impl Entry {
    fn state(&mut self, slot: u32, spec: &Spec) -> &mut State {
        match &mut self.first {
            None => &mut self.first.insert((slot, *spec, State::new(spec))).2,
            Some((s, _, _)) if *s == slot => match &mut self.first {
                Some(first) => &mut first.2,
                None => unreachable!("just matched"),
            },
            Some(_) => {
                let i = match self.rest.iter().position(|(s, _, _)| *s == slot) {
                    Some(i) => i,
                    None => {
                        // Exactly: a key has a few policies, and a table of
                        // keys each holding room for four would be mostly
                        // room.
                        self.rest.reserve_exact(1);
                        self.rest.push((slot, *spec, State::new(spec)));
                        self.rest.len() - 1
                    }
                };
                &mut self.rest[i].2
            }
        }
    }

    fn is_idle(&mut self, now: u64) -> bool {
        self.first
            .iter_mut()
            .chain(self.rest.iter_mut())
            .all(|(_, spec, state)| {
                state.advance(spec, now);
                state.is_idle(now)
            })
    }

    /// Checks every charge; charges all only if all fit.
    fn check(&mut self, charges: &[Charge<'_>], now: u64, out: &mut Verdict) {
        if let [one] = charges {
            let state = self.state(one.slot, &one.spec);
            state.advance(&one.spec, now);
            let d = state.decide(&one.spec, now, one.cost);
            if d.allowed() {
                state.charge(&one.spec, now, one.cost);
            }
            *out = Verdict::single(d);
            return;
        }
        let mut all = true;
        for charge in charges {
            let state = self.state(charge.slot, &charge.spec);
            state.advance(&charge.spec, now);
            let d = state.decide(&charge.spec, now, charge.cost);
            all &= d.allowed();
            out.push(d);
        }
        if all {
            for charge in charges {
                self.state(charge.slot, &charge.spec)
                    .charge(&charge.spec, now, charge.cost);
            }
        } else {
            // The ones that fit were not charged: report them as they are.
            for (d, charge) in out.decisions_mut().iter_mut().zip(charges) {
                if d.allowed() {
                    let state = self.state(charge.slot, &charge.spec);
                    *d = state.decide(&charge.spec, now, 0).admitted();
                }
            }
        }
        out.set_allowed(all);
    }
}

impl MemoryStore {
    /// A store on the system clock, holding at most 1,000,000 keys.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::new())
    }

    /// A store on the given clock (e.g. [`TokioClock`](crate::TokioClock) in
    /// tests with paused time).
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::build(Arc::new(clock), 1_000_000)
    }

    /// Bounds the number of keys held (default 1,000,000). Meant for
    /// building: the returned store starts empty.
    #[must_use]
    pub fn max_keys(self, max_keys: usize) -> Self {
        Self::build(self.inner.clock.clone(), max_keys)
    }

    fn build(clock: Arc<dyn Clock>, max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS)
                    .map(|_| {
                        Mutex::new(Shard {
                            map: hashbrown::HashTable::new(),
                            next_sweep: MIN_SWEEP,
                            full_sweep: None,
                        })
                    })
                    .collect(),
                hasher: Default::default(),
                clock,
                max_keys: max_keys.max(1),
                keys: AtomicUsize::new(0),
                overflow: Mutex::new(Entry::default()),
                warned: AtomicU64::new(NEVER),
                #[cfg(test)]
                sweeps: AtomicUsize::new(0),
            }),
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.inner.keys.load(Ordering::Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, key: &ClientKey) -> u64 {
        self.inner.hasher.hash_one(key)
    }

    /// The shard of a hash: middle bits, which the table uses neither for
    /// its bucket index (low bits) nor its control tags (top 7 bits).
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.inner.shards[(hash >> 32) as usize % SHARDS]
    }

    /// Checks `charges` for `key` and charges them if all fit.
    pub(crate) fn check(&self, key: &ClientKey, charges: &[Charge<'_>]) -> Verdict {
        let mut verdict = Verdict::default();
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        if let Some(entry) = shard.get(hash, key) {
            entry.check(charges, self.inner.clock.now(), &mut verdict);
            return verdict;
        }
        if shard.map.len() >= shard.next_sweep {
            self.sweep(&mut shard);
        }
        if self.inner.keys.load(Ordering::Relaxed) >= self.inner.max_keys {
            let now = self.inner.clock.now();
            if shard
                .full_sweep
                .is_none_or(|last| now.saturating_sub(last) >= FULL_SWEEP_EVERY)
            {
                shard.full_sweep = Some(now);
                self.sweep(&mut shard);
            }
            if self.inner.keys.load(Ordering::Relaxed) >= self.inner.max_keys {
                drop(shard);
                self.warn_full(now);
                metrics::counter!("tower_ai_ratelimit_overflow_total").increment(1);
                let mut entry = self.inner.overflow.lock();
                entry.check(charges, self.inner.clock.now(), &mut verdict);
                return verdict;
            }
        }
        self.inner.keys.fetch_add(1, Ordering::Relaxed);
        let hasher = &self.inner.hasher;
        let (_, entry) = shard
            .map
            .insert_unique(hash, (key.clone(), Entry::default()), |(k, _)| {
                hasher.hash_one(k)
            })
            .into_mut();
        entry.check(charges, self.inner.clock.now(), &mut verdict);
        verdict
    }

    /// Charges `cost` more (reconciliation found the estimate too low) or
    /// gives `refund` back, for one policy of `key`. Never refuses.
    pub(crate) fn adjust(&self, key: &ClientKey, charge: &Charge<'_>, refund: bool) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        let now = self.inner.clock.now();
        let entry = match shard.get(hash, key) {
            Some(entry) => entry,
            // Forgotten, so full: a refund changes nothing.
            None if refund => return,
            None => {
                self.inner.keys.fetch_add(1, Ordering::Relaxed);
                let hasher = &self.inner.hasher;
                &mut shard
                    .map
                    .insert_unique(hash, (key.clone(), Entry::default()), |(k, _)| {
                        hasher.hash_one(k)
                    })
                    .into_mut()
                    .1
            }
        };
        let state = entry.state(charge.slot, &charge.spec);
        state.advance(&charge.spec, now);
        if refund {
            state.refund(&charge.spec, now, charge.cost);
        } else {
            state.charge(&charge.spec, now, charge.cost);
        }
    }

    /// Forgets the idle keys of a shard.
    /// Logs that the table is full, at most every [`FULL_WARNING_EVERY`]
    /// (the overflow counter counts every request).
    fn warn_full(&self, now: u64) {
        let last = self.inner.warned.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= FULL_WARNING_EVERY;
        if due
            && self
                .inner
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_keys = self.inner.max_keys,
                "rate limit key table full; new keys share the overflow bucket"
            );
        }
    }

    fn sweep(&self, shard: &mut Shard) {
        #[cfg(test)]
        self.inner.sweeps.fetch_add(1, Ordering::Relaxed);
        let now = self.inner.clock.now();
        let before = shard.map.len();
        shard.map.retain(|(_, entry)| !entry.is_idle(now));
        self.inner
            .keys
            .fetch_sub(before - shard.map.len(), Ordering::Relaxed);
        shard.next_sweep = (shard.map.len() * 2).max(MIN_SWEEP);
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
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::{Policy, Rate};

    /// Counts the warnings logged while it is the thread's subscriber.
    struct Warnings(Arc<AtomicUsize>);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// A spray of new keys into a full table: each shard is swept for room
    /// at most once a second, and the warning logged at most every ten.
    #[test]
    fn a_full_table_is_neither_rescanned_nor_reported_for_every_new_key() {
        let clock = ManualClock::new();
        // A bucket that takes hours to refill: no key turns idle here.
        let policy = Policy::token_bucket(5, Rate::per_second(0.0001));
        let charge = Charge {
            slot: 0,
            name: "spray",
            spec: Spec::of(&policy),
            cost: 1,
        };
        let store = MemoryStore::with_clock(clock.clone()).max_keys(1_000);
        let key = |i: u32| ClientKey::digest("spray", i.to_string());
        for i in 0..1_000 {
            assert!(store.check(&key(i), &[charge]).allowed());
        }
        assert_eq!(store.len(), 1_000);

        let warnings = Arc::new(AtomicUsize::new(0));
        let spray = |from: u32| {
            let sweeps = store.inner.sweeps.load(Ordering::Relaxed);
            tracing::subscriber::with_default(Warnings(Arc::clone(&warnings)), || {
                for i in from..from + 10_000 {
                    let _ = store.check(&key(i), &[charge]);
                }
            });
            store.inner.sweeps.load(Ordering::Relaxed) - sweeps
        };
        // Unbounded, each of these 10,000 requests would sweep its shard;
        // here each shard is swept at most once for room and once for its
        // growth.
        let sweeps = spray(1_000);
        assert!(sweeps <= 2 * SHARDS, "{sweeps} sweeps");
        assert_eq!(warnings.load(Ordering::Relaxed), 1);
        assert_eq!(store.len(), 1_000);

        // A second on, each shard may be swept again; the warning waits ten.
        clock.advance(Duration::from_secs(1));
        let sweeps = spray(11_000);
        assert!((1..=SHARDS).contains(&sweeps), "{sweeps} sweeps");
        assert_eq!(warnings.load(Ordering::Relaxed), 1);
        clock.advance(Duration::from_secs(10));
        let _ = spray(21_000);
        assert_eq!(warnings.load(Ordering::Relaxed), 2);
    }
}
