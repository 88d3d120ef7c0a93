//! [`BalanceLayer`].

use tower_layer::Layer;

use crate::pool::Pool;
use crate::service::Balance;

/// A [`Layer`] that wraps a service in a [`Balance`]: each request is sent
/// to an endpoint of a [`Pool`], picked with the request in hand.
///
/// The pool's state lives behind an `Arc`: every service the layer makes
/// and every clone shares it.
#[derive(Debug, Clone)]
pub struct BalanceLayer<T> {
    pool: Option<Pool<T>>,
}

impl<T> BalanceLayer<T> {
    /// Balances every request over `pool` (unless the request carries a
    /// [`Pool`] of its own in its extensions).
    pub fn new(pool: Pool<T>) -> Self {
        Self { pool: Some(pool) }
    }

    /// Balances each request over the [`Pool`] in its extensions (one per
    /// model, inserted by the router above); a request without one passes
    /// through.
    pub fn per_request() -> Self {
        Self { pool: None }
    }
}

impl<S, T: Clone> Layer<S> for BalanceLayer<T> {
    type Service = Balance<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance::new(inner, self.pool.clone())
    }
}
