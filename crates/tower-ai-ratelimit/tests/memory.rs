//! The in-memory backend, through the layer, on a clock the tests move.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    admitted, admitted_concurrently, every_algorithm, from, json, scripts, send, service,
};
use http::StatusCode;
use tower_ai_core::key::{ForwardedIp, Global, KeyExtractorExt, PeerIp};
use tower_ai_ratelimit::headers::{RateLimitInfo, retry_after};
use tower_ai_ratelimit::{
    ConfigError, HeaderStyle, Limiter, ManualClock, MemoryStore, MissingKey, Policies, Policy,
    Rate, RateLimitLayer, TokioClock,
};

#[tokio::test]
async fn every_algorithm_follows_its_script() {
    for (policy, script, _) in scripts() {
        let clock = ManualClock::new();
        let layer = RateLimitLayer::builder()
            .policy(policy.clone())
            .memory(MemoryStore::with_clock(clock.clone()))
            .build()
            .expect("valid");
        let mut svc = service(layer);
        for (step, &(wait, expected)) in script.iter().enumerate() {
            clock.advance(Duration::from_millis(wait));
            assert_eq!(
                admitted(&mut svc, 1).await,
                expected,
                "{policy:?}, step {step}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn paused_tokio_time_drives_the_limiter() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(2, Rate::per_second(1.0)))
        .memory(MemoryStore::with_clock(TokioClock::new()))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    assert!(admitted(&mut svc, 1).await);
    assert!(admitted(&mut svc, 1).await);
    assert!(!admitted(&mut svc, 1).await);
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(!admitted(&mut svc, 1).await);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(admitted(&mut svc, 1).await);
}

#[tokio::test]
async fn clients_are_counted_apart() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(1, Rate::per_minute(1.0)))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    for client in 1..=20 {
        assert!(admitted(&mut svc, client).await);
        assert!(!admitted(&mut svc, client).await);
    }
}

#[tokio::test]
async fn several_policies_are_all_or_nothing() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(5, Rate::per_second(1.0)).named("burst"))
        .policy(Policy::fixed_window(3, Duration::from_secs(3_600)).named("hourly"))
        .memory(MemoryStore::with_clock(clock.clone()))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    for _ in 0..3 {
        assert!(admitted(&mut svc, 1).await);
    }
    // The hourly policy refuses; the burst policy must not be charged.
    for _ in 0..10 {
        let res = send(&mut svc, from(1)).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let doc = json(res).await;
        assert_eq!(doc["policy"], "hourly");
    }
    // Two burst tokens left, uncharged by the refusals: a new hour shows it.
    clock.advance(Duration::from_secs(3_600));
    let res = send(&mut svc, from(1)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let info = RateLimitInfo::read(res.headers()).expect("fields");
    assert_eq!(
        info.remaining, 2,
        "hourly 2 left, burst 4 left: the least is reported"
    );
}

#[tokio::test]
async fn headers_and_refusals_tell_the_truth() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(4, Rate::per_second(0.5)).named("chat"))
        .headers(HeaderStyle::all())
        .memory(MemoryStore::with_clock(clock.clone()))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    for expected_remaining in (0..4).rev() {
        let res = send(&mut svc, from(1)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let info = RateLimitInfo::read(res.headers()).expect("fields");
        assert_eq!(info.limit, 4);
        assert_eq!(info.remaining, expected_remaining);
        // Each used token takes 2 s to come back.
        assert_eq!(
            info.reset,
            Duration::from_secs(2 * (4 - expected_remaining))
        );
        assert_eq!(res.headers()["ratelimit-policy"], "\"chat\";q=4;w=8");
        assert_eq!(
            res.headers()["ratelimit"],
            format!(
                "\"chat\";r={expected_remaining};t={}",
                2 * (4 - expected_remaining)
            )
            .as_str()
        );
        assert_eq!(
            res.headers()["x-ratelimit-remaining-requests"],
            expected_remaining.to_string().as_str()
        );
    }
    clock.advance(Duration::from_millis(500));
    let res = send(&mut svc, from(1)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // 1.5 s until a token is back: Retry-After rounds up, never 0.
    assert_eq!(retry_after(res.headers()), Some(Duration::from_secs(2)));
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(res.headers()["x-ratelimit-reset"], "8");
    let doc = json(res).await;
    assert_eq!(doc["status"], 429);
    assert_eq!(doc["title"], "Too Many Requests");
    assert!(doc["detail"].as_str().is_some_and(|d| d.contains("chat")));

    // Never Retry-After: 0, even a nanosecond before the token is back.
    clock.advance(Duration::from_millis(1_500) - Duration::from_nanos(1));
    let res = send(&mut svc, from(1)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(res.headers()), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn routes_and_tiers_pick_policies() {
    let layer = RateLimitLayer::builder()
        .policies(
            Policies::new()
                .route_for_tier(
                    "/v1/chat/",
                    "pro",
                    [Policy::token_bucket(3, Rate::per_minute(1.0)).named("chat-pro")],
                )
                .route(
                    "/v1/chat/",
                    [Policy::token_bucket(1, Rate::per_minute(1.0)).named("chat")],
                )
                .route("/health", [])
                .otherwise([Policy::token_bucket(2, Rate::per_minute(1.0)).named("other")]),
        )
        .build()
        .expect("valid");
    let mut svc = service(layer);
    let at = |path: &str, tier: Option<&str>| {
        let mut req = from(1);
        *req.uri_mut() = path.parse().expect("a path");
        if let Some(t) = tier {
            req.extensions_mut()
                .insert(tower_ai_core::key::Tier::new(t));
        }
        req
    };
    let count = |svc: &mut common::Svc, path: &'static str, tier: Option<&'static str>| {
        let mut svc = svc.clone();
        async move {
            let mut n = 0;
            for _ in 0..10 {
                if send(&mut svc, at(path, tier)).await.status() == StatusCode::OK {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(count(&mut svc, "/v1/chat/completions", None).await, 1);
    assert_eq!(
        count(&mut svc, "/v1/chat/completions", Some("pro")).await,
        3
    );
    assert_eq!(count(&mut svc, "/v1/content/1", None).await, 2);
    assert_eq!(
        count(&mut svc, "/health", None).await,
        10,
        "an empty set limits nothing"
    );
}

#[tokio::test]
async fn requests_without_a_key_get_the_configured_outcome() {
    let build = |missing| {
        service(
            RateLimitLayer::builder()
                .key(PeerIp::new())
                .policy(Policy::token_bucket(2, Rate::per_minute(1.0)))
                .missing_key(missing)
                .build()
                .expect("valid"),
        )
    };
    let keyless = || http::Request::new(());

    let mut shared = build(MissingKey::Shared);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(send(&mut shared, keyless()).await.status().as_u16());
        }
        v
    };
    assert_eq!(
        statuses,
        [200, 200, 429],
        "keyless requests share one bucket"
    );

    let mut refuse = build(MissingKey::Refuse(StatusCode::UNAUTHORIZED));
    let res = send(&mut refuse, keyless()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    let mut allow = build(MissingKey::Allow);
    for _ in 0..5 {
        assert_eq!(send(&mut allow, keyless()).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_buy_a_new_bucket() {
    // One trusted proxy: only the rightmost entry counts, so a client that
    // writes its own X-Forwarded-For gains nothing.
    let layer = RateLimitLayer::builder()
        .key(ForwardedIp::x_forwarded_for(1))
        .policy(Policy::token_bucket(2, Rate::per_minute(1.0)))
        .build()
        .expect("valid");
    let mut svc = service(layer);
    let mut n = 0;
    for i in 0..20u8 {
        let mut req = from(9);
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("10.9.9.{i}, 203.0.113.5")
                .parse()
                .expect("a header"),
        );
        if send(&mut svc, req).await.status() == StatusCode::OK {
            n += 1;
        }
    }
    assert_eq!(n, 2);

    // Garbage and non-UTF-8 headers find no key: the shared anonymous bucket.
    for bad in [&b"\xff\xfe"[..], b"nonsense", b""] {
        let mut req = from(9);
        req.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(bad).expect("bytes"),
        );
        let status = send(&mut svc, req).await.status();
        assert!(status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn memory_stays_bounded_under_a_spray_of_keys() {
    let store = MemoryStore::new().max_keys(1_000);
    let layer = RateLimitLayer::builder()
        .key(tower_ai_core::key::ApiKey::new().or(Global))
        .policy(Policy::token_bucket(5, Rate::per_second(1.0)))
        .memory(store.clone())
        .build()
        .expect("valid");
    let mut svc = service(layer);
    for i in 0..20_000u32 {
        let mut req = from(1);
        req.headers_mut()
            .insert("x-api-key", format!("key-{i}").parse().expect("a header"));
        let _ = send(&mut svc, req).await;
    }
    assert!(store.len() <= 1_000, "{} keys held", store.len());
}

#[tokio::test]
async fn idle_keys_are_forgotten() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let layer = RateLimitLayer::builder()
        .key(tower_ai_core::key::ApiKey::new())
        .policy(Policy::token_bucket(5, Rate::per_second(10.0)))
        .memory(store.clone())
        .build()
        .expect("valid");
    let mut svc = service(layer);
    for i in 0..5_000u32 {
        let mut req = from(1);
        req.headers_mut()
            .insert("x-api-key", format!("key-{i}").parse().expect("a header"));
        let _ = send(&mut svc, req).await;
        clock.advance(Duration::from_millis(1));
    }
    // Every bucket refills within 100 ms; sweeps run as new keys arrive.
    assert!(store.len() < 2_000, "{} keys held", store.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generous_quota_refuses_nothing_under_contention() {
    let layer = RateLimitLayer::builder()
        .key(Global)
        .policy(Policy::token_bucket(
            1_000_000,
            Rate::per_second(1_000_000.0),
        ))
        .build()
        .expect("valid");
    let svc = service(layer);
    let refused = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut svc = svc.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                for _ in 0..5_000 {
                    if !admitted(&mut svc, 1).await {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(refused.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_algorithm_admits_exactly_its_capacity_under_concurrency() {
    for policy in every_algorithm(100) {
        let layer = RateLimitLayer::builder()
            .policy(policy.clone())
            .build()
            .expect("valid");
        let n = admitted_concurrently(&[service(layer)], 1_000).await;
        assert_eq!(n, 100, "{policy:?}");
    }
}

#[test]
fn invalid_configurations_are_errors_not_panics() {
    assert!(RateLimitLayer::builder().build().is_err(), "no policy");
    assert!(
        RateLimitLayer::builder()
            .policy(Policy::token_bucket(0, Rate::per_second(1.0)))
            .build()
            .is_err()
    );
    assert!(
        RateLimitLayer::builder()
            .policy(Policy::token_bucket(1, Rate::per_second(0.0)))
            .build()
            .is_err()
    );
    assert!(
        RateLimitLayer::builder()
            .policy(Policy::fixed_window(1, Duration::ZERO))
            .build()
            .is_err()
    );
    assert!(
        RateLimitLayer::builder()
            .policy(Policy::token_bucket(1, Rate::per_second(1.0)).named("a"))
            .policy(Policy::token_bucket(2, Rate::per_second(1.0)).named("a"))
            .build()
            .is_err(),
        "two different policies of one name"
    );
    assert!(
        RateLimitLayer::builder()
            .policy(Policy::token_bucket(1, Rate::per_second(1.0)).named("a{b}"))
            .build()
            .is_err()
    );
}

#[test]
fn each_configuration_mistake_has_its_own_error() {
    let err = |b: tower_ai_ratelimit::RateLimitBuilder<_>| b.build().expect_err("invalid");
    let tb = |cap, name: &str| Policy::token_bucket(cap, Rate::per_second(1.0)).named(name);
    let cases = [
        (
            err(RateLimitLayer::builder()),
            ConfigError::NoPolicy,
            "no policy: add one with .policy() or .policies()",
        ),
        (
            err(RateLimitLayer::builder().policy(tb(0, "a"))),
            ConfigError::ZeroCapacity { policy: "a".into() },
            "policy a: capacity must be at least 1",
        ),
        (
            err(RateLimitLayer::builder().policy(tb(1, "a{b}"))),
            ConfigError::InvalidPolicyName {
                name: "a{b}".into(),
            },
            "policy a{b}: a name is 1 to 64 characters, without braces, colons or quotes",
        ),
        (
            err(RateLimitLayer::builder()
                .policy(Policy::token_bucket(1, Rate::per_second(0.0)).named("a"))),
            ConfigError::InvalidRate { policy: "a".into() },
            "policy a: the rate must be positive and at most 10^9 per second",
        ),
        (
            err(RateLimitLayer::builder()
                .policy(Policy::fixed_window(1, Duration::ZERO).named("a"))),
            ConfigError::InvalidWindow { policy: "a".into() },
            "policy a: the window must be at least 1 ms",
        ),
        (
            err(RateLimitLayer::builder()
                .policy(tb(1, "a"))
                .policy(tb(2, "a"))),
            ConfigError::DuplicatePolicy { name: "a".into() },
            "two different policies are named \"a\"",
        ),
        (
            err(RateLimitLayer::builder()
                .policy(tb(1, "a"))
                .policy(tb(1, "a"))),
            ConfigError::RepeatedPolicy { name: "a".into() },
            "policy \"a\" appears twice in one set",
        ),
        (
            err(RateLimitLayer::builder()
                .policies(Policies::new().otherwise((0..9).map(|i| tb(1, &format!("p{i}")))))),
            ConfigError::TooManyPolicies { count: 9, max: 8 },
            "at most 8 policies apply to one request",
        ),
        (
            Limiter::memory([], MemoryStore::new()).expect_err("no policy"),
            ConfigError::EmptyLimiter,
            "a limiter needs at least one policy",
        ),
    ];
    for (got, want, message) in cases {
        assert_eq!(got, want);
        assert_eq!(
            got.to_string(),
            format!("invalid rate limit configuration: {message}")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn throttle_mode_waits_for_capacity_then_refuses_beyond_the_maximum() {
    let build = |max_delay| {
        service(
            RateLimitLayer::builder()
                .policy(Policy::token_bucket(1, Rate::per_second(1.0)))
                .memory(MemoryStore::with_clock(TokioClock::new()))
                .throttle(max_delay)
                .build()
                .expect("valid"),
        )
    };
    let mut patient = build(Duration::from_secs(2));
    assert!(admitted(&mut patient, 1).await);
    let started = tokio::time::Instant::now();
    assert!(admitted(&mut patient, 1).await, "waits for the next token");
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    let mut hasty = build(Duration::from_millis(500));
    assert!(admitted(&mut hasty, 1).await);
    let started = tokio::time::Instant::now();
    assert!(
        !admitted(&mut hasty, 1).await,
        "a second is more than it may wait"
    );
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
}

#[tokio::test]
async fn a_custom_refusal_keeps_the_rate_limit_fields() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::token_bucket(1, Rate::per_minute(1.0)).named("chat"))
        .refusal(|refused| {
            tower_ai_core::reject::Refusal::too_many_requests()
                .problem_type("https://example.com/problems/slow-down")
                .detail(format!(
                    "{} left for {}",
                    refused.decision.remaining(),
                    refused.key
                ))
        })
        .build()
        .expect("valid");
    let mut svc = service(layer);
    assert!(admitted(&mut svc, 7).await);
    let res = send(&mut svc, from(7)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(res.headers()), Some(Duration::from_secs(60)));
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    let doc = json(res).await;
    assert_eq!(doc["type"], "https://example.com/problems/slow-down");
    assert_eq!(doc["detail"], "0 left for ip:192.0.2.7");
}
