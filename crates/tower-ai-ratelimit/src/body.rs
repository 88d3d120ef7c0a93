//! The response body: the inner body, watched for the reported token usage
//! when the request was charged to token policies.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::key::ClientKey;
use tower_ai_core::llm::AnswerTap;

use crate::policy::Unit;
use crate::resolver::PolicySet;
use crate::store::{Backend, Charge};

pin_project! {
    /// The body of a rate-limited response.
    ///
    /// When the request was charged to token policies, the body is read as
    /// it passes (never held up) for the answer's `usage`: the JSON body's,
    /// or a stream's final usage chunk. When the body ends, the charge is
    /// reconciled: the difference between the estimate and the reported
    /// total is charged or given back. A body dropped before its end keeps
    /// the estimate.
    pub struct RateLimitBody<B> {
        #[pin]
        inner: ResponseBody<B>,
        reconcile: Option<Box<Reconcile>>,
    }
}

impl<B> RateLimitBody<B> {
    pub(crate) fn new(inner: ResponseBody<B>, reconcile: Option<Box<Reconcile>>) -> Self {
        Self { inner, reconcile }
    }
}

impl<B> fmt::Debug for RateLimitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBody")
            .field("reconciles", &self.reconcile.is_some())
            .finish_non_exhaustive()
    }
}

/// What reconciliation needs once the body ends.
pub(crate) struct Reconcile {
    pub(crate) tap: AnswerTap,
    pub(crate) backend: Backend,
    pub(crate) key: ClientKey,
    pub(crate) set: PolicySet,
    pub(crate) estimate: u64,
}

impl Reconcile {
    fn finish(mut self: Box<Self>) {
        let Some(usage) = self.tap.finish().usage else {
            return;
        };
        let actual = usage.total();
        if actual == self.estimate {
            return;
        }
        let (amount, refund) = if actual > self.estimate {
            (actual - self.estimate, false)
        } else {
            (self.estimate - actual, true)
        };
        metrics::counter!("tower_ai_ratelimit_reconciled_tokens_total", "direction" => if refund { "refund" } else { "charge" })
            .increment(amount);
        let this = *self;
        match &this.backend {
            Backend::Memory(store) => {
                for charge in token_charges(&this.set, amount) {
                    store.adjust(&this.key, &charge, refund);
                }
            }
            #[cfg(feature = "redis")]
            Backend::Redis(_) => {
                let Ok(handle) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                handle.spawn(async move {
                    for charge in token_charges(&this.set, amount) {
                        this.backend.adjust(&this.key, charge, refund).await;
                    }
                });
            }
        }
    }
}

/// `amount` tokens for each token policy of `set`.
fn token_charges(set: &PolicySet, amount: u64) -> impl Iterator<Item = Charge<'_>> {
    set.iter()
        .filter(|c| c.policy.unit() == Unit::Tokens)
        .map(move |c| Charge {
            slot: c.slot,
            name: c.policy.name(),
            spec: c.spec,
            cost: amount,
        })
}

impl<B> Body for RateLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(r), Some(data)) = (this.reconcile.as_mut(), frame.data_ref()) {
                    r.tap.observe(data);
                }
                // A server stops polling a body that says it has ended, so
                // the end is seen here, not only at the final `None`.
                if this.inner.is_end_stream()
                    && let Some(r) = this.reconcile.take()
                {
                    r.finish();
                }
            }
            None => {
                if let Some(r) = this.reconcile.take() {
                    r.finish();
                }
            }
            // A broken body keeps the estimate.
            Some(Err(_)) => *this.reconcile = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
