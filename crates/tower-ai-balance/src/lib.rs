#![doc = include_str!("../README.md")]

mod body;
mod config;
mod endpoint;
pub mod future;
mod layer;
mod load;
mod pool;
mod prefix;
mod prompt;
#[cfg(feature = "redis")]
pub mod pull;
mod retry;
mod service;
pub mod signals;
mod store;

pub use body::BalanceBody;
pub use config::{CacheAware, ConfigError, Strategy};
pub use endpoint::Endpoint;
pub use layer::BalanceLayer;
pub use pool::{EndpointStatus, Pool, PoolBuilder};
pub use service::Balance;
#[cfg(feature = "redis")]
pub use store::redis::{RedisStore, RedisStoreBuilder};
