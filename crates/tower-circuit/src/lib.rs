#![doc = include_str!("../README.md")]

mod body;
mod breaker;
pub mod classify;
mod config;
pub mod fallback;
pub mod future;
pub mod handle;
pub mod key;
mod layer;
mod registry;
mod service;
mod state;
#[cfg(feature = "redis")]
mod store;
mod window;

pub use body::CircuitBody;
pub use classify::{DefaultClassifier, Outcome};
pub use config::{ConfigError, Jitter, Window};
pub use fallback::{FallbackContext, FallbackReason, NoFallback};
pub use future::ResponseFuture;
pub use handle::CircuitHandle;
pub use key::{ByExtension, ByHeader, ByHost, KeyExtractor, Single, key_fn};
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use service::CircuitBreaker;
pub use state::{CircuitSnapshot, Control, State, Transition};
#[cfg(feature = "redis")]
pub use store::redis::{RedisStore, RedisStoreBuilder};
