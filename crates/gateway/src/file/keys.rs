//! `[[keys]]` and `[[limits]]`: who may call, and how much.

use std::collections::HashSet;

use toml::Spanned;

use super::schema::{BucketFile, KeyFile, LimitFile};
use super::source::Source;
use crate::config::{Bucket, ConfigError, KeyConfig, LimitConfig, key_digest};

/// The file's keys: each given once (as itself or as its digest) under a
/// name of its own.
pub(super) fn read_keys(
    source: &Source<'_>,
    keys: Vec<KeyFile>,
) -> Result<Vec<KeyConfig>, ConfigError> {
    let mut read = Vec::with_capacity(keys.len());
    let mut digests = HashSet::new();
    let mut key_names = HashSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        let sha256 = match (&key.key, &key.key_sha256) {
            (Some(k), None) => {
                if k.get_ref().is_empty() {
                    return Err(source.fail(k.span(), "an empty key".into()));
                }
                key_digest(k.get_ref())
            }
            (None, Some(hex)) => parse_hex32(hex.get_ref()).ok_or_else(|| {
                source.fail(
                    hex.span(),
                    "key_sha256 is the key's SHA-256 digest: 64 hex digits".into(),
                )
            })?,
            (Some(k), Some(_)) => {
                return Err(source.fail(k.span(), "give key or key_sha256, not both".into()));
            }
            (None, None) => {
                return Err(source.fail_file(format!("keys[{i}]: give key or key_sha256")));
            }
        };
        let span = key
            .key
            .as_ref()
            .map(Spanned::span)
            .or_else(|| key.key_sha256.as_ref().map(Spanned::span))
            .unwrap_or_default();
        if !digests.insert(sha256) {
            return Err(source.fail(span, "this key is listed twice".into()));
        }
        let budget = match key.budget {
            None => None,
            Some(budget) => {
                let b = *budget.get_ref();
                if !(b.usd.is_finite() && b.usd >= 0.0) {
                    return Err(
                        source.fail(budget.span(), "a budget is zero or more dollars".into())
                    );
                }
                Some(b)
            }
        };
        let name = key.name.unwrap_or_else(|| format!("key-{}", i + 1));
        if !key_names.insert(name.clone()) {
            return Err(source.fail(
                span,
                format!(
                    "two keys are named {name}: a name labels one key's budget, streams and metrics"
                ),
            ));
        }
        read.push(KeyConfig {
            name,
            sha256,
            tier: key.tier,
            budget,
        });
    }
    Ok(read)
}

/// The file's limits: each route (and tier) limited once.
pub(super) fn read_limits(
    source: &Source<'_>,
    limits: Vec<LimitFile>,
) -> Result<Vec<LimitConfig>, ConfigError> {
    let mut read = Vec::with_capacity(limits.len());
    let mut rules = HashSet::new();
    for limit in limits {
        let route = limit.route.get_ref();
        if !route.starts_with('/') {
            return Err(source.fail(
                limit.route.span(),
                format!("route {route}: a path prefix starts with /"),
            ));
        }
        if limit.requests.is_none() && limit.tokens.is_none() {
            return Err(source.fail(
                limit.route.span(),
                format!("route {route}: give requests, tokens or both"),
            ));
        }
        if !rules.insert((route.clone(), limit.tier.clone())) {
            return Err(source.fail(
                limit.route.span(),
                format!("route {route} is limited twice for the same tier"),
            ));
        }
        read.push(LimitConfig {
            route: route.clone(),
            tier: limit.tier,
            requests: bucket(source, limit.requests)?,
            tokens: bucket(source, limit.tokens)?,
        });
    }
    Ok(read)
}

/// A token bucket: a capacity and exactly one rate.
fn bucket(
    source: &Source<'_>,
    bucket: Option<Spanned<BucketFile>>,
) -> Result<Option<Bucket>, ConfigError> {
    let Some(b) = bucket else { return Ok(None) };
    let span = b.span();
    let f = b.into_inner();
    let rate = match (f.per_second, f.per_minute, f.per_hour) {
        (Some(r), None, None) => r,
        (None, Some(r), None) => r / 60.0,
        (None, None, Some(r)) => r / 3_600.0,
        _ => {
            return Err(source.fail(
                span,
                "give exactly one of per_second, per_minute and per_hour".into(),
            ));
        }
    };
    if f.capacity == 0 || !(rate.is_finite() && rate > 0.0) {
        return Err(source.fail(
            span,
            "a limit needs a capacity of at least 1 and a rate above 0".into(),
        ));
    }
    Ok(Some(Bucket {
        capacity: f.capacity,
        per_second: rate,
    }))
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}
