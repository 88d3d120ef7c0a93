//! [`SessionManager`]: the service built by [`SessionLayer`](crate::SessionLayer).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::body::SessionBody;
use crate::config::Config;
use crate::future::ResponseFuture;
use crate::session::Session;

/// Gives each request a lazy [`Session`] in its extensions and saves what
/// the handler changed; built by [`SessionLayer`](crate::SessionLayer).
///
/// `call` reads the id from the request (no allocation, no store access)
/// and hands on a `Session`; the store is reached only if someone uses it.
#[derive(Clone)]
pub struct SessionManager<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> SessionManager<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SessionManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionManager<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<SessionBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let offered = self.config.carrier.read(req.headers());
        if let Some(why) = offered.rejected {
            metrics::counter!("tower_ai_session_rejected_ids_total", "reason" => why.as_str())
                .increment(1);
            tracing::debug!(reason = why.as_str(), "session id from the client refused");
        }
        let grpc = tower_ai_core::reject::is_grpc(req.headers());
        let session = Session::new(Arc::clone(&self.config), offered.id, offered.source);
        req.extensions_mut().insert(session.clone());
        ResponseFuture::new(self.inner.call(req), session, grpc)
    }
}
