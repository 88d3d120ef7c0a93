//! What an upstream answer cost: tokens and spend per model and key, time to
//! first token and duration, and the settling of the caller's budget
//! reservation, all read from the answer's own usage as its body passes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tower_ai_core::future::BoxFuture;
use tower_ai_core::llm::AnswerTap;

use crate::budget::{Budgets, Reservation};
use crate::config::Price;

/// A JSON answer is read for its usage up to this size.
const JSON_LIMIT: usize = 4 << 20;

/// What the upstream client needs to meter an answer, in the request's
/// extensions.
#[derive(Debug, Clone)]
pub(crate) struct MeterSpec {
    /// The call's span: it ends with the answer, and records its usage.
    pub(crate) span: tracing::Span,
    /// The model's name in the config.
    pub(crate) model: Arc<str>,
    /// The key's name in the config (`-` without a key table).
    pub(crate) key: Arc<str>,
    pub(crate) price: Option<Price>,
    /// The budget reservation, taken by the first answer that is metered;
    /// still here afterwards means no upstream answered.
    pub(crate) reservation: Arc<Mutex<Option<Reservation>>>,
    pub(crate) budgets: Budgets,
    pub(crate) started: Instant,
}

pin_project! {
    /// A response body that meters the answer as it passes.
    pub(crate) struct Metered {
        #[pin]
        inner: Body,
        meter: Option<Box<Meter>>,
        // The budget's settlement, and the answer's last frame, held until
        // it is done.
        settling: Option<(Settle, Option<Frame<Bytes>>)>,
    }

    impl PinnedDrop for Metered {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let settle = match (this.settling.take(), this.meter.take()) {
                (Some((settle, _)), _) => Some(settle),
                (None, Some(meter)) => meter.finish(),
                (None, None) => None,
            };
            // The client went away: the settlement still completes.
            if let Some(settle) = settle
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                runtime.spawn(settle);
            }
        }
    }
}

/// A budget reservation's settlement at the answer's real cost.
type Settle = BoxFuture<()>;

struct Meter {
    spec: MeterSpec,
    reservation: Option<Reservation>,
    tap: AnswerTap,
    first_byte: bool,
}

impl Metered {
    /// Wraps an upstream answer's body; its reading of a JSON answer is
    /// shared with the layers above (`SharedAnswer`).
    pub(crate) fn wrap(spec: MeterSpec, head: &mut http::response::Parts, inner: Body) -> Body {
        let reservation = spec.reservation.lock().take();
        Body::new(Self {
            inner,
            meter: Some(Box::new(Meter {
                tap: AnswerTap::for_response(&head.headers, JSON_LIMIT).share(&mut head.extensions),
                spec,
                reservation,
                first_byte: false,
            })),
            settling: None,
        })
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if this.settling.is_some() {
            return settled(this.settling, cx);
        }
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(meter), Some(data)) = (this.meter.as_mut(), frame.data_ref()) {
                    if !meter.first_byte && !data.is_empty() {
                        meter.first_byte = true;
                        metrics::histogram!(
                            "tower_ai_gateway_time_to_first_token_seconds",
                            "model" => label(&meter.spec.model)
                        )
                        .record(meter.spec.started.elapsed().as_secs_f64());
                    }
                    meter.tap.observe(data);
                }
                // The last frame: finished now, before the layers above end
                // theirs (they read this one's `SharedAnswer`).
                this.inner.is_end_stream()
            }
            Poll::Ready(None) => true,
            // A failed answer is passed on at once; its settlement runs
            // beside it.
            Poll::Ready(Some(Err(_))) => {
                if let Some(settle) = this.meter.take().and_then(|meter| meter.finish())
                    && let Ok(runtime) = tokio::runtime::Handle::try_current()
                {
                    runtime.spawn(settle);
                }
                false
            }
            Poll::Pending => false,
        };
        if !ended {
            return polled;
        }
        let Some(settle) = this.meter.take().and_then(|meter| meter.finish()) else {
            return polled;
        };
        // The answer ends once its budget is settled: a client that reads
        // one answer and asks again, on any replica, finds its spend
        // counted at the real cost, not at the estimate.
        let last = match polled {
            Poll::Ready(Some(Ok(frame))) => Some(frame),
            _ => None,
        };
        *this.settling = Some((settle, last));
        settled(this.settling, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.settling.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.settling {
            Some((_, last)) => {
                let held = last
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |data| data.len() as u64);
                SizeHint::with_exact(held)
            }
            None => self.inner.size_hint(),
        }
    }
}

/// The held last frame (or the end) once the settlement is done.
fn settled(
    settling: &mut Option<(Settle, Option<Frame<Bytes>>)>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
    if let Some((settle, _)) = settling.as_mut() {
        ready!(settle.as_mut().poll(cx));
    }
    Poll::Ready(settling.take().and_then(|(_, last)| last).map(Ok))
}

impl Meter {
    /// Records the answer's metrics and span fields; returns the settlement
    /// of its budget reservation, if it had one.
    fn finish(mut self: Box<Self>) -> Option<Settle> {
        let summary = self.tap.finish();
        let spec = &self.spec;
        let (model, key) = (label(&spec.model), label(&spec.key));
        metrics::histogram!("tower_ai_gateway_request_duration_seconds", "model" => model.clone())
            .record(spec.started.elapsed().as_secs_f64());
        if let Some(reason) = &summary.finish_reason
            && !spec.span.is_disabled()
        {
            spec.span.record(
                "gen_ai.response.finish_reasons",
                format!("{reason:?}").to_lowercase(),
            );
        }
        if summary.error {
            spec.span.record("error.type", "answer_error");
        }
        let cost = match summary.usage {
            Some(usage) => {
                spec.span
                    .record("gen_ai.usage.input_tokens", int(usage.prompt_tokens));
                spec.span
                    .record("gen_ai.usage.output_tokens", int(usage.completion_tokens));
                metrics::counter!("tower_ai_gateway_input_tokens_total", "model" => model.clone(), "key" => key.clone())
                    .increment(usage.prompt_tokens);
                metrics::counter!("tower_ai_gateway_output_tokens_total", "model" => model.clone(), "key" => key.clone())
                    .increment(usage.completion_tokens);
                spec.price
                    .map(|p| p.nanos(usage.prompt_tokens, usage.completion_tokens))
            }
            // No usage reported (a stream without `include_usage`, a broken
            // answer): the estimate stands.
            None => self.reservation.as_ref().map(|r| r.estimate),
        };
        if let Some(cost) = cost {
            metrics::counter!("tower_ai_gateway_spend_nanodollars_total", "model" => model, "key" => key)
                .increment(cost);
        }
        let reservation = self.reservation.take()?;
        let actual = cost.unwrap_or(reservation.estimate);
        let budgets = spec.budgets.clone();
        Some(Box::pin(async move {
            budgets.settle(reservation, actual).await;
        }))
    }
}

/// A count as OpenTelemetry's integer type (it has no unsigned one).
pub(crate) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A label value shared with the config's name: no copy per request.
pub(crate) fn label(name: &Arc<str>) -> metrics::SharedString {
    metrics::SharedString::from_shared(name.clone())
}
