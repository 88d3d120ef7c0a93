//! Who is calling: the [`KeyExtractor`] trait and its built-ins.
//!
//! The rate limiter counts per [`ClientKey`] and the cache scopes its entries
//! by one, so both agree on who a caller is. A key is small and fixed-size:
//! an IP address (IPv6 grouped by prefix, so one host can't mint a million
//! keys), a 128-bit digest of a secret or of any request-chosen value (an API
//! key is never kept or stored in the clear), the one global key, or a
//! composite of these. Making one allocates nothing, except for composites.
//!
//! | extractor | key |
//! |---|---|
//! | [`PeerIp`] | the connection's peer address (`SocketAddr` or axum's `ConnectInfo<SocketAddr>` extension) |
//! | [`ForwardedIp`] | the client address behind a configured number of trusted proxies (`X-Forwarded-For` or `Forwarded`, read from the right) |
//! | [`ApiKey`] | `Authorization: Bearer …`, else `X-API-Key` (digested) |
//! | [`Header`] | any named header (digested) |
//! | [`Extension`] | a value an earlier layer put in the request's extensions (e.g. a session's user id) |
//! | [`Global`] | one key for everybody |
//! | `(A, B)`, `(A, B, C)` | a composite: every part must be present |
//! | [`KeyExtractorExt::or`] | the first extractor that finds a key |
//! | [`from_fn`] | a closure over the request head |
//!
//! # Example
//! ```
//! use std::net::SocketAddr;
//! use http::Request;
//! use tower_ai_core::key::{ApiKey, KeyExtractor, KeyExtractorExt, PeerIp};
//!
//! // The API key when there is one, else the peer's address.
//! let who = ApiKey::new().or(PeerIp::new());
//!
//! let mut req = Request::new(());
//! req.extensions_mut().insert(SocketAddr::from(([203, 0, 113, 9], 4711)));
//! assert_eq!(who.extract(&req).unwrap().to_string(), "ip:203.0.113.9");
//!
//! let req = Request::builder().header("authorization", "Bearer sk-1").body(()).unwrap();
//! let key = who.extract(&req).unwrap();
//! assert!(key.to_string().starts_with("digest:"));
//! assert!(!key.to_string().contains("sk-1"));
//! ```

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::{AUTHORIZATION, HeaderName};
use http::{Extensions, HeaderMap, Method, Request, Uri};

/// Longest header value read for a key; longer values find no key.
const MAX_VALUE_LEN: usize = 4096;

/// Who a request comes from, as a layer counts and scopes it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Global,
    Ip(IpAddr),
    Digest([u8; 16]),
    Composite(Arc<[ClientKey]>),
}

impl ClientKey {
    /// The key shared by every caller.
    pub const fn global() -> Self {
        Self(Repr::Global)
    }

    /// An IP address as it is (see [`ClientKey::ip_grouped`]).
    pub const fn ip(ip: IpAddr) -> Self {
        Self(Repr::Ip(ip))
    }

    /// An IP address, IPv6 cut to its first `v6_prefix` bits (a host gets a
    /// whole /64 from its provider, so counting single addresses would let
    /// it mint keys without limit). IPv4-mapped IPv6 addresses count as IPv4.
    pub fn ip_grouped(ip: IpAddr, v6_prefix: u8) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u32::from(v6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            },
            v4 => v4,
        };
        Self(Repr::Ip(ip))
    }

    /// The 128-bit BLAKE3 digest of `value`, domain-separated by `kind` so
    /// that the same bytes in an API key and in a header are different keys.
    pub fn digest(kind: &str, value: impl AsRef<[u8]>) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(kind.as_bytes());
        hasher.update(&[0]);
        hasher.update(value.as_ref());
        let mut out = [0u8; 16];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Self(Repr::Digest(out))
    }

    /// A key made of several (e.g. a tenant and a route).
    pub fn composite(parts: impl IntoIterator<Item = ClientKey>) -> Self {
        Self(Repr::Composite(parts.into_iter().collect()))
    }

    /// The IP address, when this is an IP key.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self.0 {
            Repr::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// A stable byte encoding, the same in every process: what a store
    /// digests to name this key's records.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        self.encode(&mut out);
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Repr::Global => out.push(b'g'),
            Repr::Ip(IpAddr::V4(v4)) => {
                out.push(b'4');
                out.extend_from_slice(&v4.octets());
            }
            Repr::Ip(IpAddr::V6(v6)) => {
                out.push(b'6');
                out.extend_from_slice(&v6.octets());
            }
            Repr::Digest(d) => {
                out.push(b'd');
                out.extend_from_slice(d);
            }
            Repr::Composite(parts) => {
                out.push(b'c');
                out.extend_from_slice(&(parts.len() as u32).to_be_bytes());
                for part in parts.iter() {
                    part.encode(out);
                }
            }
        }
    }
}

impl fmt::Display for ClientKey {
    /// A form safe for logs: IP keys show the address, digests their first
    /// 8 hex digits; no secret is ever shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("global"),
            Repr::Ip(ip) => write!(f, "ip:{ip}"),
            Repr::Digest(d) => {
                f.write_str("digest:")?;
                for b in &d[..4] {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Repr::Composite(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("+")?;
                    }
                    write!(f, "{part}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

/// A caller's plan tier (e.g. `"free"`, `"pro"`), put in the request's
/// extensions by an earlier layer (the session, an auth layer) for the layers
/// after it: the rate limiter picks its policies by tier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tier(pub Arc<str>);

impl Tier {
    /// A tier of this name.
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// The tier's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The parts of a request a key can come from (never the body).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions set by the server and earlier layers.
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// Finds the [`ClientKey`] of a request, from its head only.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key, or `None` when the request carries none (the layer then
    /// applies its configured outcome for keyless requests).
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey>;

    /// The key of `req`.
    fn extract<B>(&self, req: &Request<B>) -> Option<ClientKey> {
        self.extract_head(RequestHead::of(req))
    }
}

impl<K: KeyExtractor + ?Sized> KeyExtractor for Arc<K> {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        (**self).extract_head(head)
    }
}

/// Combinators for every [`KeyExtractor`].
pub trait KeyExtractorExt: KeyExtractor + Sized {
    /// This extractor's key, or else `other`'s.
    fn or<O: KeyExtractor>(self, other: O) -> Or<Self, O> {
        Or(self, other)
    }
}

impl<K: KeyExtractor> KeyExtractorExt for K {}

/// The first of two extractors that finds a key. See [`KeyExtractorExt::or`].
#[derive(Debug, Clone)]
pub struct Or<A, B>(A, B);

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for Or<A, B> {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        self.0
            .extract_head(head)
            .or_else(|| self.1.extract_head(head))
    }
}

impl<A: KeyExtractor, B: KeyExtractor> KeyExtractor for (A, B) {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        Some(ClientKey::composite([
            self.0.extract_head(head)?,
            self.1.extract_head(head)?,
        ]))
    }
}

impl<A: KeyExtractor, B: KeyExtractor, C: KeyExtractor> KeyExtractor for (A, B, C) {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        Some(ClientKey::composite([
            self.0.extract_head(head)?,
            self.1.extract_head(head)?,
            self.2.extract_head(head)?,
        ]))
    }
}

/// An extractor from a closure over the request head. See [`from_fn`].
#[derive(Clone)]
pub struct FromFn<F>(F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

/// An extractor from a closure over the request head.
pub fn from_fn<F>(f: F) -> FromFn<F>
where
    F: Fn(RequestHead<'_>) -> Option<ClientKey> + Send + Sync + 'static,
{
    FromFn(f)
}

impl<F> KeyExtractor for FromFn<F>
where
    F: Fn(RequestHead<'_>) -> Option<ClientKey> + Send + Sync + 'static,
{
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        (self.0)(head)
    }
}

/// One key for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract_head(&self, _head: RequestHead<'_>) -> Option<ClientKey> {
        Some(ClientKey::global())
    }
}

/// The peer's IP address, from the connection.
///
/// Read from a `SocketAddr` request extension (set it in a hyper or tonic
/// server's accept loop) or, with the `axum` feature, axum's
/// `ConnectInfo<SocketAddr>` (`into_make_service_with_connect_info`). IPv6
/// addresses are grouped by prefix, /64 by default.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    v6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerIp {
    /// IPv6 grouped by /64.
    pub const fn new() -> Self {
        Self { v6_prefix: 64 }
    }

    /// Groups IPv6 addresses by their first `bits` bits (128: each address
    /// alone).
    #[must_use]
    pub const fn v6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = if bits > 128 { 128 } else { bits };
        self
    }
}

/// The connection's peer address, from the request's extensions.
pub fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(addr) = extensions.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    None
}

impl KeyExtractor for PeerIp {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        peer_addr(head.extensions).map(|a| ClientKey::ip_grouped(a.ip(), self.v6_prefix))
    }
}

/// The client's IP address behind a known number of trusted proxies.
///
/// Each proxy appends the address it received the request from to
/// `X-Forwarded-For` (or a `for=` element to `Forwarded`), so with `n`
/// trusted proxies in front of the service, the client is the `n`-th entry
/// from the **right**: everything left of it was written by the client and
/// can be forged. A list shorter than `n` (a request that came around the
/// proxies) or an entry that isn't an address finds no key. With `n = 0`
/// the headers are ignored and the peer address is used.
///
/// ```
/// use std::net::SocketAddr;
/// use http::Request;
/// use tower_ai_core::key::{ForwardedIp, KeyExtractor};
///
/// let one_proxy = ForwardedIp::x_forwarded_for(1);
/// let mut req = Request::builder()
///     .header("x-forwarded-for", "6.6.6.6, 198.51.100.7") // 6.6.6.6 is forged
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(SocketAddr::from(([10, 0, 0, 2], 5000))); // the proxy
/// assert_eq!(one_proxy.extract(&req).unwrap().to_string(), "ip:198.51.100.7");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ForwardedIp {
    hops: usize,
    header: ForwardedHeader,
    v6_prefix: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

impl ForwardedIp {
    /// Reads `X-Forwarded-For` behind `trusted_proxies` proxies.
    pub const fn x_forwarded_for(trusted_proxies: usize) -> Self {
        Self {
            hops: trusted_proxies,
            header: ForwardedHeader::XForwardedFor,
            v6_prefix: 64,
        }
    }

    /// Reads the standard `Forwarded` header (RFC 7239) behind
    /// `trusted_proxies` proxies.
    pub const fn forwarded(trusted_proxies: usize) -> Self {
        Self {
            hops: trusted_proxies,
            header: ForwardedHeader::Forwarded,
            v6_prefix: 64,
        }
    }

    /// Groups IPv6 addresses by their first `bits` bits.
    #[must_use]
    pub const fn v6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = if bits > 128 { 128 } else { bits };
        self
    }

    fn client_ip(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // Every instance of the header, in order, as one list.
        let mut entries: Vec<&str> = Vec::new();
        for value in headers.get_all(name) {
            let value = value.to_str().ok()?;
            if value.len() > MAX_VALUE_LEN {
                return None;
            }
            entries.extend(value.split(',').map(str::trim));
        }
        let index = entries.len().checked_sub(self.hops)?;
        let entry = entries.get(index)?;
        match self.header {
            ForwardedHeader::XForwardedFor => parse_addr(entry),
            ForwardedHeader::Forwarded => entry
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_addr(v.trim().trim_matches('"'))),
        }
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    s.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

impl KeyExtractor for ForwardedIp {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        let ip = if self.hops == 0 {
            peer_addr(head.extensions)?.ip()
        } else {
            self.client_ip(head.headers)?
        };
        Some(ClientKey::ip_grouped(ip, self.v6_prefix))
    }
}

/// The caller's API key: `Authorization: Bearer <key>`, else `X-API-Key`.
///
/// The key is digested at once; it is never kept, logged or stored in the
/// clear. Empty values, other authorization schemes and values over 4 KiB
/// find no key.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiKey;

impl ApiKey {
    /// The extractor.
    pub const fn new() -> Self {
        Self
    }
}

impl KeyExtractor for ApiKey {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        let bearer = head.headers.get(AUTHORIZATION).and_then(|v| {
            let v = v.as_bytes();
            let scheme = v.get(..7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| v[7..].trim_ascii())
        });
        let key = bearer
            .filter(|k| !k.is_empty())
            .or_else(|| {
                head.headers
                    .get("x-api-key")
                    .map(|v| v.as_bytes().trim_ascii())
            })
            .filter(|k| !k.is_empty() && k.len() <= MAX_VALUE_LEN)?;
        Some(ClientKey::digest("api-key", key))
    }
}

/// The value of a named header, digested.
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Keys by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for Header {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        let value = head.headers.get(&self.name)?.as_bytes();
        (!value.is_empty() && value.len() <= MAX_VALUE_LEN)
            .then(|| ClientKey::digest(self.name.as_str(), value))
    }
}

/// A value of type `T` that an earlier layer put in the request's extensions
/// (e.g. the session's user id), digested.
pub struct Extension<T> {
    _value: PhantomData<fn() -> T>,
}

impl<T> Extension<T> {
    /// Keys by the extension of type `T`.
    pub const fn new() -> Self {
        Self {
            _value: PhantomData,
        }
    }
}

impl<T> Default for Extension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Extension<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Extension<T> {}

impl<T> fmt::Debug for Extension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extension<{}>", std::any::type_name::<T>())
    }
}

impl<T> KeyExtractor for Extension<T>
where
    T: AsRef<[u8]> + Send + Sync + 'static,
{
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        let value = head.extensions.get::<T>()?.as_ref();
        (!value.is_empty()).then(|| ClientKey::digest(std::any::type_name::<T>(), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &[u8])], peer: Option<SocketAddr>) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap_or_default();
        if let Some(p) = peer {
            r.extensions_mut().insert(p);
        }
        r
    }

    fn peer() -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, 1], 1234)))
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::V4([0; 4].into()));
        let b: IpAddr = "2001:db8:1:2:bbbb::2"
            .parse()
            .unwrap_or(IpAddr::V4([0; 4].into()));
        assert_eq!(ClientKey::ip_grouped(a, 64), ClientKey::ip_grouped(b, 64));
        assert_ne!(ClientKey::ip_grouped(a, 128), ClientKey::ip_grouped(b, 128));
        assert_eq!(
            ClientKey::ip_grouped(a, 64).to_string(),
            "ip:2001:db8:1:2::"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1"
            .parse()
            .unwrap_or(IpAddr::V4([0; 4].into()));
        assert_eq!(
            ClientKey::ip_grouped(mapped, 64).to_string(),
            "ip:192.0.2.1"
        );
        assert_eq!(
            ClientKey::ip_grouped(a, 0),
            ClientKey::ip_grouped(b, 0),
            "a zero prefix groups everything"
        );
    }

    #[test]
    fn forwarded_for_reads_from_the_right() {
        let xff = [("x-forwarded-for", &b"1.1.1.1, 2.2.2.2, 3.3.3.3"[..])];
        let key = |hops| {
            ForwardedIp::x_forwarded_for(hops)
                .extract(&req(&xff, peer()))
                .map(|k| k.to_string())
        };
        assert_eq!(key(0).as_deref(), Some("ip:10.0.0.1"));
        assert_eq!(key(1).as_deref(), Some("ip:3.3.3.3"));
        assert_eq!(key(2).as_deref(), Some("ip:2.2.2.2"));
        assert_eq!(key(3).as_deref(), Some("ip:1.1.1.1"));
        assert_eq!(key(4), None, "fewer entries than proxies: no key");

        // Several header lines form one list.
        let split = req(
            &[
                ("x-forwarded-for", b"9.9.9.9"),
                ("x-forwarded-for", b"8.8.8.8"),
            ],
            peer(),
        );
        assert_eq!(
            ForwardedIp::x_forwarded_for(1)
                .extract(&split)
                .map(|k| k.to_string()),
            Some("ip:8.8.8.8".into())
        );
        // Garbage finds no key, never a panic.
        for bad in [&b"not-an-ip"[..], b"", b"\xff\xfe", b",,,"] {
            let r = req(&[("x-forwarded-for", bad)], peer());
            assert_eq!(ForwardedIp::x_forwarded_for(1).extract(&r), None);
        }
    }

    #[test]
    fn forwarded_header_elements() {
        let r = req(
            &[(
                "forwarded",
                b"for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=192.0.2.60;by=203.0.113.43",
            )],
            peer(),
        );
        let key = |hops| {
            ForwardedIp::forwarded(hops)
                .v6_prefix(128)
                .extract(&r)
                .map(|k| k.to_string())
        };
        assert_eq!(key(1).as_deref(), Some("ip:192.0.2.60"));
        assert_eq!(key(2).as_deref(), Some("ip:2001:db8::7"));
        let hidden = req(&[("forwarded", b"for=_hidden")], peer());
        assert_eq!(ForwardedIp::forwarded(1).extract(&hidden), None);
    }

    #[test]
    fn api_keys_are_digested() {
        let bearer = req(&[("authorization", b"Bearer sk-abc")], None);
        let lower = req(&[("authorization", b"bearer   sk-abc ")], None);
        let header = req(&[("x-api-key", b"sk-abc")], None);
        let k = ApiKey.extract(&bearer);
        assert!(k.is_some());
        assert_eq!(k, ApiKey.extract(&lower));
        assert_eq!(k, ApiKey.extract(&header), "the same key either way");
        assert_ne!(k, ApiKey.extract(&req(&[("x-api-key", b"sk-abd")], None)));
        assert!(!format!("{k:?}").contains("sk-abc"));
        for bad in [
            &[("authorization", &b"Basic dXNlcg=="[..])][..],
            &[("authorization", b"Bearer ")],
            &[("x-api-key", b"")],
            &[("x-api-key", b"\xff\xfe\xfd")],
        ] {
            let r = req(bad, None);
            // Non-UTF-8 bytes are a key like any other; empty or foreign schemes are none.
            let found = ApiKey.extract(&r);
            assert_eq!(found.is_some(), bad[0].1 == b"\xff\xfe\xfd", "{bad:?}");
        }
        let huge = vec![b'a'; MAX_VALUE_LEN + 1];
        assert_eq!(ApiKey.extract(&req(&[("x-api-key", &huge)], None)), None);
    }

    #[test]
    fn digests_are_separated_by_kind() {
        let r = req(&[("x-tenant", b"sk-abc"), ("x-api-key", b"sk-abc")], None);
        let by_header = Header::new(HeaderName::from_static("x-tenant")).extract(&r);
        assert!(by_header.is_some());
        assert_ne!(by_header, ApiKey.extract(&r));
    }

    #[test]
    fn extensions_composites_and_fallbacks() {
        #[derive(Clone)]
        struct UserId(String);
        impl AsRef<[u8]> for UserId {
            fn as_ref(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }
        let mut r = req(&[], peer());
        assert_eq!(Extension::<UserId>::new().extract(&r), None);
        r.extensions_mut().insert(UserId("u-1".into()));
        let user = Extension::<UserId>::new().extract(&r);
        assert!(user.is_some());

        let both = (Extension::<UserId>::new(), PeerIp::new()).extract(&r);
        assert_eq!(
            both.map(|k| k.to_string().ends_with("+ip:10.0.0.1")),
            Some(true)
        );
        assert_eq!(
            (ApiKey, PeerIp::new()).extract(&r),
            None,
            "every part is needed"
        );

        let chain = ApiKey.or(PeerIp::new()).or(Global);
        assert_eq!(
            chain.extract(&r).map(|k| k.to_string()),
            Some("ip:10.0.0.1".into())
        );
        assert_eq!(chain.extract(&req(&[], None)), Some(ClientKey::global()));

        let by_path = from_fn(|head| {
            head.uri
                .path()
                .starts_with("/v1/")
                .then(|| ClientKey::digest("route", "v1"))
        });
        assert!(by_path.extract(&r).is_none());
    }

    #[test]
    fn byte_encodings_are_distinct() {
        let keys = [
            ClientKey::global(),
            ClientKey::ip("1.2.3.4".parse().unwrap_or(IpAddr::V4([0; 4].into()))),
            ClientKey::digest("a", "b"),
            ClientKey::composite([ClientKey::global(), ClientKey::digest("a", "b")]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(i == j, a.to_bytes() == b.to_bytes());
            }
        }
    }
}
