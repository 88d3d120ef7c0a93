//! Whether an answer may be stored: judged at its head (status,
//! `Cache-Control`, `Vary`, size: a [`Plan`] or a reason not to) and again
//! at its end (complete, no in-band error, and the tokens it cost).

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header;
use http_body::Body;
use tower_ai_core::llm::{AnswerTap, Completion, FinishReason, SharedAnswer};

use crate::config::Shared;
use crate::directives::{ResponseDirectives, upstream_age};
use crate::entry::Head;
use crate::route::RouteRule;

/// How long a recorded answer is kept, decided at its head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) age_at_store: Duration,
    /// Whether an answer cut off at the request's `max_tokens` is stored.
    pub(crate) store_length: bool,
}

/// Whether the answer may be stored, judged from its head, and for how long;
/// else the reason (a metric label). `bounded`: the keyed request bounds the
/// answer's length (`max_tokens`).
pub(crate) fn storable<B: Body>(
    shared: &Shared,
    rule: &RouteRule,
    bounded: bool,
    parts: &http::response::Parts,
    body: &B,
) -> Result<Plan, &'static str> {
    if !(shared.cacheable)(parts.status) {
        return Err("status");
    }
    let directives = ResponseDirectives::parse(&parts.headers);
    if directives.no_store {
        return Err("no_store");
    }
    if directives.private && rule.public {
        return Err("private");
    }
    if parts.headers.contains_key(header::SET_COOKIE) {
        return Err("set_cookie");
    }
    for vary in parts.headers.get_all(header::VARY) {
        let Ok(vary) = vary.to_str() else {
            return Err("vary");
        };
        for name in vary.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*"
                || !shared
                    .vary
                    .iter()
                    .any(|v| v.as_str().eq_ignore_ascii_case(name))
            {
                return Err("vary");
            }
        }
    }
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > shared.max_body as u64)
    {
        return Err("too_large");
    }
    if let Some(status) = parts.headers.get("grpc-status")
        && status != "0"
    {
        return Err("grpc_error");
    }
    let mut ttl = rule.ttl;
    if let Some(max_age) = directives.max_age {
        if max_age == 0 {
            return Err("max_age");
        }
        ttl = ttl.min(Duration::from_secs(max_age));
    }
    Ok(Plan {
        ttl,
        grace: rule.grace,
        age_at_store: upstream_age(&parts.headers),
        store_length: rule.store_length && bounded,
    })
}

/// Whether a whole answer is complete and may be stored, and the LLM tokens
/// it cost. A `Content-Type: text/event-stream` answer must end with
/// `[DONE]` or a complete `finish_reason` (`stop`, `tool_calls`, and `length`
/// when `store_length`) and carry no in-band error; a JSON chat completion
/// must not be an error or cut off (`length`, unless `store_length`); a gRPC
/// answer must end with `grpc-status: 0`. A JSON answer already read below
/// (`shared`, from the same bytes) is not read again.
pub(crate) fn judge(
    head: &Head,
    body: &Bytes,
    trailers: Option<&HeaderMap>,
    tap: Option<&mut AnswerTap>,
    shared: Option<&SharedAnswer>,
    store_length: bool,
) -> Result<u64, &'static str> {
    let complete = |reason: &FinishReason| {
        reason.is_complete() || (store_length && *reason == FinishReason::Length)
    };
    let content_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/grpc") {
        let status = trailers
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"));
        return match status {
            Some(s) if s == "0" => Ok(0),
            _ => Err("grpc_error"),
        };
    }
    if head.is_stream() {
        let mut own;
        let tap = match tap {
            Some(tap) => tap,
            None => {
                own = AnswerTap::for_response(&head.headers, 0);
                own.observe(body);
                &mut own
            }
        };
        let summary = tap.finish();
        if summary.error {
            return Err("error");
        }
        let complete = match &summary.finish_reason {
            Some(reason) => complete(reason),
            None => summary.done,
        };
        if !complete {
            return Err(if summary.finish_reason.is_some() {
                "truncated"
            } else {
                "incomplete"
            });
        }
        return Ok(summary.usage.map_or(0, |u| u.total()));
    }
    if !(content_type.starts_with("application/json") || content_type.contains("+json")) {
        return Ok(0);
    }
    let own;
    let (error, finish_reason, usage) = match shared.and_then(|s| s.summary_of(body)) {
        Some(s) => (s.error, &s.finish_reason, s.usage),
        None => match Completion::without_content(body) {
            Ok(c) => {
                own = c;
                (own.error, &own.finish_reason, own.usage)
            }
            Err(_) => return Ok(0),
        },
    };
    if error {
        return Err("error");
    }
    if finish_reason.as_ref().is_some_and(|r| !complete(r)) {
        return Err("truncated");
    }
    Ok(usage.map_or(0, |u| u.total()))
}
