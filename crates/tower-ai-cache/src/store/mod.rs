//! Where entries live: L1 in this process, L2 in Redis (feature `redis`).

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// How a recording ended, as the `e` field of its Redis stream says: stored,
/// ended but not stored, or broken off.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const END_STORED: &str = "1";
pub(crate) const END_UNSTORED: &str = "2";
pub(crate) const END_ABORTED: &str = "0";
