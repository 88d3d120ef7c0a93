use std::fmt;
use std::sync::Arc;

/// A Cluster hash tag built from a digest, never from raw input.
///
/// Every key of one decision (one client's buckets, one cache entry and its
/// lock, one session's fields) carries the same tag, so a script that touches
/// them all runs on one Cluster node. The tag is a 128-bit BLAKE3 digest in
/// hex: user input (an API key, a prompt, an IP address) never appears in a
/// key name, and can't inject `{`, `}` or `:` into one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tag(Box<str>);

impl Tag {
    /// The tag of `input`.
    pub fn digest(input: impl AsRef<[u8]>) -> Self {
        let hash = blake3::hash(input.as_ref());
        let mut hex = String::with_capacity(32);
        for b in &hash.as_bytes()[..16] {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        Self(hex.into_boxed_str())
    }

    /// A tag chosen by the application (a policy or a breaker name). It must
    /// not come from a request: it is used as given, with `{`, `}` and `:`
    /// replaced by `_`.
    pub fn fixed(name: &str) -> Self {
        Self(
            name.chars()
                .map(|c| if matches!(c, '{' | '}' | ':') { '_' } else { c })
                .collect::<String>()
                .into_boxed_str(),
        )
    }

    /// The tag's text, without braces.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Names keys as `{prefix}:{component}:{{tag}}:{suffix}`.
///
/// # Example
/// ```
/// use tower_ai_core::redis::{KeySpace, Tag};
///
/// let keys = KeySpace::new("myapp", "ratelimit");
/// let tag = Tag::fixed("tenant-7");
/// assert_eq!(keys.key(&tag, "rpm"), "myapp:ratelimit:{tenant-7}:rpm");
/// assert_eq!(keys.key(&tag, ""), "myapp:ratelimit:{tenant-7}");
/// ```
#[derive(Debug, Clone)]
pub struct KeySpace {
    head: Arc<str>,
}

impl KeySpace {
    /// Keys under `prefix` (the application's, e.g. `"tower-ai"`) for one
    /// component (e.g. `"cache"`).
    pub fn new(prefix: &str, component: &str) -> Self {
        Self {
            head: format!("{prefix}:{component}:").into(),
        }
    }

    /// The key for `tag` and `suffix` (no suffix when it is empty).
    pub fn key(&self, tag: &Tag, suffix: &str) -> String {
        let mut key =
            String::with_capacity(self.head.len() + tag.as_str().len() + suffix.len() + 3);
        key.push_str(&self.head);
        key.push('{');
        key.push_str(tag.as_str());
        key.push('}');
        if !suffix.is_empty() {
            key.push(':');
            key.push_str(suffix);
        }
        key
    }

    /// The pattern that matches every key of this space (for `SCAN MATCH`).
    pub fn pattern(&self) -> String {
        format!("{}*", self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_hide_the_input_and_keep_braces_out() {
        let tag = Tag::digest("sk-secret}{:");
        assert_eq!(tag.as_str().len(), 32);
        assert!(tag.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(tag, Tag::digest("sk-secret}{:"));
        assert_ne!(tag, Tag::digest("sk-secret"));
        assert_eq!(Tag::fixed("a{b}:c").as_str(), "a_b__c");
    }
}
