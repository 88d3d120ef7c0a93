//! The prefix index: which endpoints recently served a prompt starting with
//! a given chain of blocks.
//!
//! An approximation of each server's KV cache, as SGLang's router keeps one:
//! block hash → a bit per endpoint. Bounded by two generations of a map
//! (a lookup or a write moves an entry into the current one; when the
//! current one fills half the capacity, it becomes the previous one and the
//! old previous one is dropped), so what was not used for a generation is
//! forgotten first, at O(1) per block and no per-entry list to maintain.

use hashbrown::HashMap;

use crate::config::MAX_ENDPOINTS;

type Map = HashMap<u64, u64, foldhash::fast::RandomState>;

/// Block hash → endpoints (bit `i` = endpoint `i`) holding that prefix.
#[derive(Debug)]
pub(crate) struct PrefixIndex {
    current: Map,
    previous: Map,
    /// Entries the current generation holds before it turns over.
    generation: usize,
}

impl PrefixIndex {
    pub(crate) fn new(capacity: usize) -> Self {
        let generation = (capacity / 2).max(1);
        Self {
            current: Map::with_capacity_and_hasher(generation.min(1 << 16), Default::default()),
            previous: Map::default(),
            generation,
        }
    }

    /// How many of `blocks`' leading blocks each endpoint holds: element `i`
    /// is endpoint `i`'s match, for the first `endpoints` endpoints. `shared`
    /// holds other replicas' masks for the first blocks (from Redis), added
    /// to this index's. Stops reading at the first block no endpoint holds.
    pub(crate) fn matches(
        &self,
        blocks: &[u64],
        endpoints: usize,
        shared: &[u64],
    ) -> [u32; MAX_ENDPOINTS] {
        let mut lengths = [0; MAX_ENDPOINTS];
        let mut alive = mask(endpoints);
        for (depth, block) in blocks.iter().enumerate() {
            let others = shared.get(depth).copied().unwrap_or(0);
            let holders = (self.get(*block) | others) & alive;
            let dropped = alive & !holders;
            for_each_bit(dropped, |i| lengths[i] = depth as u32);
            alive = holders;
            if alive == 0 {
                return lengths;
            }
        }
        for_each_bit(alive, |i| lengths[i] = blocks.len() as u32);
        lengths
    }

    /// Records that `endpoint` now holds every block of the chain.
    pub(crate) fn record(&mut self, blocks: &[u64], endpoint: usize) {
        let bit = 1u64 << endpoint;
        for block in blocks {
            let held = match self.current.get_mut(block) {
                Some(held) => {
                    *held |= bit;
                    continue;
                }
                None => self.previous.remove(block).unwrap_or(0),
            };
            if self.current.len() >= self.generation {
                self.previous = std::mem::take(&mut self.current);
            }
            self.current.insert(*block, held | bit);
        }
    }

    /// Entries held, both generations.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    fn get(&self, block: u64) -> u64 {
        match self.current.get(&block) {
            Some(held) => *held,
            None => self.previous.get(&block).copied().unwrap_or(0),
        }
    }
}

fn mask(endpoints: usize) -> u64 {
    if endpoints >= 64 {
        u64::MAX
    } else {
        (1u64 << endpoints) - 1
    }
}

fn for_each_bit(mut bits: u64, mut f: impl FnMut(usize)) {
    while bits != 0 {
        f(bits.trailing_zeros() as usize);
        bits &= bits - 1;
    }
}

/// Sticky key digest → the endpoint that last served it; bounded like the
/// prefix index (two generations).
#[derive(Debug)]
pub(crate) struct StickyIndex {
    current: HashMap<u64, u8, foldhash::fast::RandomState>,
    previous: HashMap<u64, u8, foldhash::fast::RandomState>,
    generation: usize,
}

impl StickyIndex {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            current: HashMap::default(),
            previous: HashMap::default(),
            generation: (capacity / 2).max(1),
        }
    }

    pub(crate) fn get(&self, key: u64) -> Option<usize> {
        self.current
            .get(&key)
            .or_else(|| self.previous.get(&key))
            .map(|e| usize::from(*e))
    }

    pub(crate) fn record(&mut self, key: u64, endpoint: usize) {
        let endpoint = u8::try_from(endpoint).unwrap_or(u8::MAX);
        if let Some(held) = self.current.get_mut(&key) {
            *held = endpoint;
            return;
        }
        self.previous.remove(&key);
        if self.current.len() >= self.generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_are_per_endpoint_and_stop_at_the_first_difference() {
        let mut index = PrefixIndex::new(1024);
        index.record(&[1, 2, 3, 4], 0);
        index.record(&[1, 2, 9], 1);
        let m = index.matches(&[1, 2, 3, 5], 3, &[]);
        assert_eq!(&m[..3], &[3, 2, 0]);
        let m = index.matches(&[1, 2, 3, 4, 5, 6], 3, &[]);
        assert_eq!(&m[..3], &[4, 2, 0]);
        let m = index.matches(&[7], 3, &[]);
        assert_eq!(&m[..3], &[0, 0, 0]);
        let m = index.matches(&[1, 2, 3, 4], 3, &[]);
        assert_eq!(&m[..3], &[4, 2, 0], "a full match counts every block");
    }

    #[test]
    fn the_index_is_bounded_and_keeps_what_is_used() {
        let mut index = PrefixIndex::new(100);
        index.record(&[0], 0);
        for block in 1..1000u64 {
            index.record(&[block], 1);
            // Block 0 is used all along: it is carried into each generation.
            index.record(&[0], 0);
            assert!(index.len() <= 100, "{} entries", index.len());
        }
        assert_eq!(index.matches(&[0], 2, &[])[0], 1);
        assert_eq!(
            index.matches(&[1], 2, &[])[1],
            0,
            "block 1 is long forgotten"
        );
        assert_eq!(index.matches(&[999], 2, &[])[1], 1);
    }

    #[test]
    fn shared_masks_add_to_the_local_ones() {
        let mut index = PrefixIndex::new(64);
        index.record(&[1, 2], 0);
        // Another replica sent blocks 1, 2, 3 to endpoint 1.
        let m = index.matches(&[1, 2, 3, 4], 2, &[0b10, 0b10, 0b10]);
        assert_eq!(&m[..2], &[2, 3]);
    }

    #[test]
    fn the_sticky_index_keeps_the_last_endpoint_and_is_bounded() {
        let mut sticky = StickyIndex::new(10);
        sticky.record(1, 3);
        sticky.record(1, 2);
        assert_eq!(sticky.get(1), Some(2));
        for key in 2..100 {
            sticky.record(key, 1);
            assert!(sticky.current.len() + sticky.previous.len() <= 10);
        }
        assert_eq!(sticky.get(1), None);
        assert_eq!(sticky.get(99), Some(1));
    }

    #[test]
    fn sixty_four_endpoints_fit() {
        let mut index = PrefixIndex::new(64);
        index.record(&[1], 63);
        assert_eq!(index.matches(&[1], 64, &[])[63], 1);
    }
}
