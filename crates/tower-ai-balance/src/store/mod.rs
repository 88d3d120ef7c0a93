//! Where the balancer's state is shared: in memory by default (each
//! replica on its own), through Redis with the `redis` feature.

#[cfg(feature = "redis")]
pub(crate) mod redis;
