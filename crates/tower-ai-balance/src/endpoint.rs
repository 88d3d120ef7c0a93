//! [`Endpoint`]: one server or deployment a pool can pick.

use std::sync::Arc;

/// One server (or deployment) of a [`Pool`](crate::Pool): a name for
/// metrics and status, a `target` the inner service routes by, a
/// concurrency limit and a weight.
///
/// The balancer inserts the picked endpoint into the request's extensions
/// before calling the inner service, which reads
/// `req.extensions().get::<Endpoint<T>>()` to know where to send it. Cloning
/// one costs an `Arc` and a clone of `T`.
#[derive(Debug, Clone)]
pub struct Endpoint<T> {
    name: Arc<str>,
    target: T,
    max_concurrency: u32,
    weight: u32,
}

impl<T> Endpoint<T> {
    /// An endpoint named `name` (shown in metrics and status: take it from
    /// configuration, never from a request), with at most 256 requests in
    /// flight and a weight of 1.
    pub fn new(name: impl Into<Arc<str>>, target: T) -> Self {
        Self {
            name: name.into(),
            target,
            max_concurrency: 256,
            weight: 1,
        }
    }

    /// Sets how many requests may be in flight on this endpoint at once (its
    /// permits); a request waits when every endpoint is full.
    #[must_use]
    pub const fn max_concurrency(mut self, permits: u32) -> Self {
        self.max_concurrency = permits;
        self
    }

    /// Sets the endpoint's share of the load: its tokens in flight are
    /// divided by its weight when loads are compared, so a weight-2 endpoint
    /// is given about twice the work.
    #[must_use]
    pub const fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where requests picked for this endpoint go.
    pub fn target(&self) -> &T {
        &self.target
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    pub(crate) fn permits(&self) -> u32 {
        self.max_concurrency
    }

    pub(crate) fn share(&self) -> u32 {
        self.weight
    }
}

/// The endpoint's name: a picked endpoint can key what sits below the
/// balancer (a circuit breaker per endpoint, a metric label).
impl<T> AsRef<str> for Endpoint<T> {
    fn as_ref(&self) -> &str {
        &self.name
    }
}
