//! The circuit breaker's cost in the closed state, beside the bare service,
//! in one criterion group.
//!
//! The service is a trivial `service_fn` that answers at once with a
//! one-chunk body. Each benchmark polls `ready`, calls, and polls the
//! response future once (`now_or_never`):
//!
//! - `call/*`: the response is dropped unread (the breaker records the call
//!   as abandoned when its body is dropped);
//! - `call_and_body/*`: the body is read to its end as well, where the
//!   breaker judges and records the call (a success);
//! - `*/bare`: the service alone; `*/breaker`: behind `CircuitBreakerLayer`
//!   with its defaults (a 100-call count window); `*/breaker_consecutive`:
//!   with the lock-free consecutive-failures window; `*/breaker_slow_calls`:
//!   with slow-call judging on (two clock reads per call).
//!
//! Run: `cargo bench --bench circuit` (add `-- --quick` for a short run).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ai::circuit::{CircuitBreakerLayer, Window};

#[path = "support/ratio.rs"]
mod ratio;

fn upstream()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    service_fn(|_req: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    })
}

/// One call; with `read_body`, the body is polled to its end.
#[inline]
fn one_call<S, B>(svc: &mut S, read_body: bool)
where
    S: Service<Request<()>, Response = Response<B>>,
    B: BodyExt + Unpin,
{
    let Some(Ok(svc)) = svc.ready().now_or_never() else {
        return;
    };
    let Some(Ok(res)) = svc.call(Request::new(())).now_or_never() else {
        return;
    };
    let mut body = res.into_body();
    if read_body {
        while let Some(Some(Ok(frame))) = body.frame().now_or_never() {
            black_box(frame);
        }
    }
    black_box(body);
}

fn closed_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("circuit_closed");
    group.measurement_time(Duration::from_secs(3));

    let breaker = || CircuitBreakerLayer::new().layer(upstream());
    let consecutive = || {
        CircuitBreakerLayer::builder()
            .window(Window::consecutive(5))
            .build()
            .map(|layer| layer.layer(upstream()))
    };
    let slow_calls = || {
        CircuitBreakerLayer::builder()
            .slow_call_duration(Duration::from_secs(10))
            .build()
            .map(|layer| layer.layer(upstream()))
    };

    for (name, read_body) in [("call", false), ("call_and_body", true)] {
        let mut svc = upstream();
        group.bench_function(format!("{name}/bare"), |b| {
            b.iter(|| one_call(&mut svc, read_body))
        });
        let mut svc = breaker();
        group.bench_function(format!("{name}/breaker"), |b| {
            b.iter(|| one_call(&mut svc, read_body))
        });
        if let Ok(mut svc) = consecutive() {
            group.bench_function(format!("{name}/breaker_consecutive"), |b| {
                b.iter(|| one_call(&mut svc, read_body))
            });
        }
        if let Ok(mut svc) = slow_calls() {
            group.bench_function(format!("{name}/breaker_slow_calls"), |b| {
                b.iter(|| one_call(&mut svc, read_body))
            });
        }
    }
    group.finish();
    for name in ["call", "call_and_body"] {
        ratio::added(
            "circuit_closed",
            &format!("{name}/bare"),
            &format!("{name}/breaker"),
            None,
            "≤ 20 ns",
        );
    }
}

criterion_group!(benches, closed_state);
criterion_main!(benches);
