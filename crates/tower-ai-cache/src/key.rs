//! Cache keys: a BLAKE3 digest of the method, the path, the scope and the
//! canonical form of the request body.
//!
//! Every byte of the request that can change the answer is in the key: the
//! method, the path with its query, the configured `vary` headers, the scope
//! (whose answer this is) and the whole body. A JSON body is hashed in its
//! canonical form ([RFC 8785] style: object keys sorted by their UTF-16 code
//! units, no insignificant whitespace, numbers normalised so `1`, `1.0` and
//! `1e0` are one number), so key order and formatting don't split the cache,
//! while `model`, `messages`, `tools`, `temperature`, `seed`, `n`,
//! `response_format` and every other parameter do. Only the fields on an
//! explicit [`IgnoreList`] are left out (by default `user`, which names the
//! end user for abuse monitoring and doesn't change the answer).
//!
//! **Malformed JSON is keyed as bytes**: a body that doesn't parse (or isn't
//! JSON at all: a protobuf message, a form) is hashed as its raw bytes, in a
//! separate domain, so it can never collide with a canonical JSON body. It is
//! never a panic, and the upstream's answer to it (usually a `400`) is not
//! stored anyway.
//!
//! The key is a 256-bit digest; the request itself (the prompt, the API key)
//! never appears in a Redis key name or a log line.
//!
//! [RFC 8785]: https://www.rfc-editor.org/rfc/rfc8785

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use crate::canon::{Canon, utf16_cmp, write_number, write_string};

use http::{HeaderMap, HeaderName, Method};
use serde_json::Value;
use tower_ai_core::key::ClientKey;

/// The domain of every key digest; bump it when the layout changes.
const KEY_CONTEXT: &str = "tower-ai-cache 2025 request key v1";

/// The keyed-hash key derived from [`KEY_CONTEXT`], once.
static KEY_KEY: std::sync::LazyLock<[u8; 32]> =
    std::sync::LazyLock::new(|| blake3::derive_key(KEY_CONTEXT, b""));

/// The domain of the digest of a request's raw bytes (see [`Aliases`]).
static RAW_KEY: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(|| {
    blake3::derive_key("tower-ai-cache 2025 raw request alias v1", b"")
});

/// The largest body a key's buffer is made with room for at once.
const ROOM_FOR_BODY: usize = 16 << 10;

/// How many raw-body digests [`Aliases`] remembers.
const ALIASES: usize = 16_384;

/// Whose answer an entry is: one caller's, or everybody's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyScope {
    /// One caller (an API key, a session user, a peer address): nobody else
    /// ever sees the entry.
    Caller(ClientKey),
    /// Shared by every caller: only for routes whose answers hold no
    /// tenant's data, and only when configured explicitly.
    Public,
}

impl KeyScope {
    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Caller(key) => {
                let bytes = key.to_bytes();
                out.write_all(b"c")?;
                write_len(out, bytes.len())?;
                out.write_all(&bytes)
            }
            Self::Public => out.write_all(b"p"),
        }
    }

    /// Its stable byte form, the same in every process, into `hasher` (for
    /// the tenant tag).
    pub(crate) fn write_to(&self, hasher: &mut blake3::Hasher) {
        // Writing to a hasher can't fail.
        let _ = self.write(hasher);
    }
}

/// Request body fields left out of the key: top-level names (`user`) or
/// dotted paths into nested objects (`metadata.trace_id`).
///
/// Leave out only what can't change the answer. `stream_options` is *not*
/// ignored by default: `include_usage` adds a usage chunk to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreList {
    paths: Arc<[Box<[Box<str>]>]>,
}

impl Default for IgnoreList {
    /// `user` only.
    fn default() -> Self {
        Self::new(["user"])
    }
}

impl IgnoreList {
    /// Ignores these fields (top-level names or dotted paths).
    pub fn new<I, S>(fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let paths: Vec<Box<[Box<str>]>> = fields
            .into_iter()
            .filter(|f| !f.as_ref().is_empty())
            .map(|f| f.as_ref().split('.').map(Box::from).collect())
            .collect();
        Self {
            paths: paths.into(),
        }
    }

    /// Ignores nothing.
    pub fn none() -> Self {
        Self {
            paths: Arc::new([]),
        }
    }
}

/// A cache key: a 256-bit BLAKE3 digest of everything in a request that can
/// change its answer, and of its scope.
///
/// In it: the method, the path with its query, the configured `vary`
/// headers, the scope (whose answer this is) and the whole body. A JSON body
/// is hashed in its canonical form ([RFC 8785] style: object keys sorted by
/// their UTF-16 code units, no insignificant whitespace, numbers normalised
/// so `1`, `1.0` and `1e0` are one number), so key order and formatting
/// don't split the cache, while `model`, `messages`, `tools`, `temperature`,
/// `seed`, `n`, `response_format` and every other parameter, known or not,
/// do. Only the fields of an explicit [`IgnoreList`] are left out.
///
/// **Malformed JSON is keyed as bytes**: a body that doesn't parse (or isn't
/// JSON: a protobuf message, a form) is hashed as its raw bytes, in a domain
/// of its own, so it never collides with a JSON body; never a panic.
///
/// The request itself (the prompt, the API key) never appears in a Redis
/// key name or a log line: only this digest does.
///
/// [RFC 8785]: https://www.rfc-editor.org/rfc/rfc8785
///
/// Shown (`Display`) as 64 hex digits, the form
/// [`CacheHandle::invalidate_key`](crate::CacheHandle::invalidate_key) and the
/// `key` parameter of `Cache-Status` use.
///
/// # Example
/// ```
/// use http::Method;
/// use tower_ai_core::key::ClientKey;
/// use tower_ai_cache::{CacheKey, IgnoreList, KeyScope};
///
/// let tenant = KeyScope::Caller(ClientKey::digest("api-key", "sk-tenant-1"));
/// let ignore = IgnoreList::default(); // leaves out `user`
/// let key = |body: &str| {
///     CacheKey::for_request(&Method::POST, "/v1/chat/completions", body.as_bytes(), &tenant, &ignore)
/// };
///
/// let a = key(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
/// let b = key(r#"{ "messages": [ {"content":"hi", "role":"user"} ], "temperature": 0.0, "model": "m", "user": "u-7" }"#);
/// let c = key(r#"{"model":"m","temperature":0.2,"messages":[{"role":"user","content":"hi"}]}"#);
/// assert_eq!(a, b); // key order, whitespace, `0` vs `0.0`, an ignored field
/// assert_ne!(a, c); // a different temperature
///
/// let other = KeyScope::Caller(ClientKey::digest("api-key", "sk-tenant-2"));
/// let d = CacheKey::for_request(&Method::POST, "/v1/chat/completions",
///     br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#, &other, &ignore);
/// assert_ne!(a, d); // another tenant never shares an entry
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of a request with this method, path (with its query), body
    /// and scope, leaving out the fields in `ignore`.
    ///
    /// A body that parses as JSON is hashed in its canonical form; anything
    /// else as its bytes. Costs one parse of the body (for JSON) and one
    /// BLAKE3 pass; never panics.
    pub fn for_request(
        method: &Method,
        path_and_query: &str,
        body: &[u8],
        scope: &KeyScope,
        ignore: &IgnoreList,
    ) -> Self {
        KeyInput {
            method,
            path_and_query,
            vary: &[],
            headers: None,
            scope,
            ignore,
        }
        .digest(body)
        .0
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key from its raw digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads the 64 hex digits [`Display`](fmt::Display) writes.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0])?;
            let lo = hex_value(pair[1])?;
            out[i] = hi << 4 | lo;
        }
        Some(Self(out))
    }

    /// The first 8 hex digits, for logs.
    pub(crate) fn short(&self) -> String {
        let mut s = String::with_capacity(8);
        for b in &self.0[..4] {
            push_hex(&mut s, *b);
        }
        s
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn push_hex(s: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.push(char::from(HEX[usize::from(b >> 4)]));
    s.push(char::from(HEX[usize::from(b & 0xf)]));
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(64);
        for b in &self.0 {
            push_hex(&mut s, *b);
        }
        f.write_str(&s)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

/// Everything but the body that goes into a key.
pub(crate) struct KeyInput<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path_and_query: &'a str,
    pub(crate) vary: &'a [HeaderName],
    pub(crate) headers: Option<&'a HeaderMap>,
    pub(crate) scope: &'a KeyScope,
    pub(crate) ignore: &'a IgnoreList,
}

/// What the body said about itself while it was keyed.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyFacts {
    /// The JSON body's `model`, when it has one.
    pub(crate) model: Option<Arc<str>>,
    /// Whether the JSON body asks for a deterministic answer
    /// (`temperature` 0 or a `seed`).
    pub(crate) deterministic: bool,
    /// Whether the keyed body bounds the answer's length (`max_tokens`,
    /// `max_completion_tokens` or `max_output_tokens`), so an answer cut off
    /// at that bound is what the same request gets again.
    pub(crate) bounded: bool,
}

/// The key of a request whose head was written into `buf`, and what its
/// body says about itself.
fn digest_after(mut buf: Vec<u8>, body: &[u8], ignore: &IgnoreList) -> (CacheKey, BodyFacts) {
    buf.reserve(body.len());
    let facts = write_body(&mut buf, body, ignore);
    (
        CacheKey(*blake3::keyed_hash(&KEY_KEY, &buf).as_bytes()),
        facts,
    )
}

/// A digest of a request's head (as written) and its body's raw bytes:
/// equal for byte-equal requests only (a cryptographic hash, so never equal
/// by accident).
fn raw_digest(head: &[u8], body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(&RAW_KEY);
    hasher.update(&(head.len() as u64).to_le_bytes());
    hasher.update(head);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

impl KeyInput<'_> {
    /// The key, and what the body says about itself.
    pub(crate) fn digest(&self, body: &[u8]) -> (CacheKey, BodyFacts) {
        digest_after(self.head(body.len()), body, self.ignore)
    }

    /// The head's bytes, in a buffer with room for a body of up to
    /// [`ROOM_FOR_BODY`] after them. A larger body's room is made only when
    /// it is keyed, which a repeated body (found by its alias) never is. One
    /// buffer, hashed at once: many tiny hasher updates cost more than the
    /// copy.
    fn head(&self, body_len: usize) -> Vec<u8> {
        let room = if body_len <= ROOM_FOR_BODY {
            body_len
        } else {
            0
        };
        let mut buf = Vec::with_capacity(room + self.path_and_query.len() + 96);
        // Writing into a Vec never fails; each part is length-prefixed so
        // no two different requests write the same bytes.
        let _ = self.write_head(&mut buf);
        buf
    }

    fn write_head(&self, w: &mut impl Write) -> io::Result<()> {
        write_field(w, self.method.as_str().as_bytes())?;
        write_field(w, self.path_and_query.as_bytes())?;
        self.scope.write(w)?;
        write_len(w, self.vary.len())?;
        for name in self.vary {
            write_field(w, name.as_str().as_bytes())?;
            let values = self
                .headers
                .map(|h| h.get_all(name).iter().collect::<Vec<_>>())
                .unwrap_or_default();
            write_len(w, values.len())?;
            for v in values {
                write_field(w, v.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Remembers the keys of recently seen request bytes, so that a repeated
/// request (byte for byte, as a retrying client or a hot prompt sends it)
/// is keyed by one hash of its bytes instead of a JSON parse, a canonical
/// rewrite and a hash. The mapping is a pure function of the bytes, so it is
/// never stale; the map is bounded.
pub(crate) struct Aliases {
    map: quick_cache::sync::Cache<[u8; 32], (CacheKey, BodyFacts)>,
}

impl fmt::Debug for Aliases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aliases").finish_non_exhaustive()
    }
}

impl Aliases {
    pub(crate) fn new() -> Self {
        Self {
            map: quick_cache::sync::Cache::new(ALIASES),
        }
    }

    /// The key of a request, and what its body says about itself. The
    /// bytes are remembered only when `stored` says the key has an answer:
    /// a request that will be answered from the cache is worth the insert, a
    /// new prompt (a miss) isn't.
    pub(crate) fn key(
        &self,
        input: &KeyInput<'_>,
        body: &[u8],
        stored: impl FnOnce(&CacheKey) -> bool,
    ) -> (CacheKey, BodyFacts) {
        // An empty or tiny body is as cheap to key directly.
        if body.len() < 64 {
            return input.digest(body);
        }
        // The head is written once, for both digests.
        let head = input.head(body.len());
        let raw = raw_digest(&head, body);
        if let Some(known) = self.map.get(&raw) {
            return known;
        }
        let keyed = digest_after(head, body, input.ignore);
        if stored(&keyed.0) {
            self.map.insert(raw, keyed.clone());
        }
        keyed
    }
}

fn write_body(w: &mut impl Write, body: &[u8], ignore: &IgnoreList) -> BodyFacts {
    let parsed = if starts_like_json(body) {
        serde_json::from_slice::<Canon<'_>>(body).ok()
    } else {
        None
    };
    match parsed {
        Some(mut value) => {
            for path in ignore.paths.iter() {
                value.remove_path(path);
            }
            let facts = facts_of(&value);
            let _ = w.write_all(b"J");
            let _ = value.write(w);
            facts
        }
        None => {
            let _ = w.write_all(b"R");
            let _ = write_field(w, body);
            BodyFacts::default()
        }
    }
}

/// Whether the first non-whitespace byte could start a JSON text (saves a
/// failed parse of a binary body).
fn starts_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| {
            matches!(
                b,
                b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
            )
        })
}

fn facts_of(value: &Canon<'_>) -> BodyFacts {
    if !matches!(value, Canon::Object(_)) {
        return BodyFacts::default();
    }
    let model = value.get("model").and_then(Canon::as_str).map(Arc::from);
    let zero_temperature = value
        .get("temperature")
        .and_then(Canon::as_number)
        .and_then(serde_json::Number::as_f64)
        .is_some_and(|t| t == 0.0);
    let seeded = value.get("seed").is_some_and(|s| *s != Canon::Null);
    let bounded = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .any(|field| {
            value
                .get(field)
                .and_then(Canon::as_number)
                .is_some_and(serde_json::Number::is_u64)
        });
    BodyFacts {
        model,
        deterministic: zero_temperature || seeded,
        bounded,
    }
}

fn write_len(w: &mut impl Write, len: usize) -> io::Result<()> {
    w.write_all(&(len as u64).to_le_bytes())
}

fn write_field(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    write_len(w, bytes.len())?;
    w.write_all(bytes)
}

/// Writes `value` as canonical JSON: object members sorted by the UTF-16
/// code units of their names (RFC 8785 §3.2.3), no whitespace, strings
/// escaped as `JSON.stringify` does, numbers normalised.
pub(crate) fn write_canonical(w: &mut impl Write, value: &Value) -> io::Result<()> {
    match value {
        Value::Null => w.write_all(b"null"),
        Value::Bool(true) => w.write_all(b"true"),
        Value::Bool(false) => w.write_all(b"false"),
        Value::Number(n) => write_number(w, n),
        Value::String(s) => write_string(w, s),
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_canonical(w, item)?;
            }
            w.write_all(b"]")
        }
        Value::Object(map) => {
            w.write_all(b"{")?;
            // serde_json's map iterates sorted by bytes unless
            // `preserve_order` is on somewhere in the build; for ASCII names
            // that is the UTF-16 order already. Otherwise, sort.
            if map.keys().all(|k| k.is_ascii()) && map.keys().is_sorted() {
                write_members(w, map.iter())?;
            } else {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| utf16_cmp(a.0, b.0));
                write_members(w, members.into_iter())?;
            }
            w.write_all(b"}")
        }
    }
}

fn write_members<'a>(
    w: &mut impl Write,
    members: impl Iterator<Item = (&'a String, &'a Value)>,
) -> io::Result<()> {
    for (i, (name, item)) in members.enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_string(w, name)?;
        w.write_all(b":")?;
        write_canonical(w, item)?;
    }
    Ok(())
}

/// Canonical JSON of `value` as a string (see [`write_canonical`]).
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    let _ = write_canonical(&mut out, value);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        serde_json::from_str::<Value>(text)
            .map(|v| canonical_json(&v))
            .unwrap_or_default()
    }

    #[test]
    fn canonical_form() {
        assert_eq!(
            canon(r#" { "b" : [1, 2.0, -0.0, 1e2, 0.5, 1E-7], "a": {"y":null,"x":true} } "#),
            r#"{"a":{"x":true,"y":null},"b":[1,2,0,100,0.5,0.0000001]}"#
        );
        assert_eq!(canon(r#""\u00e9\n\u001f\"""#), "\"é\\n\\u001f\\\"\"");
        // UTF-16 order: U+1F600 (surrogates D83D…) sorts before U+FF61.
        assert_eq!(
            canon("{\"\u{ff61}\":1,\"\u{1f600}\":2}"),
            "{\"\u{1f600}\":2,\"\u{ff61}\":1}"
        );
        assert_eq!(canon("18446744073709551615"), "18446744073709551615");
        assert_eq!(canon("-9223372036854775808"), "-9223372036854775808");
    }

    #[test]
    fn hex_round_trip() {
        let key = CacheKey::for_request(
            &Method::GET,
            "/",
            b"",
            &KeyScope::Public,
            &IgnoreList::none(),
        );
        let hex = key.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(CacheKey::from_hex(&hex), Some(key));
        assert_eq!(CacheKey::from_hex(&hex.to_uppercase()), Some(key));
        assert_eq!(CacheKey::from_hex("zz"), None);
        assert_eq!(CacheKey::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn ignore_paths() {
        let ignore = IgnoreList::new(["user", "metadata.trace"]);
        let key = |body: &str| {
            CacheKey::for_request(
                &Method::POST,
                "/",
                body.as_bytes(),
                &KeyScope::Public,
                &ignore,
            )
        };
        assert_eq!(
            key(r#"{"a":1,"user":"x","metadata":{"trace":"1","keep":2}}"#),
            key(r#"{"a":1,"metadata":{"keep":2,"trace":"2"}}"#)
        );
        assert_ne!(
            key(r#"{"a":1,"metadata":{"keep":2}}"#),
            key(r#"{"a":1,"metadata":{"keep":3}}"#)
        );
    }

    #[test]
    fn aliases_give_the_canonical_key() {
        let aliases = Aliases::new();
        let body = br#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"a prompt of more than sixty-four bytes"}]}"#;
        let tenant = |name: &str| KeyScope::Caller(ClientKey::digest("api-key", name));
        let (a, b) = (tenant("a"), tenant("b"));
        let ignore = IgnoreList::default();
        let input = |scope| KeyInput {
            method: &Method::POST,
            path_and_query: "/v1/chat/completions",
            vary: &[],
            headers: None,
            scope,
            ignore: &ignore,
        };
        let direct = input(&a).digest(body);
        // A key without an answer isn't remembered.
        assert_eq!(aliases.key(&input(&a), body, |_| false).0, direct.0);
        assert!(
            !aliases
                .map
                .contains_key(&raw_digest(&input(&a).head(0), body))
        );
        for _ in 0..2 {
            let aliased = aliases.key(&input(&a), body, |_| true);
            assert_eq!(aliased.0, direct.0);
            assert_eq!(aliased.1.model.as_deref(), Some("m"));
            assert!(aliased.1.deterministic);
        }
        // The same bytes under another scope are another key.
        assert_ne!(aliases.key(&input(&b), body, |_| true).0, direct.0);
        assert_eq!(
            aliases.key(&input(&b), body, |_| true).0,
            input(&b).digest(body).0
        );
    }

    #[test]
    fn raw_and_json_domains_differ() {
        let key = |body: &[u8]| {
            CacheKey::for_request(
                &Method::POST,
                "/",
                body,
                &KeyScope::Public,
                &IgnoreList::none(),
            )
        };
        assert_ne!(key(b"{\"a\":1"), key(b"{\"a\":1}"));
        assert_eq!(key(b"\xff\x00binary"), key(b"\xff\x00binary"));
        assert_ne!(key(b"\xff\x00binary"), key(b"\xff\x00binarz"));
    }
}

#[cfg(test)]
mod canon_tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::canon::Canon;

    /// The canonical form of `text` both ways: through `Value`, and here.
    fn both(text: &str) -> (String, String) {
        let value: Value = serde_json::from_str(text).expect("JSON");
        let canon: Canon<'_> = serde_json::from_str(text).expect("JSON");
        let mut out = Vec::new();
        canon.write(&mut out).expect("written");
        (
            canonical_json(&value),
            String::from_utf8(out).expect("UTF-8"),
        )
    }

    #[test]
    fn writes_what_the_value_form_writes() {
        for text in [
            r#"{"b":1,"a":[1,2.0,1e0,-3,0.5,null,true,false],"c":{"z":"\n\"é","y":{}}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"a \u00e9 \ud83d\ude00 \\ line\nbreak"}]}"#,
            r#"{"a":1,"a":2,"b":{"x":1,"x":[3]}}"#,
            r#"{"é":1,"e":2,"😀":3,"\uffff":4,"Z":5}"#,
            r#"[1.5e300,-0.0,123456789012345678901,18446744073709551615,-9223372036854775808]"#,
            r#""just a string""#,
            "  {\n \"spaced\" :\t[ ]\n} ",
        ] {
            let (value, canon) = both(text);
            assert_eq!(canon, value, "{text}");
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-cé😀]{0,3}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_document_writes_alike(value in json()) {
            let text = serde_json::to_string(&value).expect("serialised");
            let (through_value, canon) = both(&text);
            prop_assert_eq!(canon, through_value);
        }
    }
}
