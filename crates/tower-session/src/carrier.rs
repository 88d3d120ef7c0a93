//! How the session id travels: a cookie (optionally signed) or, for API
//! clients, a header.

use std::borrow::Cow;
use std::time::Duration;

use cookie::{Cookie, CookieJar, Key, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::id::{ID_LEN, Id};

/// Length of the HMAC prefix `cookie` puts on a signed value.
const SIGNATURE_LEN: usize = 44;

/// Where a request's id came from (and so where the response puts a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Cookie,
    Header,
}

/// What a request offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Offered {
    /// A well-formed (and, when signing, verified) id.
    pub(crate) id: Option<Id>,
    /// Where an id was offered, valid or not.
    pub(crate) source: Option<Source>,
    /// Why the last offered id was refused.
    pub(crate) rejected: Option<Rejected>,
}

/// Why an id offered by a client was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Not the shape of an id (length, alphabet, encoding).
    Malformed,
    /// Signed cookies are on and no key verifies it.
    BadSignature,
}

impl Rejected {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// The carrier's configuration: cookie attributes, the optional header, the
/// signing keys.
#[derive(Clone)]
pub(crate) struct Carrier {
    pub(crate) name: Cow<'static, str>,
    pub(crate) http_only: bool,
    pub(crate) secure: bool,
    pub(crate) same_site: SameSite,
    pub(crate) path: Cow<'static, str>,
    pub(crate) domain: Option<Cow<'static, str>>,
    /// Whether the cookie gets a `Max-Age` (a persistent cookie) or lives
    /// until the browser closes.
    pub(crate) persistent: bool,
    pub(crate) header: Option<HeaderName>,
    /// The first signs; all verify.
    pub(crate) keys: Vec<Key>,
}

impl Carrier {
    /// The id a request carries: the header if configured and present,
    /// else the first cookie of our name whose value is a valid id. The
    /// source is where an id was offered, valid or not: a new id goes back
    /// the same way.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Offered {
        if let Some(header) = &self.header
            && let Some(value) = headers.get(header)
        {
            let accepted = self.accept(value.as_bytes());
            return Offered {
                id: accepted.ok(),
                source: Some(Source::Header),
                rejected: accepted.err(),
            };
        }
        let mut offered = Offered::default();
        for value in headers.get_all(COOKIE) {
            for candidate in cookie_values(value.as_bytes(), self.name.as_bytes()) {
                offered.source = Some(Source::Cookie);
                match self.accept(candidate) {
                    Ok(id) => {
                        offered.id = Some(id);
                        offered.rejected = None;
                        return offered;
                    }
                    Err(why) => offered.rejected = Some(why),
                }
            }
        }
        offered
    }

    /// The id in `value`, verified when cookies are signed.
    fn accept(&self, value: &[u8]) -> Result<Id, Rejected> {
        if self.keys.is_empty() {
            return Id::parse(value).ok_or(Rejected::Malformed);
        }
        if value.len() != SIGNATURE_LEN + ID_LEN {
            return Err(Rejected::Malformed);
        }
        let value = std::str::from_utf8(value).map_err(|_| Rejected::Malformed)?;
        // Check the shape before spending an HMAC on it.
        Id::parse(&value.as_bytes()[SIGNATURE_LEN..]).ok_or(Rejected::Malformed)?;
        let jar = CookieJar::new();
        let cookie = Cookie::new(self.name.clone().into_owned(), value.to_owned());
        self.keys
            .iter()
            .find_map(|key| jar.signed(key).verify(cookie.clone()))
            .and_then(|verified| Id::parse(verified.value().as_bytes()))
            .ok_or(Rejected::BadSignature)
    }

    /// The value to send for `id`: the id itself, or signed with the first
    /// key.
    fn value(&self, id: &Id) -> String {
        match self.keys.first() {
            None => id.to_string(),
            Some(key) => {
                let mut jar = CookieJar::new();
                jar.signed_mut(key)
                    .add(Cookie::new(self.name.clone().into_owned(), id.to_string()));
                jar.get(&self.name)
                    .map(|c| c.value().to_owned())
                    .unwrap_or_default()
            }
        }
    }

    /// Puts `id` on the response, where the request had it (or in a cookie
    /// for a new visitor), with `max_age` as the cookie's lifetime.
    pub(crate) fn write(
        &self,
        headers: &mut HeaderMap,
        source: Option<Source>,
        id: &Id,
        max_age: Duration,
    ) {
        let value = self.value(id);
        if let (Some(Source::Header), Some(header)) = (source, &self.header) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header.clone(), v);
            }
            return;
        }
        let mut cookie = self.cookie(value);
        if self.persistent {
            let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            cookie = cookie.max_age(cookie::time::Duration::seconds(secs.max(1)));
        }
        self.append(headers, cookie.build());
    }

    /// Tells the client to drop its id: an expired cookie (header clients
    /// get nothing: their next request with the old id starts afresh).
    pub(crate) fn remove(&self, headers: &mut HeaderMap, source: Option<Source>) {
        if source == Some(Source::Header) {
            return;
        }
        self.append(headers, self.cookie(String::new()).removal().build());
    }

    fn cookie(&self, value: String) -> cookie::CookieBuilder<'static> {
        let mut cookie = Cookie::build((self.name.clone(), value))
            .http_only(self.http_only)
            .secure(self.secure)
            .same_site(self.same_site)
            .path(self.path.clone());
        if let Some(domain) = &self.domain {
            cookie = cookie.domain(domain.clone());
        }
        cookie
    }

    fn append(&self, headers: &mut HeaderMap, cookie: Cookie<'_>) {
        if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
            headers.append(SET_COOKIE, v);
        }
    }
}

/// Longest cookie value we look at: a signed id is 76 bytes; anything much
/// longer is not ours and isn't worth scanning.
const MAX_VALUE: usize = 256;

/// The values of every cookie called `name` in one `Cookie` header, read as
/// bytes: a non-UTF-8 byte in someone else's cookie doesn't hide ours, and
/// nothing is allocated.
fn cookie_values<'a>(header: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (key, value) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
        if key != name || value.len() > MAX_VALUE {
            return None;
        }
        // RFC 6265 allows a quoted value.
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// Whether `name` is an RFC 6265 cookie name (an RFC 7230 token).
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` can be a cookie attribute value (`Path`, `Domain`).
pub(crate) fn is_attribute_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b';')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carrier(keys: Vec<Key>) -> Carrier {
        Carrier {
            name: "sid".into(),
            http_only: true,
            secure: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            persistent: true,
            header: Some(HeaderName::from_static("x-session-id")),
            keys,
        }
    }

    fn headers(cookie: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(cookie).unwrap());
        h
    }

    #[test]
    fn finds_our_cookie_among_others() {
        let id = Id::random().unwrap();
        let c = carrier(vec![]);
        let h = headers(format!("a=1; sid={id}; b=2").as_bytes());
        assert_eq!(c.read(&h).id, Some(id));
        let h = headers(format!("sid=\"{id}\"").as_bytes());
        assert_eq!(c.read(&h).id, Some(id));
        // A malformed duplicate before the good one doesn't hide it.
        let h = headers(format!("sid=junk;sid={id}").as_bytes());
        assert_eq!(c.read(&h).id, Some(id));
    }

    #[test]
    fn bad_input_is_no_id() {
        let c = carrier(vec![]);
        for raw in [
            &b"sid=short"[..],
            b"sid=",
            b"sid",
            b";;;=;",
            b"sid=\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed\xec\xeb\xea\xe9\xe8\xe7\xe6\xe5\xe4\xe3\xe2\xe1\xe0",
            b"sid={abcdefghijklmnopqrstuvwxyz:}AB",
        ] {
            assert_eq!(c.read(&headers(raw)).id, None, "{raw:?}");
        }
        let huge = format!("sid={}", "A".repeat(100_000));
        assert_eq!(c.read(&headers(huge.as_bytes())).id, None);
        // A non-UTF-8 byte in another cookie doesn't hide a good id.
        let id = Id::random().unwrap();
        let mut raw = b"x=\xff\xfe; ".to_vec();
        raw.extend_from_slice(format!("sid={id}").as_bytes());
        assert_eq!(c.read(&headers(&raw)).id, Some(id));
    }

    #[test]
    fn the_header_wins_for_api_clients() {
        let id = Id::random().unwrap();
        let c = carrier(vec![]);
        let mut h = HeaderMap::new();
        h.insert("x-session-id", HeaderValue::from_str(id.as_str()).unwrap());
        let offered = c.read(&h);
        assert_eq!(
            (offered.id, offered.source),
            (Some(id), Some(Source::Header))
        );
        h.insert("x-session-id", HeaderValue::from_static("nope"));
        let offered = c.read(&h);
        assert_eq!(offered.id, None);
        assert_eq!(offered.source, Some(Source::Header));
        assert_eq!(offered.rejected, Some(Rejected::Malformed));
    }

    #[test]
    fn signed_cookies_verify_with_any_key_and_sign_with_the_first() {
        let (old, new) = (Key::generate(), Key::generate());
        let id = Id::random().unwrap();
        let signer_old = carrier(vec![old.clone()]);
        let signed_old = signer_old.value(&id);
        assert_eq!(signed_old.len(), SIGNATURE_LEN + ID_LEN);

        let rotated = carrier(vec![new.clone(), old]);
        let h = headers(format!("sid={signed_old}").as_bytes());
        assert_eq!(rotated.read(&h).id, Some(id));
        assert_ne!(rotated.value(&id), signed_old);

        let only_new = carrier(vec![new]);
        assert_eq!(only_new.read(&h).id, None);
        assert_eq!(only_new.read(&h).rejected, Some(Rejected::BadSignature));
        // An unsigned id is refused when signing is on.
        let h = headers(format!("sid={id}").as_bytes());
        assert_eq!(only_new.read(&h).rejected, Some(Rejected::Malformed));
    }

    #[test]
    fn cookies_carry_the_configured_attributes() {
        let c = Carrier {
            domain: Some("example.com".into()),
            ..carrier(vec![])
        };
        let id = Id::random().unwrap();
        let mut h = HeaderMap::new();
        c.write(&mut h, None, &id, Duration::from_secs(1800));
        let set = h[SET_COOKIE].to_str().unwrap();
        for part in [
            &format!("sid={id}")[..],
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Domain=example.com",
            "Max-Age=1800",
        ] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        let mut h = HeaderMap::new();
        c.remove(&mut h, Some(Source::Cookie));
        assert!(h[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn names_and_attributes_are_validated() {
        assert!(is_token("sid"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a=b"));
        assert!(is_attribute_value("/api"));
        assert!(!is_attribute_value("/a;b"));
    }
}
