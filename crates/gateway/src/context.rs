//! The context layer and the semantic cache in the gateway: sessions as the
//! history and profile sources, the configured embeddings model (called
//! through the gateway's own model routes, with its provider key) as the
//! embedder, an embedded vector index, and the documents' admin endpoints.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body_util::Full;
use serde_json::json;
use tower_ai_context::{
    BoxFuture, ContextLayer, Embedder, HistorySource, HttpEmbedder, IndexRetriever, MemoryIndex,
    Message, PUBLIC, ProfileSource, SourceError, TenantScope, VectorIndex,
};
use tower_ai_core::key::{ApiKey, ClientKey, KeyExtractor, RequestHead};
use tower_ai_core::reject::Refusal;
use tower_session::Session;
use tower_session::history::Role;

use crate::AppState;
use crate::auth::CallerExt;
use crate::config::{ContextBackend, ContextConfig};
use crate::respond::problem;

/// What the gateway keeps of the context machinery.
#[derive(Clone)]
pub(crate) struct ContextState {
    pub(crate) layer: ContextLayer,
    pub(crate) retriever: IndexRetriever,
    pub(crate) embedder: Arc<dyn Embedder>,
    pub(crate) index: Arc<dyn VectorIndex>,
}

impl std::fmt::Debug for ContextState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextState")
            .field("layer", &self.layer)
            .field("embedder", &self.embedder.model())
            .field("index", &self.index.name())
            .finish()
    }
}

/// The gateway's state, set once it is built (the embedder calls the
/// gateway's own model routes, which are part of it). Weak: the state holds
/// the embedder, and a strong reference back would keep a stopped gateway's
/// state (its clients, tables and tasks' handles) alive for ever.
pub(crate) type StateCell = Arc<OnceLock<crate::WeakState>>;

impl ContextState {
    pub(crate) fn new(
        config: &ContextConfig,
        cell: &StateCell,
        redis: Option<&crate::RedisState>,
    ) -> Self {
        let embedder: Arc<dyn Embedder> = Arc::new(
            HttpEmbedder::builder(Own(Arc::clone(cell)), config.embeddings_model.clone())
                .dimensions(Some(config.dimensions))
                .build(),
        );
        let index: Arc<dyn VectorIndex> = match (config.backend, redis) {
            (ContextBackend::Redis, Some(redis)) => Arc::new(
                tower_ai_context::redis::RedisIndex::builder(
                    redis.client.clone(),
                    &config.embeddings_model,
                    config.dimensions,
                )
                .degrade(redis.degrade.clone())
                .build(),
            ),
            _ => Arc::new(
                MemoryIndex::builder(config.embeddings_model.clone(), config.dimensions).build(),
            ),
        };
        let retriever = IndexRetriever::new(Arc::clone(&embedder), Arc::clone(&index))
            .min_score(config.min_score);
        let layer = ContextLayer::builder()
            .history(SessionHistory)
            .profile(SessionProfile)
            .retriever(retriever.clone())
            .tenant(Tenant)
            .history_turns(config.history_turns)
            .top_k(config.top_k)
            .budget(config.budget_tokens)
            .max_body(crate::MAX_CHAT_BODY)
            .build();
        Self {
            layer,
            retriever,
            embedder,
            index,
        }
    }
}

/// A request's tenant: its client key's name in the config, else its API
/// key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tenant;

impl Tenant {
    fn named(name: &str) -> ClientKey {
        ClientKey::digest("tenant", name)
    }
}

impl KeyExtractor for Tenant {
    fn extract_head(&self, head: RequestHead<'_>) -> Option<ClientKey> {
        match head.extensions.get::<CallerExt>() {
            Some(caller) => Some(Self::named(&caller.0.name)),
            None => ApiKey::new().extract_head(head),
        }
    }
}

/// The session's conversation memory.
#[derive(Debug, Clone, Copy)]
struct SessionHistory;

impl HistorySource for SessionHistory {
    fn history<'a>(
        &'a self,
        parts: &'a Parts,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, SourceError>> {
        Box::pin(async move {
            let Some(session) = parts.extensions.get::<Session>() else {
                return Ok(Vec::new());
            };
            let turns = session
                .history()
                .last(n)
                .await
                .map_err(|e| SourceError(e.to_string()))?;
            Ok(turns
                .into_iter()
                .filter_map(|turn| {
                    let role = match turn.role {
                        Role::User => "user",
                        Role::Assistant => "assistant",
                        _ => return None,
                    };
                    Some(Message::new(role, turn.content))
                })
                .collect())
        })
    }
}

/// The signed-in user's profile.
#[derive(Debug, Clone, Copy)]
struct SessionProfile;

impl ProfileSource for SessionProfile {
    fn profile<'a>(
        &'a self,
        parts: &'a Parts,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, SourceError>> {
        Box::pin(async move {
            let Some(session) = parts.extensions.get::<Session>() else {
                return Ok(Vec::new());
            };
            let profile = session
                .profile()
                .await
                .map_err(|e| SourceError(e.to_string()))?;
            Ok(profile
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default())
        })
    }
}

/// The gateway's own model routes, as a service for the embedder: an
/// embeddings request goes where a client's would, with the model's
/// provider key, balancing and circuit.
#[derive(Clone)]
struct Own(StateCell);

impl tower::Service<Request<Full<Bytes>>> for Own {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let cell = Arc::clone(&self.0);
        Box::pin(async move {
            let Some(state) = cell.get().and_then(crate::WeakState::upgrade) else {
                return Ok(problem(
                    Refusal::service_unavailable(),
                    "service_unavailable",
                    "the gateway is starting or stopping",
                ));
            };
            Ok(crate::proxy::model_call(State(state), req.map(Body::new)).await)
        })
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct DocumentBody {
    id: String,
    text: String,
    /// A client key's name (`[[keys]]`), or absent with `public: true`.
    tenant: Option<String>,
    #[serde(default)]
    public: bool,
}

#[derive(serde::Deserialize)]
pub(crate) struct Scope {
    tenant: Option<String>,
    #[serde(default)]
    public: bool,
}

/// A document's scope, or `None` when the request names none (or both).
fn scope_of(tenant: Option<&str>, public: bool) -> Option<String> {
    match (tenant, public) {
        (None, true) => Some(PUBLIC.to_owned()),
        (Some(name), false) if valid(name) => {
            Some(TenantScope::of(&Tenant::named(name)).0.to_string())
        }
        _ => None,
    }
}

const SCOPE: &str = "a document belongs to one `tenant` (a client key's name) or is `public: true`";

fn valid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control)
}

fn bad(detail: &str) -> Response {
    problem(Refusal::bad_request(), "invalid_request_error", detail)
}

fn unavailable(detail: &str) -> Response {
    problem(
        Refusal::new(http::StatusCode::BAD_GATEWAY),
        "context_unavailable",
        detail,
    )
}

/// `POST /admin/context/documents` with `{"id", "text", "tenant"}` (or
/// `"public": true`): chunked, embedded and stored, replacing an earlier
/// version.
pub(crate) async fn put_document(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(context) = &state.context else {
        return problem(
            Refusal::new(http::StatusCode::NOT_FOUND),
            "invalid_request_error",
            "the context layer is off: add a [context] section",
        );
    };
    let doc: DocumentBody = match serde_json::from_slice(&body) {
        Ok(doc) => doc,
        Err(e) => return bad(&format!("expected {{\"id\", \"text\", \"tenant\"}}: {e}")),
    };
    if !valid(&doc.id) || doc.id.contains('#') {
        return bad("a document id is 1 to 256 characters, without control characters or '#'");
    }
    let Some(scope) = scope_of(doc.tenant.as_deref(), doc.public) else {
        return bad(SCOPE);
    };
    match context.retriever.ingest(&scope, &doc.id, &doc.text).await {
        Ok(chunks) => axum::Json(json!({"id": doc.id, "chunks": chunks})).into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}

/// `DELETE /admin/context/documents/{id}?tenant=…` (or `?public=true`).
pub(crate) async fn delete_document(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(scope): Query<Scope>,
) -> Response {
    let Some(context) = &state.context else {
        return problem(
            Refusal::new(http::StatusCode::NOT_FOUND),
            "invalid_request_error",
            "the context layer is off: add a [context] section",
        );
    };
    let Some(scope) = scope_of(scope.tenant.as_deref(), scope.public) else {
        return bad(SCOPE);
    };
    match context.retriever.delete(&scope, &id).await {
        Ok(chunks) => axum::Json(json!({"id": id, "deleted": chunks})).into_response(),
        Err(e) => unavailable(&e.to_string()),
    }
}
