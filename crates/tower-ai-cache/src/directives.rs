//! `Cache-Control` as requests and responses use it, and the `Cache-Status`
//! (RFC 9211) and `Age` fields this layer writes.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::entry::{Entry, now_ms};
use crate::key::CacheKey;

/// `Cache-Status` (RFC 9211).
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What a request's `Cache-Control` (and `Pragma`) asks of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// `no-store`: neither look up nor store.
    pub(crate) no_store: bool,
    /// `no-cache` (or `Pragma: no-cache`): don't answer from the cache, but
    /// store the fresh answer.
    pub(crate) no_cache: bool,
    /// `max-age=N`: only a stored answer at most this old.
    pub(crate) max_age: Option<u64>,
    /// `only-if-cached`: answer from the cache or with `504`.
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    /// Whether the request's `max-age` accepts a stored entry's age (any age
    /// without one; the clock is read only with one).
    pub(crate) fn accepts(&self, entry: &Entry) -> bool {
        self.max_age
            .is_none_or(|max| entry.lifetime.age(now_ms()).as_secs() <= max)
    }

    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let mut any_cache_control = false;
        for value in headers.get_all(header::CACHE_CONTROL) {
            any_cache_control = true;
            for (name, arg) in directives(value) {
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "max-age" => {
                        d.max_age = arg.and_then(|a| a.parse().ok()).or(Some(0));
                    }
                    _ => {}
                }
            }
        }
        if !any_cache_control
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .any(|v| directives(v).any(|(n, _)| n.eq_ignore_ascii_case("no-cache")))
        {
            d.no_cache = true;
        }
        d
    }
}

/// What a response's `Cache-Control` says about storing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    pub(crate) private: bool,
    /// `s-maxage`, else `max-age`, in seconds.
    pub(crate) max_age: Option<u64>,
}

impl ResponseDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let mut s_maxage = None;
        let mut max_age = None;
        for value in headers.get_all(header::CACHE_CONTROL) {
            for (name, arg) in directives(value) {
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "private" => d.private = true,
                    "s-maxage" => s_maxage = arg.and_then(|a| a.parse().ok()).or(Some(0)),
                    "max-age" => max_age = arg.and_then(|a| a.parse().ok()).or(Some(0)),
                    _ => {}
                }
            }
        }
        d.max_age = s_maxage.or(max_age);
        d
    }
}

/// The directives of one `Cache-Control` value: `name` or `name=arg` (quotes
/// removed), separated by commas.
fn directives(value: &HeaderValue) -> impl Iterator<Item = (&str, Option<&str>)> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match d.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (d, None),
        })
}

/// The origin's `Age`, in seconds.
pub(crate) fn upstream_age(headers: &HeaderMap) -> Duration {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// How the cache handled a request, as `Cache-Status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from the cache, fresh.
    Hit,
    /// Forwarded: nothing stored (or a stale entry the request can't use).
    Miss,
    /// Forwarded because the request asked (`no-cache`, `no-store`).
    Request,
    /// Forwarded without a lookup: the request can't be cached (no scope, a
    /// body too large, a non-deterministic request on a deterministic-only
    /// route).
    Bypass,
    /// Forwarded, the upstream failed, and a stale entry answered.
    Stale,
}

/// Builds a `Cache-Status` member.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) outcome: Outcome,
    pub(crate) collapsed: bool,
    pub(crate) ttl: Option<i64>,
    pub(crate) fwd_status: Option<StatusCode>,
    pub(crate) key: Option<CacheKey>,
    pub(crate) detail: Option<&'static str>,
    /// A semantic hit's cosine similarity.
    pub(crate) similarity: Option<f32>,
}

impl Status {
    pub(crate) const fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            collapsed: false,
            ttl: None,
            fwd_status: None,
            key: None,
            detail: None,
            similarity: None,
        }
    }

    pub(crate) fn render(&self, cache_name: &str) -> String {
        let mut s = String::with_capacity(cache_name.len() + 48);
        s.push_str(cache_name);
        s.push_str(match self.outcome {
            Outcome::Hit => "; hit",
            Outcome::Miss => "; fwd=miss",
            Outcome::Request => "; fwd=request",
            Outcome::Bypass => "; fwd=bypass",
            Outcome::Stale => "; fwd=stale",
        });
        if let Some(status) = self.fwd_status {
            s.push_str("; fwd-status=");
            s.push_str(status.as_str());
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            // Into the text itself: writing to a `String` can't fail.
            let _ = write!(s, "; ttl={ttl}");
        }
        if let Some(key) = &self.key {
            s.push_str("; key=\"");
            s.push_str(&key.to_string());
            s.push('"');
        }
        if let Some(detail) = self.detail {
            s.push_str("; detail=");
            s.push_str(detail);
        }
        if let Some(similarity) = self.similarity {
            let _ = write!(s, "; similarity={similarity:.3}");
        }
        s
    }

    /// Appends this member to the response's `Cache-Status` (see
    /// [`append`]).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, cache_name: &str) {
        append(headers, self.render(cache_name));
    }
}

/// Appends `ours`, a rendered member, to the response's `Cache-Status`
/// (after those of caches closer to the origin).
pub(crate) fn append(headers: &mut HeaderMap, ours: String) {
    let value = match headers.get(&CACHE_STATUS).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ours}"),
        _ => ours,
    };
    // The rendered text becomes the value without another copy (a boxed
    // slice, as a `Vec` with spare room would need a second allocation).
    let text = bytes::Bytes::from(value.into_bytes().into_boxed_slice());
    if let Ok(v) = HeaderValue::from_maybe_shared(text) {
        headers.insert(CACHE_STATUS.clone(), v);
    }
}

/// Seconds, rounded down, as `ttl` and `Age` show them.
pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The `ttl` of a stale response: negative, whole seconds past expiry
/// rounded up (so just-expired is `-1`, never `0`).
pub(crate) fn stale_ttl(past: Duration) -> i64 {
    -(secs(past).saturating_add(i64::from(past.subsec_nanos() > 0)))
}

pub(crate) fn set_age(headers: &mut HeaderMap, age: Duration) {
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        h
    }

    #[test]
    fn request_directives() {
        let d = RequestDirectives::parse(&headers(&[("cache-control", "No-Cache, max-age=\"5\"")]));
        assert!(d.no_cache && !d.no_store);
        assert_eq!(d.max_age, Some(5));
        let d = RequestDirectives::parse(&headers(&[("pragma", "no-cache")]));
        assert!(d.no_cache);
        let d = RequestDirectives::parse(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=9"),
        ]));
        assert!(!d.no_cache, "Cache-Control wins over Pragma");
        let d =
            RequestDirectives::parse(&headers(&[("cache-control", "no-store,,only-if-cached")]));
        assert!(d.no_store && d.only_if_cached);
    }

    #[test]
    fn response_directives() {
        let d = ResponseDirectives::parse(&headers(&[(
            "cache-control",
            "private, max-age=60, s-maxage=30",
        )]));
        assert!(d.private && !d.no_store);
        assert_eq!(d.max_age, Some(30));
        assert!(ResponseDirectives::parse(&headers(&[("cache-control", "no-store")])).no_store);
    }

    #[test]
    fn cache_status() {
        let mut s = Status::new(Outcome::Miss);
        s.ttl = Some(3600);
        // Never `stored`: that is decided at the body's end, after the head.
        assert_eq!(s.render("tower-ai"), "tower-ai; fwd=miss; ttl=3600");
        let mut h = headers(&[("cache-status", "origin; hit")]);
        Status::new(Outcome::Hit).apply(&mut h, "tower-ai");
        assert_eq!(h[&CACHE_STATUS], "origin; hit, tower-ai; hit");
    }
}
