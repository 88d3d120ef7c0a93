#![doc = include_str!("../README.md")]

mod body;
mod carrier;
pub mod chat;
mod config;
mod error;
#[cfg(feature = "axum")]
mod extract;
pub mod future;
pub mod history;
mod id;
mod layer;
mod profile;
mod service;
mod session;
mod sessions;
pub mod store;
mod turn;
mod user;

pub use body::SessionBody;
pub use chat::{ChatHistory, ChatHistoryLayer, RecordedTurn};
pub use config::OutagePolicy;
pub use cookie::SameSite;
pub use error::{ConfigError, Error, StoreError, StoreErrorKind};
pub use history::{History, Role, Turn};
pub use id::Id;
pub use layer::{
    DEFAULT_COOKIE_NAME, DEFAULT_HISTORY_TURNS, DEFAULT_MAX_TURN_BYTES, DEFAULT_TOUCH_INTERVAL,
    DEFAULT_TTL, DEFAULT_USER_FIELD, SessionBuilder, SessionLayer,
};
pub use profile::{Profile, TIER_FIELD};
pub use service::SessionManager;
pub use session::Session;
pub use sessions::Sessions;
pub use store::{MemoryStore, SessionStore};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
pub use user::{LoadUser, SessionUser, UserLayer};
