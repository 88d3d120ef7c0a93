//! [`ServiceBuilderExt`]: the layers as [`ServiceBuilder`] methods.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::ServiceBuilder;
//! use tower_ai::ServiceBuilderExt;
//! use tower_ai::cache::CacheLayer;
//! use tower_ai::circuit::CircuitBreakerLayer;
//! use tower_ai::ratelimit::{Policy, Rate, RateLimitLayer};
//! use tower_ai::session::SessionLayer;
//!
//! let limits = RateLimitLayer::builder()
//!     .policy(Policy::token_bucket(5, Rate::per_second(0.1)))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .sessions(SessionLayer::new(tower_ai::session::MemoryStore::new()))
//!     .token_cost()
//!     .ai_rate_limit(limits)
//!     .ai_cache(CacheLayer::new())
//!     .circuit_breaker(CircuitBreakerLayer::new())
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//! # let _ = svc;
//! ```

use tower::ServiceBuilder;
use tower::layer::util::Stack;

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds each layer of this workspace to a [`ServiceBuilder`] by name, so a
/// stack reads in the order requests go through it. Each method is
/// `.layer(the layer)`; a method is there when its crate's feature is on.
///
/// The trait is sealed: it is implemented for [`ServiceBuilder`] only, so
/// a feature adding methods breaks no implementation.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Rate limits (see [`crate::ratelimit`]); named `ai_` because
    /// `ServiceBuilder::rate_limit` is tower's own (feature `limit`).
    #[cfg(feature = "ratelimit")]
    fn ai_rate_limit<K>(
        self,
        layer: crate::ratelimit::RateLimitLayer<K>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::RateLimitLayer<K>, L>>;

    /// LLM token estimates for the rate limiter's token policies, with the
    /// default limits ([`crate::ratelimit::TokenCostLayer::new`]); put it
    /// before [`ServiceBuilderExt::ai_rate_limit`].
    #[cfg(feature = "ratelimit")]
    fn token_cost(self) -> ServiceBuilder<Stack<crate::ratelimit::TokenCostLayer, L>>;

    /// The response cache (see [`crate::cache`]).
    #[cfg(feature = "cache")]
    fn ai_cache(
        self,
        layer: crate::cache::CacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::CacheLayer, L>>;

    /// A circuit breaker (see [`crate::circuit`]).
    #[cfg(feature = "circuit")]
    fn circuit_breaker<K, C, F>(
        self,
        layer: crate::circuit::CircuitBreakerLayer<K, C, F>,
    ) -> ServiceBuilder<Stack<crate::circuit::CircuitBreakerLayer<K, C, F>, L>>;

    /// The SSE relay (see [`crate::sse`]).
    #[cfg(feature = "sse")]
    fn sse_relay<St>(
        self,
        layer: crate::sse::SseRelayLayer<St>,
    ) -> ServiceBuilder<Stack<crate::sse::SseRelayLayer<St>, L>>;

    /// Sessions (see [`crate::session`]).
    #[cfg(feature = "session")]
    fn sessions(
        self,
        layer: crate::session::SessionLayer,
    ) -> ServiceBuilder<Stack<crate::session::SessionLayer, L>>;

    /// The load balancer (see [`crate::balance`]).
    #[cfg(feature = "balance")]
    fn balance<T>(
        self,
        layer: crate::balance::BalanceLayer<T>,
    ) -> ServiceBuilder<Stack<crate::balance::BalanceLayer<T>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "ratelimit")]
    fn ai_rate_limit<K>(
        self,
        layer: crate::ratelimit::RateLimitLayer<K>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::RateLimitLayer<K>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "ratelimit")]
    fn token_cost(self) -> ServiceBuilder<Stack<crate::ratelimit::TokenCostLayer, L>> {
        self.layer(crate::ratelimit::TokenCostLayer::new())
    }

    #[cfg(feature = "cache")]
    fn ai_cache(
        self,
        layer: crate::cache::CacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::CacheLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit")]
    fn circuit_breaker<K, C, F>(
        self,
        layer: crate::circuit::CircuitBreakerLayer<K, C, F>,
    ) -> ServiceBuilder<Stack<crate::circuit::CircuitBreakerLayer<K, C, F>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "sse")]
    fn sse_relay<St>(
        self,
        layer: crate::sse::SseRelayLayer<St>,
    ) -> ServiceBuilder<Stack<crate::sse::SseRelayLayer<St>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "session")]
    fn sessions(
        self,
        layer: crate::session::SessionLayer,
    ) -> ServiceBuilder<Stack<crate::session::SessionLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "balance")]
    fn balance<T>(
        self,
        layer: crate::balance::BalanceLayer<T>,
    ) -> ServiceBuilder<Stack<crate::balance::BalanceLayer<T>, L>> {
        self.layer(layer)
    }
}
