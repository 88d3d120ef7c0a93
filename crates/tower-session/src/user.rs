//! [`UserLayer`]: puts the session's user and plan tier in the request's
//! extensions, for layers that read them synchronously (a rate limiter's
//! tier resolver, a `KeyExtractor` keyed by user).
//!
//! [`SessionLayer`](crate::SessionLayer) is lazy: it never reads the store
//! before the handler does. A layer that must know the user *before* the
//! handler runs, and can't await, gets it from this layer, placed between
//! the two:
//!
//! ```text
//! SessionLayer -> UserLayer -> rate limiter -> … -> handler
//! ```
//!
//! For a request that carries a session id, `UserLayer` loads the session
//! (one round trip) and, when it has a user, the user's profile (one more),
//! then inserts [`SessionUser`], [`Profile`] and
//! [`tower_ai_core::key::Tier`] (from the profile's `tier` field). The
//! handler reuses what was loaded: reading the session or the profile again
//! costs nothing. A request without a session id costs nothing at all. When
//! the store fails and the session layer's policy is
//! [`OutagePolicy::Refuse`](crate::OutagePolicy::Refuse), the request is
//! answered `503` here, before the inner layers do any work.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_ai_core::key::{Extension, KeyExtractor, Tier};
//! use tower_session::{MemoryStore, SessionLayer, SessionUser, UserLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = SessionLayer::new(MemoryStore::new());
//! let admin = sessions.sessions();
//! let app = ServiceBuilder::new()
//!     .layer(sessions)
//!     .layer(UserLayer::new())
//!     .service_fn(|req: Request<()>| async move {
//!         // What a rate limiter would see, without awaiting anything.
//!         let tier = req.extensions().get::<Tier>().map(|t| t.as_str().to_owned());
//!         let keyed = Extension::<SessionUser>::new().extract(&req).is_some();
//!         Ok::<_, Infallible>(Response::new(format!("{tier:?} {keyed}")))
//!     });
//! # let _ = (app, admin);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::key::Tier;
use tower_ai_core::reject::{Refusal, is_grpc};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;
use crate::profile::Profile;
use crate::session::Session;
use crate::store::BoxFuture;

/// The session's user, as a request extension (set by [`UserLayer`]).
///
/// `AsRef<[u8]>`, so `tower_ai_core::key::Extension::<SessionUser>` keys a
/// rate limiter by user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionUser(pub Arc<str>);

impl SessionUser {
    /// The user's id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for SessionUser {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Loads the session's user (and profile) before the inner service runs;
/// see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct UserLayer {
    profile: bool,
}

impl UserLayer {
    /// A layer that loads the user and the user's profile.
    pub const fn new() -> Self {
        Self { profile: true }
    }

    /// Loads the user only: no profile, no [`Tier`] (one round trip less).
    #[must_use]
    pub const fn without_profile(mut self) -> Self {
        self.profile = false;
        self
    }
}

impl Default for UserLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for UserLayer {
    type Service = LoadUser<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadUser {
            inner,
            profile: self.profile,
        }
    }
}

/// The service built by [`UserLayer`].
#[derive(Debug, Clone)]
pub struct LoadUser<S> {
    inner: S,
    profile: bool,
}

impl<S> LoadUser<S> {
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

/// What [`LoadUser`] found.
struct Found {
    user: Option<SessionUser>,
    profile: Option<Profile>,
    refuse: bool,
}

async fn identify(session: Session, profile: bool) -> Found {
    let refuses = session.refuses_on_outage();
    let outage = |e: &Error| refuses && matches!(e, Error::Store(s) if s.is_outage());
    let user = match session.user_id().await {
        Ok(user) => user,
        Err(e) => {
            return Found {
                user: None,
                profile: None,
                refuse: outage(&e),
            };
        }
    };
    let profile = match (&user, profile) {
        (Some(_), true) => match session.profile().await {
            Ok(profile) => profile,
            Err(e) => {
                return Found {
                    user: None,
                    profile: None,
                    refuse: outage(&e),
                };
            }
        },
        _ => None,
    };
    Found {
        user: user.map(|u| SessionUser(Arc::from(u))),
        profile,
        refuse: false,
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LoadUser<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = UserFuture<S, S::Future, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let session = req
            .extensions()
            .get::<Session>()
            .filter(|s| s.id().is_some())
            .cloned();
        let Some(session) = session else {
            // No session layer, or a visitor without an id: nothing to load.
            return UserFuture::inner(self.inner.call(req));
        };
        // The instance polled ready goes into the future.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        UserFuture::loading(Box::pin(identify(session, self.profile)), inner, req)
    }
}

pin_project! {
    /// The response future of [`LoadUser`]: loads, then calls the inner
    /// service with the extensions set.
    pub struct UserFuture<S, F, R> {
        #[pin]
        kind: Kind<S, F, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, F, R> {
        Loading {
            found: BoxFuture<'static, Found>,
            service: Option<S>,
            request: Option<Request<R>>,
        },
        Inner {
            #[pin]
            future: F,
        },
    }
}

impl<S, F, R> UserFuture<S, F, R> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    fn loading(found: BoxFuture<'static, Found>, service: S, request: Request<R>) -> Self {
        Self {
            kind: Kind::Loading {
                found,
                service: Some(service),
                request: Some(request),
            },
        }
    }
}

impl<S, F, R> fmt::Debug for UserFuture<S, F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Loading { .. } => "loading",
            Kind::Inner { .. } => "inner",
        };
        f.debug_struct("UserFuture").field("state", &state).finish()
    }
}

impl<S, R, B> Future for UserFuture<S, S::Future, R>
where
    S: Service<Request<R>, Response = Response<B>>,
{
    type Output = Result<Response<ResponseBody<B>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().kind.project() {
                KindProj::Loading {
                    found,
                    service,
                    request,
                } => {
                    let found = ready!(found.as_mut().poll(cx));
                    let (Some(mut service), Some(mut request)) = (service.take(), request.take())
                    else {
                        return Poll::Pending;
                    };
                    if found.refuse {
                        let refusal = Refusal::service_unavailable()
                            .detail("the session store is unavailable")
                            .retry_after(std::time::Duration::from_secs(1));
                        return Poll::Ready(Ok(if is_grpc(request.headers()) {
                            refusal.into_grpc()
                        } else {
                            refusal.into_http()
                        }));
                    }
                    let extensions = request.extensions_mut();
                    if let Some(tier) = found.profile.as_ref().and_then(Profile::tier) {
                        extensions.insert(Tier::new(tier));
                    }
                    if let Some(profile) = found.profile {
                        extensions.insert(profile);
                    }
                    if let Some(user) = found.user {
                        extensions.insert(user);
                    }
                    let future = service.call(request);
                    self.as_mut().project().kind.set(Kind::Inner { future });
                }
                KindProj::Inner { future } => {
                    return future.poll(cx).map_ok(|res| res.map(ResponseBody::inner));
                }
            }
        }
    }
}
