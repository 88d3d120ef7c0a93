#![doc = include_str!("../README.md")]
//!
//! Each layer crate is re-exported behind a cargo feature of the same short
//! name; all are on by default.

mod builder;

pub use builder::ServiceBuilderExt;
pub use tower_ai_core as core;

#[cfg(feature = "balance")]
#[doc(inline)]
pub use tower_ai_balance as balance;
#[cfg(feature = "cache")]
#[doc(inline)]
pub use tower_ai_cache as cache;
#[cfg(feature = "context")]
#[doc(inline)]
pub use tower_ai_context as context;
#[cfg(feature = "ratelimit")]
#[doc(inline)]
pub use tower_ai_ratelimit as ratelimit;
#[cfg(feature = "circuit")]
#[doc(inline)]
pub use tower_circuit as circuit;
#[cfg(feature = "session")]
#[doc(inline)]
pub use tower_session as session;
#[cfg(feature = "sse")]
#[doc(inline)]
pub use tower_sse_relay as sse;
