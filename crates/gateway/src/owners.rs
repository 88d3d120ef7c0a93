//! Who started each resumable stream: only its owner may re-attach.
//!
//! The relay names each streamed answer in its `x-stream-id` response
//! header; the gateway records the owner (the configured key, else the
//! client's key or address, digested) under that id, in Redis when it has
//! one and in memory always. `GET /v1/streams/{id}` from anyone else gets
//! the same `404` as an id that never existed.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use http::StatusCode;
use tower_ai_core::redis::{Degrade, KeySpace, Tag};
use tower_ai_core::reject::Refusal;

/// How long an owner is remembered: longer than a stream is kept.
const REMEMBER: Duration = Duration::from_secs(3_600);

/// A stream owner: a digest, never the key itself.
pub(crate) type Owner = [u8; 32];

/// The owner records.
#[derive(Debug, Clone)]
pub(crate) struct Owners {
    memory: moka::sync::Cache<Arc<str>, Owner>,
    redis: Option<(fred::clients::Client, Degrade, KeySpace)>,
}

impl Owners {
    pub(crate) fn new(redis: Option<(fred::clients::Client, Degrade)>) -> Self {
        Self {
            memory: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REMEMBER)
                .build(),
            redis: redis.map(|(c, d)| (c, d, KeySpace::new("tower-ai", "gateway"))),
        }
    }

    fn key(keys: &KeySpace, stream: &str) -> String {
        keys.key(&Tag::digest(stream.as_bytes()), "stream-owner")
    }

    /// Records `owner` as the owner of `stream`.
    pub(crate) async fn record(&self, stream: &str, owner: Owner) {
        self.memory.insert(stream.into(), owner);
        if let Some((client, degrade, keys)) = &self.redis {
            let set = degrade
                .call(client.set::<(), _, _>(
                    Self::key(keys, stream),
                    owner.as_slice(),
                    Some(Expiration::EX(REMEMBER.as_secs() as i64)),
                    None,
                    false,
                ))
                .await;
            if let Err(e) = set {
                tracing::warn!(error = %e, "a stream's owner was recorded on this replica only");
            }
        }
    }

    /// Whether `owner` may read `stream`.
    pub(crate) async fn allows(&self, stream: &str, owner: &Owner) -> bool {
        if let Some(known) = self.memory.get(stream) {
            return known == *owner;
        }
        if let Some((client, degrade, keys)) = &self.redis {
            let got = degrade
                .call(client.get::<Option<Vec<u8>>, _>(Self::key(keys, stream)))
                .await;
            if let Ok(Some(known)) = got {
                return known.as_slice() == owner.as_slice();
            }
        }
        false
    }
}

/// What a stream that isn't the caller's looks like: the relay's answer
/// for an id it doesn't know.
pub(crate) fn unknown_stream() -> axum::response::Response {
    Refusal::new(StatusCode::NOT_FOUND)
        .title("Unknown stream")
        .into_http::<axum::body::Body>()
        .map(axum::body::Body::new)
}
