//! Rate-limit response fields, formatted and parsed, for servers and clients.
//!
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
//!   (seconds until the limit is full again) and `Retry-After` (whole
//!   seconds, never 0 on a refusal): [`RateLimitInfo`].
//! - The IETF fields of draft-ietf-httpapi-ratelimit-headers:
//!   `RateLimit-Policy: "chat";q=5;w=50` and `RateLimit: "chat";r=3;t=20`:
//!   [`IetfPolicy`] and [`IetfLimit`].
//! - OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, read
//!   by many LLM clients, with durations like `6m0s`: [`openai_duration`].
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use tower_ai_ratelimit::headers::{RateLimitInfo, retry_after};
//!
//! let mut headers = HeaderMap::new();
//! RateLimitInfo { limit: 5, remaining: 0, reset: Duration::from_millis(49_100) }.write(&mut headers);
//! assert_eq!(headers["x-ratelimit-reset"], "50");
//! assert_eq!(RateLimitInfo::read(&headers).map(|i| i.remaining), Some(0));
//!
//! headers.insert("retry-after", "7".parse().unwrap());
//! assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (IETF draft).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A header value for a number. Values below 4,096 come from a table made
/// once, whose entries are static: cloning one neither allocates nor counts
/// references, where formatting a number allocates every time.
pub(crate) fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    const TABLE: u64 = 4_096;
    if n >= TABLE {
        return HeaderValue::from(n);
    }
    let table = SMALL.get_or_init(|| {
        (0..TABLE)
            .map(|i| {
                // Leaked once per process: 4,096 short strings.
                let text: &'static str = Box::leak(i.to_string().into_boxed_str());
                HeaderValue::from_static(text)
            })
            .collect()
    });
    table[n as usize].clone()
}

/// [`openai_duration`] as a header value. Whole seconds under a minute (the
/// usual reset) come from a table made once, as [`number`]'s.
pub(crate) fn openai_duration_value(d: Duration) -> Option<HeaderValue> {
    static SECONDS: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let secs = secs_ceil(d);
    if d >= Duration::from_secs(1) && secs < 60 {
        let table = SECONDS.get_or_init(|| {
            (0..60)
                .map(|s| {
                    // Leaked once per process: 60 short strings.
                    let text: &'static str = Box::leak(format!("{s}s").into_boxed_str());
                    HeaderValue::from_static(text)
                })
                .collect()
        });
        return Some(table[secs as usize].clone());
    }
    HeaderValue::from_str(&openai_duration(d)).ok()
}

/// Whole seconds, rounded up.
fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The classic `X-RateLimit-*` triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The capacity.
    pub limit: u64,
    /// What is left.
    pub remaining: u64,
    /// Until the limit is full again (sent in whole seconds, rounded up).
    pub reset: Duration,
}

impl RateLimitInfo {
    /// Writes the three fields.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(X_RATELIMIT_LIMIT.clone(), number(self.limit));
        headers.insert(X_RATELIMIT_REMAINING.clone(), number(self.remaining));
        headers.insert(X_RATELIMIT_RESET.clone(), number(secs_ceil(self.reset)));
    }

    /// Reads the three fields (all must be there and be whole numbers).
    pub fn read(headers: &HeaderMap) -> Option<Self> {
        let num = |name: &HeaderName| -> Option<u64> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        };
        Some(Self {
            limit: num(&X_RATELIMIT_LIMIT)?,
            remaining: num(&X_RATELIMIT_REMAINING)?,
            reset: Duration::from_secs(num(&X_RATELIMIT_RESET)?),
        })
    }
}

/// Reads `Retry-After` in its delay-seconds form.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse().ok().map(Duration::from_secs)
}

/// One item of the IETF `RateLimit-Policy` field: a policy's quota and
/// window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IetfPolicy {
    /// The policy's name.
    pub name: String,
    /// The quota (`q`).
    pub quota: u64,
    /// The window in seconds (`w`).
    pub window: u64,
}

/// One item of the IETF `RateLimit` field: what is left of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IetfLimit {
    /// The policy's name.
    pub name: String,
    /// What is left (`r`).
    pub remaining: u64,
    /// Seconds until the quota is restored (`t`).
    pub reset: u64,
}

/// Formats a `RateLimit-Policy` field value.
pub fn format_ietf_policies(items: &[IetfPolicy]) -> String {
    let mut out = String::new();
    for (i, p) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{};q={};w={}", quoted(&p.name), p.quota, p.window);
    }
    out
}

/// Formats a `RateLimit` field value.
pub fn format_ietf_limits(items: &[IetfLimit]) -> String {
    let mut out = String::new();
    for (i, l) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{};r={};t={}", quoted(&l.name), l.remaining, l.reset);
    }
    out
}

/// Parses a `RateLimit-Policy` field value; items that don't parse are
/// skipped.
pub fn parse_ietf_policies(value: &str) -> Vec<IetfPolicy> {
    parse_items(value)
        .filter_map(|(name, params)| {
            Some(IetfPolicy {
                name,
                quota: param(&params, "q")?,
                window: param(&params, "w").unwrap_or(0),
            })
        })
        .collect()
}

/// Parses a `RateLimit` field value; items that don't parse are skipped.
pub fn parse_ietf_limits(value: &str) -> Vec<IetfLimit> {
    parse_items(value)
        .filter_map(|(name, params)| {
            Some(IetfLimit {
                name,
                remaining: param(&params, "r")?,
                reset: param(&params, "t").unwrap_or(0),
            })
        })
        .collect()
}

fn quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits `"name";k=v;k=v, "other";k=v` into items (a simple reading of
/// structured-field lists, enough for these fields).
fn parse_items(value: &str) -> impl Iterator<Item = (String, Vec<(String, String)>)> + '_ {
    value.split(',').filter_map(|item| {
        let mut parts = item.trim().split(';');
        let name = parts.next()?.trim();
        let name = name
            .strip_prefix('"')?
            .strip_suffix('"')?
            .replace("\\\"", "\"");
        let params = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some((name, params))
    })
}

fn param(params: &[(String, String)], key: &str) -> Option<u64> {
    params.iter().find(|(k, _)| k == key)?.1.parse().ok()
}

/// A duration as OpenAI writes rate-limit resets: `20ms`, `1s`, `1.5s`,
/// `6m0s`, `1h2m3s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let total = secs_ceil(d);
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Parses a duration as [`openai_duration`] writes it (and fractional
/// seconds such as `1.5s`).
pub fn parse_openai_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    let mut total = 0.0f64;
    let mut num = String::new();
    let mut seen = false;
    for c in s.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'h' | 'm' | 's' => {
                let v: f64 = num.parse().ok()?;
                total += v * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                num.clear();
                seen = true;
            }
            _ => return None,
        }
    }
    (seen && num.is_empty() && total.is_finite()).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ietf_fields_round_trip() {
        let policies = vec![
            IetfPolicy {
                name: "chat".into(),
                quota: 5,
                window: 50,
            },
            IetfPolicy {
                name: "da\"ily".into(),
                quota: 1000,
                window: 86_400,
            },
        ];
        let v = format_ietf_policies(&policies);
        assert_eq!(v, r#""chat";q=5;w=50, "da\"ily";q=1000;w=86400"#);
        assert_eq!(parse_ietf_policies(&v), policies);
        let limits = vec![IetfLimit {
            name: "chat".into(),
            remaining: 3,
            reset: 20,
        }];
        let v = format_ietf_limits(&limits);
        assert_eq!(v, r#""chat";r=3;t=20"#);
        assert_eq!(parse_ietf_limits(&v), limits);
        assert!(parse_ietf_limits("garbage, \"x\";r=oops").is_empty());
    }

    #[test]
    fn openai_durations() {
        // Formatting rounds up to whole seconds past one second.
        for (d, text, back) in [
            (Duration::from_millis(20), "20ms", Duration::from_millis(20)),
            (Duration::from_secs(1), "1s", Duration::from_secs(1)),
            (Duration::from_millis(1_200), "2s", Duration::from_secs(2)),
            (Duration::from_secs(360), "6m0s", Duration::from_secs(360)),
            (
                Duration::from_secs(3_723),
                "1h2m3s",
                Duration::from_secs(3_723),
            ),
        ] {
            assert_eq!(openai_duration(d), text);
            assert_eq!(parse_openai_duration(text), Some(back));
        }
        assert_eq!(
            parse_openai_duration("1.5s"),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(parse_openai_duration("6m"), Some(Duration::from_secs(360)));
        assert_eq!(parse_openai_duration("6x"), None);
        // The table's values are the formatted ones.
        for ms in [
            0, 999, 1_000, 1_001, 9_500, 59_000, 59_001, 60_000, 3_723_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(
                openai_duration_value(d)
                    .as_ref()
                    .and_then(|v| v.to_str().ok()),
                Some(openai_duration(d).as_str()),
                "{ms} ms"
            );
        }
        assert_eq!(parse_openai_duration("12"), None);
    }

    #[test]
    fn classic_fields_reject_garbage() {
        let mut h = HeaderMap::new();
        h.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from_static("5"));
        h.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from_static("x"));
        h.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from_static("3"));
        assert_eq!(RateLimitInfo::read(&h), None);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
