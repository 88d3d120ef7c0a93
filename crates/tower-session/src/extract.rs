//! `axum` integration (feature `axum`): [`Session`] as an extractor, and
//! [`Error`] as a response.
//!
//! # Example
//! ```
//! use axum::{Router, routing::get};
//! use tower_session::{MemoryStore, Session, SessionLayer};
//!
//! async fn visits(session: Session) -> Result<String, tower_session::Error> {
//!     let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", n)?;
//!     Ok(format!("visit {n}"))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(visits))
//!     .layer(SessionLayer::new(MemoryStore::new()));
//! # let _ = app;
//! ```

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use tower_ai_core::reject::Refusal;

use crate::error::Error;
use crate::session::Session;

fn respond(refusal: Refusal) -> Response {
    refusal.into_http::<Body>().map(Body::new)
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = Response;

    /// The request's session; a `500` problem document when no
    /// [`SessionLayer`](crate::SessionLayer) is in front of the route.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Session>().cloned().ok_or_else(|| {
            respond(
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR)
                    .detail("no SessionLayer in front of this route"),
            )
        })
    }
}

/// A problem document: `503` for a store outage, `401` for a session
/// without a user, `413` for an oversized history turn, `500` otherwise.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let refusal = match &self {
            Self::Store(e) if e.is_outage() => Refusal::service_unavailable()
                .detail("the session store is unavailable")
                .retry_after(std::time::Duration::from_secs(1)),
            Self::NoUser => Refusal::unauthorized().detail("the session has no user"),
            Self::TurnTooLarge { .. } => Refusal::payload_too_large().detail(self.to_string()),
            _ => Refusal::new(StatusCode::INTERNAL_SERVER_ERROR).detail(self.to_string()),
        };
        respond(refusal)
    }
}
