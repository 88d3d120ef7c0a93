//! What an upstream answer cost: tokens and spend per model and key, time to
//! first token and duration, and the settling of the caller's budget
//! reservation, all read from the answer's own usage as its body passes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use pin_project_lite::pin_project;
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
    }

    impl PinnedDrop for Metered {
        fn drop(this: Pin<&mut Self>) {
            if let Some(meter) = this.project().meter.take() {
                meter.finish();
            }
        }
    }
}

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
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
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
                if this.inner.is_end_stream()
                    && let Some(meter) = this.meter.take()
                {
                    meter.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => {
                if let Some(meter) = this.meter.take() {
                    meter.finish();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Meter {
    fn finish(mut self: Box<Self>) {
        let summary = self.tap.finish();
        let spec = &self.spec;
        let (model, key) = (label(&spec.model), label(&spec.key));
        metrics::histogram!("tower_ai_gateway_request_duration_seconds", "model" => model.clone())
            .record(spec.started.elapsed().as_secs_f64());
        if let Some(reason) = &summary.finish_reason {
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
        if let Some(reservation) = self.reservation.take() {
            let actual = cost.unwrap_or(reservation.estimate);
            let budgets = spec.budgets.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { budgets.settle(reservation, actual).await });
            }
        }
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
