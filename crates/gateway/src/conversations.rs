//! Durable conversations (`[persistence]`): each turn a signed-in session's
//! chat adds to its history is also queued for PostgreSQL, written every few
//! turns, at sign-out and after a delay, off the request's path. PostgreSQL
//! down never slows or fails a chat: the turns wait (bounded) and are
//! written when it is back. `GET /admin/conversations/{id}` reads one back.
//!
//! A conversation is named by a digest of its session id (the id itself is
//! a credential and never leaves the session store); `GET /session` shows it
//! to the signed-in client.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_ai_context::durable::{
    ConversationSink, DurableConfig, DurableWriter, PostgresSink, Turn, WriterStats,
};
use tower_ai_core::reject::Refusal;
use tower_session::{Id, RecordedTurn};

use crate::AppState;
use crate::config::{ConfigError, PersistenceConfig};
use crate::respond::{bad_request, problem};

/// The writer and the sink it writes to.
#[derive(Clone)]
pub(crate) struct Conversations {
    writer: DurableWriter,
    sink: Arc<PostgresSink>,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations")
            .field("table", &self.sink.table())
            .field("stats", &self.writer.stats())
            .finish()
    }
}

impl Conversations {
    /// The sink (connected lazily: PostgreSQL may be down at start) and
    /// the writer's task.
    pub(crate) fn start(config: &PersistenceConfig) -> Result<Self, ConfigError> {
        let sink = PostgresSink::builder(config.postgres_url.expose())
            .table(config.table.clone())
            .build()
            .map_err(|e| ConfigError::new(format!("[persistence]: {e}")))?;
        let sink = Arc::new(sink);
        let writer = DurableWriter::spawn(
            Arc::clone(&sink) as Arc<dyn ConversationSink>,
            DurableConfig::default()
                .every_turns(config.every_turns)
                .max_delay(config.max_delay),
        );
        Ok(Self { writer, sink })
    }

    /// What `ChatHistoryLayer::on_turn` calls: queues the turn, never waits.
    pub(crate) fn record(&self, recorded: &RecordedTurn<'_>) {
        let turn = Turn::new(
            conversation_id(recorded.session),
            recorded.position,
            recorded.turn.role.as_str(),
            recorded.turn.content.clone(),
        )
        .tokens(u64::from(recorded.turn.tokens));
        if let Err(e) = self.writer.record(turn) {
            tracing::warn!(error = %e, "a conversation turn was not queued for PostgreSQL");
        }
    }

    /// The session ended: its buffered turns go now.
    pub(crate) fn end(&self, session: Id) {
        self.writer.end(&conversation_id(session));
    }

    /// Writes what is buffered, waiting at most `limit` (at shutdown).
    pub(crate) async fn flush(&self, limit: Duration) {
        match tokio::time::timeout(limit, self.writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "conversations not flushed"),
            Err(_) => tracing::warn!(
                held = self.writer.stats().held,
                "PostgreSQL too slow at shutdown: conversation turns not written"
            ),
        }
    }
}

/// `GET /admin/conversations`: what the writer holds and has written.
pub(crate) async fn stats(State(state): State<AppState>) -> Response {
    let Some(conversations) = state.conversations.as_ref() else {
        return not_persisted();
    };
    let WriterStats {
        held,
        written,
        refused,
        rejected,
        failures,
        ..
    } = conversations.writer.stats();
    axum::Json(json!({
        "table": conversations.sink.table(),
        "connected": conversations.sink.is_connected(),
        "held": held,
        "written": written,
        "refused": refused,
        "rejected": rejected,
        "failures": failures,
    }))
    .into_response()
}

fn not_persisted() -> Response {
    problem(
        Refusal::new(http::StatusCode::NOT_FOUND),
        "not_found_error",
        "conversations are not persisted: the config has no [persistence]",
    )
}

/// The conversation of session `id`: 32 hex digits of a SHA-256 of it.
pub(crate) fn conversation_id(id: Id) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tower-ai conversation\0");
    hasher.update(id.as_str().as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut half = [0u8; 16];
    half.copy_from_slice(&digest[..16]);
    format!("{:032x}", u128::from_be_bytes(half))
}

/// `GET /admin/conversations/{id}`: the turns PostgreSQL holds, in order.
pub(crate) async fn read(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(conversations) = state.conversations.as_ref() else {
        return not_persisted();
    };
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return bad_request("a conversation id is 32 lowercase hex digits");
    }
    match conversations.sink.read(&id).await {
        Ok(turns) => axum::Json(json!({
            "conversation": id,
            "turns": turns.iter().map(|t| json!({
                "index": t.index,
                "role": t.role,
                "content": t.content,
                "tokens": t.tokens,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => problem(
            Refusal::service_unavailable(),
            "api_error",
            &format!("the conversation store could not be read: {e}"),
        ),
    }
}
