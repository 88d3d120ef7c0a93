//! Property tests: random call outcomes, held and dropped calls, time and
//! manual control never lead to an invalid state, and half-open never runs
//! more than its trial calls at once.

mod common;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Plan, Upstream, ms};
use http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};
use tower_circuit::{CircuitBreakerLayer, CircuitHandle, Control, State, Window};

#[derive(Debug, Clone)]
enum Op {
    /// A call answered with this plan, read to its end.
    Call(Kind),
    /// A call whose response future is kept, not polled.
    Hold(Kind),
    /// Finish (poll to the end) or drop a held call.
    Release {
        index: usize,
        finish: bool,
    },
    Advance(u64),
    Control(Control),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Success,
    Failure,
    Error,
    Broken,
    Slow,
}

impl Kind {
    fn plan(self) -> Plan {
        match self {
            Self::Success => Plan::ok(),
            Self::Failure => Plan::status(503),
            Self::Error => Plan::error(),
            Self::Broken => Plan::broken(),
            Self::Slow => Plan::slow(ms(1_500)),
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Success),
        3 => Just(Kind::Failure),
        1 => Just(Kind::Error),
        1 => Just(Kind::Broken),
        1 => Just(Kind::Slow),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => kind().prop_map(Op::Call),
        3 => kind().prop_map(Op::Hold),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(index, finish)| Op::Release { index, finish }),
        3 => (0u64..4_000).prop_map(Op::Advance),
        1 => prop_oneof![
            Just(Control::ForceOpen),
            Just(Control::ForceClosed),
            Just(Control::Disable),
            Just(Control::Reset),
        ]
        .prop_map(Op::Control),
    ]
}

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        (1u32..5).prop_map(Window::consecutive),
        (1u32..12).prop_map(Window::count),
        (1u64..20).prop_map(|s| Window::time_with_buckets(Duration::from_secs(s), 4)),
    ]
}

type Held = Pin<Box<dyn Future<Output = ()>>>;

struct HeldCall {
    fut: Held,
    /// The transition count when it was admitted as a half-open trial.
    trial_of: Option<usize>,
}

const TRIALS: u32 = 3;
const MAX_WAIT: Duration = Duration::from_secs(8);

fn check(
    handle: &CircuitHandle,
    held: &[HeldCall],
    transitions: usize,
) -> Result<(), TestCaseError> {
    let snap = handle
        .get("prop")
        .ok_or_else(|| TestCaseError::fail("no breaker"))?;
    prop_assert!(
        snap.trials_in_flight + snap.trial_successes <= TRIALS,
        "{snap:?}"
    );
    match snap.state {
        State::Closed | State::ForcedClosed | State::Disabled => {
            prop_assert_eq!(snap.trials_in_flight, 0);
            prop_assert_eq!(snap.trial_successes, 0);
            prop_assert!(snap.open_remaining_ms.is_none());
        }
        State::Open => {
            let remaining = snap.open_remaining_ms.unwrap_or(u64::MAX);
            prop_assert!(remaining <= MAX_WAIT.as_millis() as u64, "{snap:?}");
            prop_assert_eq!(snap.trials_in_flight, 0);
        }
        State::HalfOpen => {
            prop_assert!(snap.trial_successes < TRIALS);
            // The trials of this half-open period still running, as the test
            // sees them, never exceed the configured number.
            let running = held
                .iter()
                .filter(|h| h.trial_of == Some(transitions))
                .count();
            prop_assert!(running <= TRIALS as usize, "{running} trials: {snap:?}");
            prop_assert_eq!(running as u32, snap.trials_in_flight);
        }
        State::ForcedOpen => prop_assert!(snap.open_remaining_ms.is_none()),
    }
    for rate in [snap.failure_rate, snap.slow_call_rate]
        .into_iter()
        .flatten()
    {
        prop_assert!((0.0..=100.0).contains(&rate));
    }
    Ok(())
}

fn run(window: Window, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    runtime.block_on(async move {
        let transitions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&transitions);
        let layer = CircuitBreakerLayer::builder()
            .name("prop")
            .window(window)
            .minimum_calls(1)
            .failure_rate_threshold(50.0)
            .slow_call_duration(Duration::from_secs(1))
            .slow_call_rate_threshold(75.0)
            .open_wait(Duration::from_secs(1))
            .open_wait_growth(2.0, MAX_WAIT)
            .half_open_trials(TRIALS)
            .trial_lease(Duration::from_secs(1_000_000))
            .on_transition(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let handle = layer.handle();
        let upstream = Upstream::default();
        let mut svc = layer.layer(upstream.clone());
        let mut held: Vec<HeldCall> = Vec::new();
        for op in ops {
            match op {
                Op::Call(kind) => {
                    let _ = common::call(&mut svc, kind.plan()).await;
                }
                Op::Hold(kind) => {
                    let before = upstream.calls();
                    let ready = svc
                        .ready()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let fut = ready.call(Request::new(kind.plan()));
                    let reached = upstream.calls() > before;
                    let is_trial = reached && handle.state("prop") == Some(State::HalfOpen);
                    held.push(HeldCall {
                        fut: Box::pin(async move {
                            if let Ok(res) = fut.await {
                                let _ = res.into_body().collect().await;
                            }
                        }),
                        trial_of: is_trial.then(|| transitions.load(Ordering::SeqCst)),
                    });
                }
                Op::Release { index, finish } => {
                    if !held.is_empty() {
                        let call = held.swap_remove(index % held.len());
                        if finish {
                            call.fut.await;
                        }
                    }
                }
                Op::Advance(millis) => tokio::time::advance(ms(millis)).await,
                Op::Control(control) => {
                    handle
                        .control("prop", control)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            // Calls admitted before the last transition are no trials of the
            // current half-open period.
            check(&handle, &held, transitions.load(Ordering::SeqCst))?;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_an_invalid_state_nor_too_many_trials(
        window in window(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(window, ops)?;
    }

    /// Sequential calls through a count window open the circuit exactly when
    /// a reference model of the window says so.
    #[test]
    fn count_window_matches_a_reference_model(
        size in 1u32..25,
        minimum in 1u32..25,
        threshold in prop_oneof![Just(25.0), Just(50.0), Just(75.0), Just(100.0)],
        outcomes in proptest::collection::vec(any::<bool>(), 1..80),
    ) {
        let minimum = minimum.min(size);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        runtime.block_on(async move {
            let layer = CircuitBreakerLayer::builder()
                .name("model")
                .window(Window::count(size))
                .minimum_calls(minimum)
                .failure_rate_threshold(threshold)
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let handle = layer.handle();
            let mut svc = layer.layer(Upstream::default());
            let mut model: VecDeque<bool> = VecDeque::new();
            for failed in outcomes {
                let plan = if failed { Plan::status(500) } else { Plan::ok() };
                let _ = common::call(&mut svc, plan).await;
                model.push_back(failed);
                if model.len() > size as usize {
                    model.pop_front();
                }
                let calls = model.len() as f64;
                let failures = model.iter().filter(|f| **f).count() as f64;
                let should_open = model.len() >= minimum as usize && failures * 100.0 >= threshold * calls;
                let state = handle.state("model");
                if should_open {
                    prop_assert_eq!(state, Some(State::Open));
                    break;
                }
                prop_assert_eq!(state, Some(State::Closed));
            }
            Ok(())
        })?;
    }
}
