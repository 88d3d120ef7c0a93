//! The breakers of one layer: one, or one per key, bounded in number.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::breaker::{Breaker, Remote};
use crate::config::Settings;

/// Makes the shared-state link of each new breaker.
pub(crate) trait RemoteFactory: Send + Sync + fmt::Debug {
    /// The link of the breaker for `key` (`None`: the layer's only breaker).
    fn link(&self, settings: &Settings, key: Option<&str>) -> Box<dyn Remote>;
    /// Starts the background work (the periodic sync) for `registry`.
    fn start(&self, registry: Weak<Registry>) -> Result<(), crate::ConfigError>;
}

pub(crate) struct Registry {
    pub(crate) settings: Arc<Settings>,
    single: Option<Arc<Breaker>>,
    map: RwLock<HashMap<Arc<str>, Arc<Breaker>>>,
    /// Advances at each idle sweep; breakers note it when used.
    tick: AtomicU32,
    /// Breakers created so far.
    created: AtomicU64,
    last_sweep: Mutex<Instant>,
    remote: Option<Arc<dyn RemoteFactory>>,
    /// Scans of a full table for room, for the tests.
    #[cfg(test)]
    evictions: AtomicU64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("circuit", &self.settings.name)
            .field("keyed", &self.single.is_none())
            .field("breakers", &self.len())
            .finish()
    }
}

impl Registry {
    pub(crate) fn new(
        settings: Arc<Settings>,
        keyed: bool,
        remote: Option<Arc<dyn RemoteFactory>>,
    ) -> Self {
        let single = (!keyed).then(|| Arc::new(make(&settings, None, remote.as_deref())));
        Self {
            settings,
            single,
            map: RwLock::new(HashMap::new()),
            tick: AtomicU32::new(0),
            created: AtomicU64::new(0),
            last_sweep: Mutex::new(Instant::now()),
            remote,
            #[cfg(test)]
            evictions: AtomicU64::new(0),
        }
    }

    /// The breaker of a layer without keys.
    #[inline]
    pub(crate) fn single(&self) -> Option<&Arc<Breaker>> {
        self.single.as_ref()
    }

    /// The breaker for `key`, created if needed.
    pub(crate) fn get(&self, key: &str) -> Arc<Breaker> {
        let tick = self.tick.load(Ordering::Relaxed);
        if let Some(b) = self.map.read().get(key) {
            if b.seen.load(Ordering::Relaxed) != tick {
                b.seen.store(tick, Ordering::Relaxed);
            }
            return Arc::clone(b);
        }
        self.create(key)
    }

    fn create(&self, key: &str) -> Arc<Breaker> {
        let mut map = self.map.write();
        if let Some(b) = map.get(key) {
            return Arc::clone(b);
        }
        self.sweep(&mut map);
        if map.len() >= self.settings.max_breakers {
            #[cfg(test)]
            self.evictions.fetch_add(1, Ordering::Relaxed);
            make_room(&mut map, self.settings.max_breakers);
        }
        let breaker = Arc::new(make(&self.settings, Some(key), self.remote.as_deref()));
        breaker
            .seen
            .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        let order = self.created.fetch_add(1, Ordering::Relaxed);
        breaker.order.store(order, Ordering::Relaxed);
        map.insert(Arc::from(key), Arc::clone(&breaker));
        breaker
    }

    /// Forgets closed breakers not used since the last sweep, at most once
    /// per idle timeout.
    fn sweep(&self, map: &mut HashMap<Arc<str>, Arc<Breaker>>) {
        let mut last = self.last_sweep.lock();
        if last.elapsed() < self.settings.idle_timeout {
            return;
        }
        *last = Instant::now();
        let tick = self.tick.load(Ordering::Relaxed);
        map.retain(|_, b| b.seen.load(Ordering::Relaxed) == tick || !b.is_idle_state());
        self.tick.store(tick.wrapping_add(1), Ordering::Relaxed);
    }

    /// The breaker named `key` (the layer's name when there are no keys).
    pub(crate) fn find(&self, key: &str) -> Option<Arc<Breaker>> {
        match &self.single {
            Some(b) => (key == &*self.settings.name).then(|| Arc::clone(b)),
            None => self.map.read().get(key).cloned(),
        }
    }

    /// Like [`find`](Self::find), creating a keyed breaker.
    pub(crate) fn find_or_create(&self, key: &str) -> Option<Arc<Breaker>> {
        match &self.single {
            Some(_) => self.find(key),
            None => Some(self.get(key)),
        }
    }

    /// Every live breaker.
    pub(crate) fn breakers(&self) -> Vec<Arc<Breaker>> {
        match &self.single {
            Some(b) => vec![Arc::clone(b)],
            None => {
                let mut map = self.map.write();
                self.sweep(&mut map);
                map.values().cloned().collect()
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.single {
            Some(_) => 1,
            None => self.map.read().len(),
        }
    }
}

fn make(
    settings: &Arc<Settings>,
    key: Option<&str>,
    remote: Option<&dyn RemoteFactory>,
) -> Breaker {
    let breaker = Breaker::new(Arc::clone(settings), key.map(Arc::from));
    match remote {
        Some(factory) => breaker.with_remote(factory.link(settings, key)),
        None => breaker,
    }
}

/// A full table makes room for this share of its bound at once (closed
/// breakers only), so that a run of new keys scans it once per that many
/// keys, not once per key (each scan holds the write lock).
const ROOM_SHARE: usize = 8;

/// Makes room in a table at `max` for at least one breaker: the closed ones
/// go first, the least recently used (to the idle sweep's granularity) and
/// then the oldest, up to `max / ROOM_SHARE` of them; with no closed one, one
/// in any state, in the same order.
fn make_room(map: &mut HashMap<Arc<str>, Arc<Breaker>>, max: usize) {
    let rank = |b: &Breaker| {
        (
            b.seen.load(Ordering::Relaxed),
            b.order.load(Ordering::Relaxed),
        )
    };
    let mut closed: Vec<((u32, u64), Arc<str>)> = map
        .iter()
        .filter(|(_, b)| b.is_idle_state())
        .map(|(k, b)| (rank(b), Arc::clone(k)))
        .collect();
    let excess = map.len() + 1 - max.min(map.len() + 1);
    let room = (max / ROOM_SHARE).max(excess).max(1);
    if closed.is_empty() {
        let victim = map
            .iter()
            .min_by_key(|(_, b)| rank(b))
            .map(|(k, _)| Arc::clone(k));
        if let Some(key) = victim {
            map.remove(&key);
        }
        return;
    }
    if closed.len() > room {
        closed.select_nth_unstable_by_key(room - 1, |(r, _)| *r);
        closed.truncate(room);
    }
    for (_, key) in closed {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registry(max: usize) -> Registry {
        let settings = Settings {
            max_breakers: max,
            idle_timeout: Duration::from_secs(60),
            ..Settings::default()
        };
        Registry::new(Arc::new(settings), true, None)
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_forgets_idle_breakers() {
        let r = registry(3);
        let a = r.get("a");
        assert!(Arc::ptr_eq(&a, &r.get("a")));
        r.get("b");
        r.get("c");
        assert_eq!(r.len(), 3);
        // Full: closed breakers make room; an open one is kept.
        if let Some(b) = r.find("b") {
            b.control(crate::state::Control::ForceOpen);
        }
        r.get("d");
        r.get("e");
        assert_eq!(r.len(), 3);
        assert!(r.find("b").is_some());
        assert!(r.find("a").is_none() && r.find("c").is_none());

        // Idle breakers are forgotten after one to two idle periods.
        let r = registry(100);
        r.get("a");
        r.get("b");
        if let Some(b) = r.find("b") {
            b.control(crate::state::Control::ForceOpen);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        r.get("c"); // first sweep: everything was used in this period
        tokio::time::advance(Duration::from_secs(61)).await;
        r.get("c");
        r.get("d"); // second sweep: `a` was not used since the first
        assert!(r.find("a").is_none());
        assert!(r.find("b").is_some(), "an open breaker is kept");
        assert!(r.find("c").is_some() && r.find("d").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_new_keys_scans_a_full_table_once_per_eighth_of_it() {
        let r = registry(64);
        for n in 0..64 {
            r.get(&format!("k{n}"));
        }
        if let Some(b) = r.find("k0") {
            b.control(crate::state::Control::ForceOpen);
        }
        for n in 64..1_064 {
            r.get(&format!("k{n}"));
            assert!(r.len() <= 64, "{} breakers", r.len());
        }
        // Room for 8 at each scan, not for one.
        let scans = r.evictions.load(Ordering::Relaxed);
        assert!(scans <= 1_000 / 8 + 1, "{scans} scans for 1,000 new keys");
        assert!(r.find("k0").is_some(), "an open breaker is kept");
        // The oldest closed ones went: the newest are there (a full table
        // keeps between 7/8 of its bound and all of it).
        assert!(r.len() >= 56);
        assert!((1_016..1_064).all(|n| r.find(&format!("k{n}")).is_some()));
    }

    #[test]
    fn single_breaker_by_name() {
        let r = Registry::new(Arc::new(Settings::default()), false, None);
        assert!(r.single().is_some());
        assert!(r.find("default").is_some());
        assert!(r.find("other").is_none());
        assert!(r.find_or_create("other").is_none());
        assert_eq!(r.breakers().len(), 1);
    }
}
