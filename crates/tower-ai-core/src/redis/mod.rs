//! Redis plumbing shared by every layer's Redis backend (feature `redis`).
//!
//! - [`connect`] / [`client`]: a `fred` client from one URL (standalone) or
//!   several (Cluster), with a reconnect policy that never gives up.
//! - [`Script`]: a Lua script called by `EVALSHA`, reloaded on `NOSCRIPT`.
//! - [`KeySpace`] and [`Tag`]: key names `{prefix}:{component}:{tag}:…` whose
//!   hash tag keeps a script's keys in one Cluster slot, and in which user
//!   input only ever appears as a digest.
//! - [`Degrade`]: the health of a Redis connection as the layers see it:
//!   after a failure or a timeout the callers use their local fallback for a
//!   backoff period, then one probe tries Redis again.
//! - [`StoreOptions`]: the key prefix and the [`Degrade`] every store builder
//!   takes, with their defaults.

mod client;
mod degrade;
mod key;
mod options;
mod script;

pub use client::{ConnectOptions, client, connect};
pub use degrade::{Degrade, DegradeConfig, Health, Unavailable};
pub use key::{KeySpace, Tag};
pub use options::{DEFAULT_PREFIX, StoreOptions};
pub use script::Script;

pub use fred;
