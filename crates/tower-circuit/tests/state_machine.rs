//! Every transition at exactly its configured boundary, for each window kind,
//! on paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Plan, Seen, Upstream, advance, call, ms, secs, state};
use tower::Layer;
use tower_circuit::{CircuitBreakerLayer, Jitter, State, Window};

fn failure() -> Plan {
    Plan::status(500)
}

fn success() -> Plan {
    Plan::ok()
}

fn refused(retry: u64) -> Seen {
    Seen::Refused(503, Some(retry.to_string()))
}

#[tokio::test(start_paused = true)]
async fn count_window_opens_at_the_exact_rate_and_minimum() {
    let layer = CircuitBreakerLayer::builder()
        .name("count")
        .window(Window::count(20))
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .open_wait(secs(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.clone());

    // Nine failures: 100 %, but below the minimum number of calls.
    for _ in 0..9 {
        assert_eq!(call(&mut svc, failure()).await, Seen::Upstream(500, true));
    }
    assert_eq!(state(&handle), State::Closed);
    // The tenth call, a success, makes 9/10 = 90 %: open.
    assert_eq!(call(&mut svc, success()).await, Seen::Upstream(200, true));
    assert_eq!(state(&handle), State::Open);
    assert_eq!(call(&mut svc, success()).await, refused(30));
    assert_eq!(upstream.calls(), 10);

    // Again from a fresh window: 4 failures in 10 calls (40 %) stay closed,
    // then 5/11 = 45 % stays closed, and 6/12 = 50 % opens.
    handle.reset("count").unwrap();
    for plan in [failure(), success()].into_iter().cycle().take(8) {
        call(&mut svc, plan).await;
    }
    call(&mut svc, success()).await;
    call(&mut svc, success()).await;
    let snap = handle.get("count").unwrap();
    assert_eq!((snap.calls_in_window, snap.failures_in_window), (10, 4));
    assert_eq!(snap.failure_rate, Some(40.0));
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Open);

    // The window slides: 20 successes push old failures out.
    handle.reset("count").unwrap();
    for _ in 0..9 {
        call(&mut svc, failure()).await;
    }
    for _ in 0..20 {
        call(&mut svc, success()).await;
    }
    // (9 failures then 1 success opened it at call 10.)
    assert_eq!(state(&handle), State::Open);
    handle.reset("count").unwrap();
    for _ in 0..20 {
        call(&mut svc, success()).await;
    }
    for _ in 0..9 {
        call(&mut svc, failure()).await;
    }
    // 9/20 = 45 %: closed; the tenth failure makes 10/20 = 50 %.
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_wait_then_half_open_then_closed_at_exact_times() {
    let layer = CircuitBreakerLayer::builder()
        .name("times")
        .window(Window::consecutive(2))
        .open_wait(secs(30))
        .half_open_trials(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.clone());

    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Open);

    // Refused until exactly 30 s have passed; Retry-After counts down.
    assert_eq!(call(&mut svc, success()).await, refused(30));
    advance(secs(20)).await;
    assert_eq!(call(&mut svc, success()).await, refused(10));
    advance(secs(10) - Duration::from_nanos(1)).await;
    assert_eq!(call(&mut svc, success()).await, refused(1));
    assert_eq!(upstream.calls(), 2);
    advance(Duration::from_nanos(1)).await;

    // Half-open: three trial calls; two successes are not enough.
    assert_eq!(call(&mut svc, success()).await, Seen::Upstream(200, true));
    assert_eq!(state(&handle), State::HalfOpen);
    call(&mut svc, success()).await;
    assert_eq!(state(&handle), State::HalfOpen);
    assert_eq!(handle.get("times").unwrap().trial_successes, 2);
    call(&mut svc, success()).await;
    assert_eq!(state(&handle), State::Closed);
    assert_eq!(upstream.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_reopens_with_a_growing_capped_wait() {
    let layer = CircuitBreakerLayer::builder()
        .name("growth")
        .window(Window::consecutive(1))
        .open_wait(secs(10))
        .open_wait_growth(2.0, secs(60))
        .half_open_trials(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());

    call(&mut svc, failure()).await;
    // Each failed trial doubles the wait: 10, 20, 40, then capped at 60.
    for wait in [10, 20, 40, 60, 60] {
        assert_eq!(state(&handle), State::Open);
        assert_eq!(
            handle.get("growth").unwrap().open_wait_ms,
            Some(wait * 1000)
        );
        assert_eq!(call(&mut svc, success()).await, refused(wait));
        advance(secs(wait) - ms(1)).await;
        assert_eq!(call(&mut svc, success()).await, refused(1));
        advance(ms(1)).await;
        assert_eq!(call(&mut svc, failure()).await, Seen::Upstream(500, true));
    }
    // A success closes it, and the wait starts over.
    advance(secs(60)).await;
    call(&mut svc, success()).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, failure()).await;
    assert_eq!(handle.get("growth").unwrap().open_wait_ms, Some(10_000));
}

#[tokio::test(start_paused = true)]
async fn jitter_is_applied_after_growth_and_capped() {
    // A deterministic jitter: +50 % of the computed wait.
    let layer = CircuitBreakerLayer::builder()
        .name("jitter")
        .window(Window::consecutive(1))
        .open_wait(secs(10))
        .open_wait_growth(2.0, secs(40))
        .jitter(Jitter::from_fn(|wait| wait + wait / 2))
        .half_open_trials(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    call(&mut svc, failure()).await;
    // 10 → 15, 20 → 30, 40 → 60 capped to 40, 40 → 40.
    for wait in [15, 30, 40, 40] {
        assert_eq!(
            handle.get("jitter").unwrap().open_wait_ms,
            Some(wait * 1000)
        );
        advance(secs(wait) - ms(1)).await;
        assert_eq!(call(&mut svc, success()).await, refused(1));
        advance(ms(1)).await;
        call(&mut svc, failure()).await;
    }

    // A seeded random jitter: the same seed gives the same waits, within
    // ±20 % and under the cap.
    let waits = |seed| async move {
        let layer = CircuitBreakerLayer::builder()
            .name("seeded")
            .window(Window::consecutive(1))
            .open_wait(secs(10))
            .open_wait_growth(2.0, secs(30))
            .jitter(Jitter::seeded(0.2, seed))
            .half_open_trials(1)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(Upstream::default());
        call(&mut svc, failure()).await;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let wait = handle.get("seeded").unwrap().open_wait_ms.unwrap();
            waits.push(wait);
            // (The wait is shown in whole milliseconds.)
            advance(ms(wait + 1)).await;
            call(&mut svc, failure()).await;
        }
        waits
    };
    let a = waits(42).await;
    assert_eq!(a, waits(42).await);
    assert_ne!(a, waits(43).await);
    let base = [10_000, 20_000, 30_000, 30_000, 30_000, 30_000];
    for (wait, base) in a.iter().zip(base) {
        assert!(
            *wait >= base * 8 / 10 && *wait <= 30_000,
            "{wait} vs {base}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_window_counts_failures_in_a_row() {
    let layer = CircuitBreakerLayer::builder()
        .name("consecutive")
        .window(Window::consecutive(3))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    for plan in [failure(), failure(), success(), failure(), failure()] {
        call(&mut svc, plan).await;
    }
    assert_eq!(state(&handle), State::Closed);
    assert_eq!(
        handle.get("consecutive").unwrap().consecutive_failures,
        Some(2)
    );
    // Errors of the service and broken bodies are failures too.
    call(&mut svc, Plan::error()).await;
    assert_eq!(state(&handle), State::Open);

    handle.reset("consecutive").unwrap();
    call(&mut svc, Plan::broken()).await;
    call(&mut svc, Plan::status(429)).await;
    // 4xx other than 429 show a working upstream: a success.
    call(&mut svc, Plan::status(404)).await;
    call(&mut svc, Plan::status(503)).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, Plan::status(502)).await;
    call(&mut svc, Plan::status(504)).await;
    assert_eq!(state(&handle), State::Open);
}

#[tokio::test(start_paused = true)]
async fn consecutive_window_slow_calls() {
    let layer = CircuitBreakerLayer::builder()
        .name("slow")
        .window(Window::consecutive(2))
        .slow_call_duration(secs(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    // Just under the limit is not slow; at the limit is.
    call(&mut svc, Plan::slow(secs(2) - ms(1))).await;
    call(&mut svc, Plan::slow(secs(2))).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, Plan::slow(secs(3))).await;
    assert_eq!(state(&handle), State::Open);
    assert_eq!(handle.get("slow").unwrap().totals.slow, 2);
}

#[tokio::test(start_paused = true)]
async fn count_window_slow_call_rate() {
    let layer = CircuitBreakerLayer::builder()
        .name("slow-rate")
        .window(Window::count(10))
        .minimum_calls(4)
        .slow_call_duration(secs(2))
        .slow_call_rate_threshold(50.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    call(&mut svc, success()).await;
    call(&mut svc, success()).await;
    call(&mut svc, Plan::slow(secs(5))).await;
    call(&mut svc, Plan::slow(secs(2) - ms(1))).await;
    // 1 slow call of 4: 25 %.
    assert_eq!(state(&handle), State::Closed);
    assert_eq!(handle.get("slow-rate").unwrap().slow_call_rate, Some(25.0));
    call(&mut svc, Plan::slow(secs(2))).await;
    // 2 of 5: 40 %.
    assert_eq!(state(&handle), State::Closed);
    // 3 of 6: 50 %. The slow clock runs to the end of the body.
    let slow_body = Plan {
        chunks: vec![(Duration::ZERO, "a"), (secs(2), "b")],
        ..Plan::ok()
    };
    call(&mut svc, slow_body).await;
    assert_eq!(state(&handle), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_to_first_byte_limit() {
    let layer = CircuitBreakerLayer::builder()
        .name("ttfb")
        .window(Window::consecutive(2))
        .slow_first_byte(secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    // A long stream whose first byte is quick is not slow.
    let quick_start = Plan::sse(vec![
        (ms(10), "data: a\n\n"),
        (secs(30), "data: [DONE]\n\n"),
    ]);
    call(&mut svc, quick_start.clone()).await;
    call(&mut svc, quick_start).await;
    assert_eq!(state(&handle), State::Closed);
    let late_start = Plan::sse(vec![(secs(1), "data: a\n\n"), (ms(1), "data: [DONE]\n\n")]);
    call(&mut svc, late_start.clone()).await;
    call(&mut svc, late_start).await;
    assert_eq!(state(&handle), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_drops_calls_exactly_one_window_later() {
    let build = || {
        CircuitBreakerLayer::builder()
            .name("time")
            .window(Window::time_with_buckets(secs(10), 10))
            .minimum_calls(4)
            .failure_rate_threshold(50.0)
            .build()
            .unwrap()
    };

    // Three successes at t=0; three failures just before t=10 s make 3/6.
    let layer = build();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    for _ in 0..3 {
        call(&mut svc, success()).await;
    }
    advance(secs(10) - ms(1)).await;
    call(&mut svc, failure()).await;
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Open);

    // The same at exactly t=10 s: the successes have left the window, so the
    // three failures are below the minimum; the fourth opens it.
    let layer = build();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    for _ in 0..3 {
        call(&mut svc, success()).await;
    }
    advance(secs(10)).await;
    for _ in 0..3 {
        call(&mut svc, failure()).await;
    }
    assert_eq!(state(&handle), State::Closed);
    assert_eq!(handle.get("time").unwrap().calls_in_window, 3);
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_slow_calls() {
    let layer = CircuitBreakerLayer::builder()
        .name("time-slow")
        .window(Window::time(secs(60)))
        .minimum_calls(2)
        .failure_rate_threshold(100.0)
        .slow_call_duration(secs(10))
        .slow_call_rate_threshold(50.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    call(&mut svc, success()).await;
    call(&mut svc, Plan::slow(secs(10) - ms(1))).await;
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, Plan::slow(secs(10))).await;
    // 1 slow of 3: closed; 2 of 4: open.
    assert_eq!(state(&handle), State::Closed);
    call(&mut svc, Plan::slow(secs(11))).await;
    assert_eq!(state(&handle), State::Open);
    assert_eq!(handle.get("time-slow").unwrap().totals.slow, 2);
}

#[tokio::test(start_paused = true)]
async fn abandoned_calls_count_as_neither() {
    let layer = CircuitBreakerLayer::builder()
        .name("abandon")
        .window(Window::consecutive(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default());
    // The response future dropped before the head.
    {
        use tower::{Service, ServiceExt};
        let fut = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(Plan::slow(secs(5))));
        drop(fut);
        // A streamed body dropped midway.
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(Plan::sse(vec![
                (ms(1), "data: a\n\n"),
                (secs(10), "data: [DONE]\n\n"),
            ])))
            .await
            .unwrap();
        let mut body = res.into_body();
        let first = http_body_util::BodyExt::frame(&mut body).await;
        assert!(first.is_some());
        drop(body);
    }
    let snap = handle.get("abandon").unwrap();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(
        (
            snap.totals.ignored,
            snap.totals.failures,
            snap.totals.successes
        ),
        (2, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn transitions_are_reported() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let layer = CircuitBreakerLayer::builder()
        .name("events")
        .window(Window::consecutive(1))
        .open_wait(secs(1))
        .half_open_trials(1)
        .on_transition(move |t| {
            log.lock()
                .unwrap()
                .push((t.from, t.to, t.cause, t.open_wait));
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstream::default());
    call(&mut svc, failure()).await;
    advance(secs(1)).await;
    call(&mut svc, success()).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (
                State::Closed,
                State::Open,
                "consecutive failures",
                Some(secs(1))
            ),
            (State::Open, State::HalfOpen, "open wait over", None),
            (
                State::HalfOpen,
                State::Closed,
                "trial calls succeeded",
                None
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn manual_control() {
    let layer = CircuitBreakerLayer::builder()
        .name("manual")
        .window(Window::consecutive(1))
        .open_wait(secs(7))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.clone());

    handle.force_open("manual").unwrap();
    assert_eq!(call(&mut svc, success()).await, refused(7));
    advance(secs(3600)).await;
    assert_eq!(call(&mut svc, success()).await, refused(7));

    // Forced closed: calls go through and are counted, but it never opens.
    handle.force_closed("manual").unwrap();
    for _ in 0..5 {
        call(&mut svc, failure()).await;
    }
    assert_eq!(state(&handle), State::ForcedClosed);
    assert_eq!(handle.get("manual").unwrap().totals.failures, 5);

    // Disabled: nothing is recorded.
    handle.disable("manual").unwrap();
    call(&mut svc, failure()).await;
    assert_eq!(handle.get("manual").unwrap().totals.failures, 5);
    assert_eq!(state(&handle), State::Disabled);

    handle.reset("manual").unwrap();
    call(&mut svc, failure()).await;
    assert_eq!(state(&handle), State::Open);
    assert!(handle.force_open("other").is_err());
    assert_eq!(upstream.calls(), 7);
}
