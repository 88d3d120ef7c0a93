//! The Lua scripts of L2, each run atomically on the Cluster slot of one
//! cache key's names (see the key table in `store::redis`).

/// `GET` the value and try to take the lock; a new leader starts a fresh
/// stream.
pub(super) const LOCK: &str = r"
local v = redis.call('GET', KEYS[1])
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3])
  return {1, v}
end
return {0, v}
";

/// Stores the value; the lock's owner also releases it and ends its stream.
pub(super) const STORE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return 1
";

/// Ends the owner's stream without a value and releases its lock.
pub(super) const END: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
";

/// Appends to the owner's stream and renews its lock; 0 once the lock is
/// someone else's.
pub(super) const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Whether the value and the lock exist.
pub(super) const PROBE: &str = r"
return {redis.call('EXISTS', KEYS[1]), redis.call('EXISTS', KEYS[2])}
";

/// Adds an entry key to a tag's set, keeping the set as long as its
/// longest-lived entry.
pub(super) const TAG: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// Takes up to ARGV[1] members out of a tag's set.
pub(super) const TAKE: &str = r"
return redis.call('SPOP', KEYS[1], ARGV[1])
";
