//! Tags: groups of entries that are invalidated together.
//!
//! Every entry carries three tags: its `model` (from the JSON body, when it
//! names one), its tenant (the scope it was stored under) and its route.
//! [`CacheHandle::invalidate_tag`](crate::CacheHandle::invalidate_tag) drops
//! every entry of a tag, in this replica's L1, in Redis and (through Redis
//! pub/sub) in every other replica's L1.

use std::fmt;

use tower_ai_core::key::ClientKey;

use crate::key::KeyScope;

const TAG_CONTEXT: &str = "tower-ai-cache 2025 tag v1";

/// A tag's 128-bit digest: what entries and Redis key names carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TagId([u8; 16]);

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl TagId {
    fn of(kind: &str, value: &[u8]) -> Self {
        let mut hasher = Self::hasher(kind);
        hasher.update(value);
        Self::finish(&hasher)
    }

    /// A hasher past the tag's kind, ready for its value: a copy of one
    /// keyed once, not a new key derived from the context on every tag.
    fn hasher(kind: &str) -> blake3::Hasher {
        static DERIVED: std::sync::LazyLock<blake3::Hasher> =
            std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key(TAG_CONTEXT));
        let mut hasher = DERIVED.clone();
        hasher.update(kind.as_bytes());
        hasher.update(&[0]);
        hasher
    }

    fn finish(hasher: &blake3::Hasher) -> Self {
        let mut out = [0u8; 16];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Self(out)
    }

    /// [`CacheTag::model`]'s id, without its label.
    pub(crate) fn model(name: &str) -> Self {
        Self::of("model", name.as_bytes())
    }

    /// [`CacheTag::scope`]'s id, without its label.
    pub(crate) fn scope(scope: &KeyScope) -> Self {
        let mut hasher = Self::hasher("tenant");
        scope.write_to(&mut hasher);
        Self::finish(&hasher)
    }

    pub(crate) const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub(crate) const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in &self.0 {
            crate::key::push_hex(&mut s, *b);
        }
        s
    }

    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        let mut padded = String::with_capacity(64);
        padded.push_str(hex);
        padded.push_str(&"0".repeat(32));
        let full = crate::CacheKey::from_hex(&padded)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(&full.as_bytes()[..16]);
        Some(Self(out))
    }
}

impl fmt::Debug for TagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagId({})", &self.hex()[..8])
    }
}

/// A group of entries to invalidate together: every entry carries its
/// route's tag, its tenant's (the scope it was stored under) and its
/// model's (from the JSON body's `model`).
///
/// # Example
/// ```
/// use tower_ai_core::key::ClientKey;
/// use tower_ai_cache::CacheTag;
///
/// assert_eq!(CacheTag::parse("model:gpt-4o-mini"), Some(CacheTag::model("gpt-4o-mini")));
/// assert_eq!(CacheTag::parse("route:chat"), Some(CacheTag::route("chat")));
/// assert_eq!(CacheTag::parse("nonsense"), None);
/// let tenant = CacheTag::tenant(&ClientKey::digest("api-key", "sk-1"));
/// assert!(!tenant.to_string().contains("sk-1"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheTag {
    id: TagId,
    label: Box<str>,
}

impl CacheTag {
    /// Every entry whose request named this `model`.
    pub fn model(name: &str) -> Self {
        Self {
            id: TagId::model(name),
            label: format!("model:{name}").into_boxed_str(),
        }
    }

    /// Every entry stored for this caller (the scope's key, e.g. the digest
    /// of an API key, as [`KeyExtractor`](tower_ai_core::key::KeyExtractor)s
    /// make it).
    pub fn tenant(key: &ClientKey) -> Self {
        Self::scope(&KeyScope::Caller(key.clone()))
    }

    /// Every entry stored under the public scope.
    pub fn public() -> Self {
        Self::scope(&KeyScope::Public)
    }

    pub(crate) fn scope(scope: &KeyScope) -> Self {
        let label = match scope {
            KeyScope::Caller(key) => format!("tenant:{key}"),
            KeyScope::Public => "tenant:public".to_owned(),
        };
        Self {
            id: TagId::scope(scope),
            label: label.into_boxed_str(),
        }
    }

    /// Every entry stored through the [`Route`](crate::Route) of this name.
    pub fn route(name: &str) -> Self {
        Self {
            id: TagId::of("route", name.as_bytes()),
            label: format!("route:{name}").into_boxed_str(),
        }
    }

    /// Reads `model:NAME` or `route:NAME` (tenants are named by their
    /// [`ClientKey`], see [`CacheTag::tenant`]).
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "model" => Some(Self::model(name)),
            "route" => Some(Self::route(name)),
            _ => None,
        }
    }

    pub(crate) fn id(&self) -> TagId {
        self.id
    }
}

impl fmt::Display for CacheTag {
    /// `model:NAME`, `route:NAME` or `tenant:…` (a tenant as its key's
    /// log-safe form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl fmt::Debug for CacheTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheTag({})", self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_hex_round_trips() {
        let a = CacheTag::model("x");
        let b = CacheTag::route("x");
        assert_ne!(a.id(), b.id());
        assert_eq!(TagId::from_hex(&a.id().hex()), Some(a.id()));
        assert_eq!(TagId::from_hex("xyz"), None);
        assert_ne!(
            CacheTag::public().id(),
            CacheTag::tenant(&ClientKey::global()).id()
        );
    }

    /// The ids are what other replicas and Redis hold: the digest of the
    /// context, the kind, a zero and the value's stable bytes, as ever.
    #[test]
    fn ids_are_the_digests_every_replica_makes() {
        let digest = |kind: &str, value: &[u8]| {
            let mut hasher = blake3::Hasher::new_derive_key(TAG_CONTEXT);
            hasher.update(kind.as_bytes());
            hasher.update(&[0]);
            hasher.update(value);
            let mut out = [0u8; 16];
            out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
            TagId(out)
        };
        assert_eq!(TagId::model("gpt-4o-mini"), digest("model", b"gpt-4o-mini"));
        assert_eq!(CacheTag::model("m").id(), digest("model", b"m"));
        assert_eq!(CacheTag::route("chat").id(), digest("route", b"chat"));
        assert_eq!(TagId::scope(&KeyScope::Public), digest("tenant", b"p"));
        let key = ClientKey::digest("api-key", "sk-1");
        let stable = key.to_bytes();
        let mut caller = b"c".to_vec();
        caller.extend_from_slice(&(stable.len() as u64).to_le_bytes());
        caller.extend_from_slice(&stable);
        assert_eq!(
            TagId::scope(&KeyScope::Caller(key.clone())),
            digest("tenant", &caller)
        );
        assert_eq!(CacheTag::tenant(&key).id(), digest("tenant", &caller));
    }
}
