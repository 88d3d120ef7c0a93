//! The KV cache, counted in blocks of 16 tokens as vLLM's paged attention does.
//!
//! A prompt is tokenized as 4 bytes of UTF-8 per token (a last partial token counts as one).
//! Each full block of a prompt has a chained hash: the hash of block `i` covers the hash of
//! block `i - 1` and the bytes of block `i`, so equal hashes mean equal prefixes and a hit is
//! the longest run of leading blocks already resident. A partial last block is never shared.
//!
//! A running sequence holds a [`Lease`]: its prompt's full blocks, pinned (shared with other
//! sequences holding the same blocks), and private blocks for the rest of the sequence. When it
//! ends, the private blocks are freed and the prompt blocks stay resident, unpinned, until
//! the least recently used ones are evicted to make room.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Bytes of prompt text per token.
const BYTES_PER_TOKEN: usize = 4;
/// Tokens per block (vLLM's default `--block-size`).
pub(crate) const BLOCK_TOKENS: u64 = 16;
/// Bytes of prompt text per block.
const BLOCK_BYTES: usize = 64;

/// A prompt as the cache sees it: its length and the chained hashes of its full blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prompt {
    /// Tokens: 4 bytes each, a last partial one included.
    pub(crate) tokens: u64,
    /// The chained hash of each full block, first block first.
    pub(crate) hashes: Vec<u64>,
}

impl Prompt {
    /// Tokenizes and hashes `text`.
    pub(crate) fn new(text: &str) -> Self {
        let bytes = text.as_bytes();
        let tokens = bytes.len().div_ceil(BYTES_PER_TOKEN);
        // A block is full once it has 16 tokens, even if its last token is a partial one.
        let full_blocks = tokens / BLOCK_TOKENS as usize;
        let mut parent = 0_u64;
        let hashes = bytes
            .chunks(BLOCK_BYTES)
            .take(full_blocks)
            .map(|block| {
                let mut hasher = DefaultHasher::new();
                parent.hash(&mut hasher);
                block.hash(&mut hasher);
                parent = hasher.finish();
                parent
            })
            .collect();
        Self {
            tokens: tokens as u64,
            hashes,
        }
    }

    /// The tokens the cache may serve for this prompt given `hit_blocks` leading blocks
    /// resident. As in vLLM, the last prompt token is always computed (its logits give the
    /// first output token), so a prompt of exactly `n` full blocks hits at most `n - 1`.
    pub(crate) fn cached_tokens(&self, hit_blocks: usize) -> u64 {
        let most = self.tokens.saturating_sub(1) / BLOCK_TOKENS;
        (hit_blocks as u64).min(most) * BLOCK_TOKENS
    }
}

/// The blocks of `tokens` tokens.
pub(crate) fn blocks_for(tokens: u64) -> u64 {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// The blocks a running sequence holds until it ends.
#[derive(Debug)]
pub(crate) struct Lease {
    /// Its prompt's full blocks, pinned.
    hashes: Vec<u64>,
    /// Blocks of its own: the prompt's partial block and the answer.
    private: usize,
}

/// One resident block.
#[derive(Debug)]
struct Block {
    /// Running sequences holding it; evictable at 0.
    pins: u32,
    /// When it was last unpinned: its key in [`KvCache::lru`].
    tick: u64,
}

/// The blocks of one server: resident prompt blocks by hash, unpinned ones in LRU order.
#[derive(Debug)]
pub(crate) struct KvCache {
    capacity: usize,
    blocks: HashMap<u64, Block>,
    /// The unpinned resident blocks, least recently used first.
    lru: BTreeMap<u64, u64>,
    /// Blocks held privately by running sequences.
    private: usize,
    tick: u64,
    evicted: u64,
}

impl KvCache {
    /// An empty cache of `capacity` blocks.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
            private: 0,
            tick: 0,
            evicted: 0,
        }
    }

    /// Capacity in blocks.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks held by running sequences (pinned and private): what vLLM reports as used,
    /// since its unpinned cached blocks count as free.
    pub(crate) fn in_use(&self) -> usize {
        self.blocks.len().saturating_sub(self.lru.len()) + self.private
    }

    /// Prompt blocks resident, pinned or not.
    pub(crate) fn resident(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks evicted since the start.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// How many leading blocks of `hashes` are resident.
    pub(crate) fn hit_blocks(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|hash| self.blocks.contains_key(hash))
            .count()
    }

    /// Leases `total_blocks` blocks to a sequence whose prompt has the full blocks `hashes`:
    /// resident ones are pinned and shared, the others are allocated (evicting the least
    /// recently used unpinned blocks as needed). `None` if that many blocks cannot be found
    /// now; nothing changes then.
    pub(crate) fn lease(&mut self, hashes: &[u64], total_blocks: usize) -> Option<Lease> {
        let mut resident = 0_usize;
        let mut resident_unpinned = 0_usize;
        for block in hashes.iter().filter_map(|hash| self.blocks.get(hash)) {
            resident += 1;
            if block.pins == 0 {
                resident_unpinned += 1;
            }
        }
        let needed = total_blocks.saturating_sub(resident);
        let available = self.free() + self.lru.len().saturating_sub(resident_unpinned);
        if needed > available {
            return None;
        }
        // Pin what is resident before making room, so that no block of this prompt is evicted.
        let mut fresh = Vec::with_capacity(hashes.len().saturating_sub(resident));
        for &hash in hashes {
            if self.blocks.contains_key(&hash) {
                self.pin(hash);
            } else {
                fresh.push(hash);
            }
        }
        for hash in fresh {
            if self.blocks.contains_key(&hash) {
                // The same block twice in one prompt: share it.
                self.pin(hash);
            } else {
                self.make_room(1);
                self.blocks.insert(hash, Block { pins: 1, tick: 0 });
            }
        }
        let private = total_blocks.saturating_sub(hashes.len());
        self.make_room(private);
        self.private += private;
        Some(Lease {
            hashes: hashes.to_vec(),
            private,
        })
    }

    /// Ends a lease: private blocks are freed, prompt blocks unpinned. The blocks of a prompt
    /// are unpinned last block first, so its tail is evicted before its head (as vLLM frees
    /// them).
    pub(crate) fn release(&mut self, lease: Lease) {
        for &hash in lease.hashes.iter().rev() {
            let Some(block) = self.blocks.get_mut(&hash) else {
                continue;
            };
            if block.pins == 0 {
                continue;
            }
            block.pins -= 1;
            if block.pins == 0 {
                self.tick += 1;
                block.tick = self.tick;
                self.lru.insert(self.tick, hash);
            }
        }
        self.private = self.private.saturating_sub(lease.private);
    }

    fn free(&self) -> usize {
        self.capacity
            .saturating_sub(self.blocks.len() + self.private)
    }

    fn pin(&mut self, hash: u64) {
        if let Some(block) = self.blocks.get_mut(&hash) {
            if block.pins == 0 {
                self.lru.remove(&block.tick);
            }
            block.pins = block.pins.saturating_add(1);
        }
    }

    /// Evicts least recently used unpinned blocks until `blocks` are free (or none is left to
    /// evict).
    fn make_room(&mut self, blocks: usize) {
        while self.free() < blocks {
            let Some((_, hash)) = self.lru.pop_first() else {
                return;
            };
            self.blocks.remove(&hash);
            self.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_four_bytes_per_token() {
        assert_eq!(Prompt::new("").tokens, 0);
        assert_eq!(Prompt::new("abc").tokens, 1);
        assert_eq!(Prompt::new("abcd").tokens, 1);
        assert_eq!(Prompt::new("abcde").tokens, 2);
        // "é" is two bytes: 3 × 2 = 6 bytes, 2 tokens.
        assert_eq!(Prompt::new("ééé").tokens, 2);
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        assert_eq!(Prompt::new(&"x".repeat(60)).hashes.len(), 0);
        // 61 bytes: 16 tokens, the last one partial, so one full block.
        assert_eq!(Prompt::new(&"x".repeat(61)).hashes.len(), 1);
        assert_eq!(Prompt::new(&"x".repeat(64)).hashes.len(), 1);
        assert_eq!(Prompt::new(&"x".repeat(200)).hashes.len(), 3);
    }

    #[test]
    fn hashes_are_chained() {
        let a = Prompt::new(&format!("{}{}", "a".repeat(64), "b".repeat(64)));
        let b = Prompt::new(&format!("{}{}", "c".repeat(64), "b".repeat(64)));
        let again = Prompt::new(&format!("{}{}", "a".repeat(64), "b".repeat(64)));
        assert_eq!(a, again);
        // Same bytes in block 1, different prefix: different hash.
        assert_ne!(a.hashes[1], b.hashes[1]);
        assert_ne!(a.hashes[0], b.hashes[0]);
    }

    #[test]
    fn the_last_token_is_never_a_hit() {
        let exact = Prompt::new(&"x".repeat(128));
        assert_eq!(exact.cached_tokens(2), 16);
        let longer = Prompt::new(&"x".repeat(130));
        assert_eq!(longer.cached_tokens(2), 32);
        assert_eq!(longer.cached_tokens(1), 16);
    }

    #[test]
    fn lease_pins_and_release_keeps_prompt_blocks() {
        let mut kv = KvCache::new(10);
        let prompt = Prompt::new(&"p".repeat(200)); // 50 tokens, 3 full blocks
        let lease = kv.lease(&prompt.hashes, 5).expect("room for 5 blocks");
        assert_eq!((kv.in_use(), kv.resident()), (5, 3));
        kv.release(lease);
        assert_eq!((kv.in_use(), kv.resident()), (0, 3));
        assert_eq!(kv.hit_blocks(&prompt.hashes), 3);
    }

    #[test]
    fn shared_blocks_are_counted_once() {
        let mut kv = KvCache::new(8);
        let prompt = Prompt::new(&"p".repeat(256)); // 4 full blocks
        let first = kv.lease(&prompt.hashes, 5).expect("room");
        let second = kv.lease(&prompt.hashes, 5).expect("shares 4, needs 1");
        assert_eq!(kv.in_use(), 6);
        assert!(kv.lease(&prompt.hashes, 7).is_none(), "needs 3, 2 free");
        kv.release(first);
        assert_eq!(kv.in_use(), 5, "still pinned by the second");
        kv.release(second);
        assert_eq!(kv.in_use(), 0);
    }

    #[test]
    fn evicts_least_recently_used_tail_first() {
        let mut kv = KvCache::new(4);
        let a = Prompt::new(&"a".repeat(128)); // 2 blocks
        let b = Prompt::new(&"b".repeat(128));
        let c = Prompt::new(&"c".repeat(64)); // 1 block
        for prompt in [&a, &b] {
            let lease = kv.lease(&prompt.hashes, 2).expect("room");
            kv.release(lease);
        }
        // Full; c needs one block: a's tail goes first.
        let lease = kv.lease(&c.hashes, 1).expect("evicts one");
        kv.release(lease);
        assert_eq!(kv.hit_blocks(&a.hashes), 1);
        assert_eq!(kv.hit_blocks(&b.hashes), 2);
        assert_eq!(kv.evicted(), 1);
    }

    #[test]
    fn pinned_blocks_are_not_evicted() {
        let mut kv = KvCache::new(3);
        let a = Prompt::new(&"a".repeat(128));
        let b = Prompt::new(&"b".repeat(128));
        let held = kv.lease(&a.hashes, 2).expect("room");
        assert!(
            kv.lease(&b.hashes, 2).is_none(),
            "a is pinned, one block free"
        );
        kv.release(held);
        assert!(kv.lease(&b.hashes, 2).is_some());
        assert_eq!(kv.resident(), 3);
    }
}
