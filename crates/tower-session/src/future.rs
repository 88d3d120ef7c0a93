//! Response futures: [`ResponseFuture`] of
//! [`SessionManager`](crate::SessionManager), [`UserFuture`] of
//! [`LoadUser`](crate::LoadUser).
//!
//! # Example
//! Driving the service by hand, as a server would:
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, header};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_session::{MemoryStore, Session, SessionLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Infallible> {
//! let handler = service_fn(|req: Request<String>| async move {
//!     if let Some(session) = req.extensions().get::<Session>() {
//!         session.insert("seen", true).ok();
//!     }
//!     Ok::<_, Infallible>(Response::new(String::from("hi")))
//! });
//! let mut svc = SessionLayer::new(MemoryStore::new()).layer(handler);
//! let future: tower_session::future::ResponseFuture<_, String> =
//!     svc.ready().await?.call(Request::new(String::new()));
//! let res = future.await?;
//! assert!(res.headers().contains_key(header::SET_COOKIE));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::reject::Refusal;

use crate::body::SessionBody;
use crate::session::{CookieAction, HeadOutcome, Session};
use crate::store::BoxFuture;

pub use crate::user::UserFuture;

pin_project! {
    /// Waits for the inner service, then — only when the session was used —
    /// saves its changes and sets the cookie before handing on the head.
    ///
    /// Dropped while saving (the client went away), it lets the save finish
    /// in a spawned task rather than cut it short.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }

    impl<F, B> PinnedDrop for ResponseFuture<F, B> {
        fn drop(this: Pin<&mut Self>) {
            if let StateProj::Finishing { finish, .. } = this.project().state.project() {
                let finish = std::mem::replace(finish, Box::pin(std::future::ready(HeadOutcome::none())));
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        finish.await;
                    });
                }
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner {
            #[pin]
            future: F,
            session: Option<Session>,
            grpc: bool,
        },
        Finishing {
            finish: BoxFuture<'static, HeadOutcome>,
            response: Option<Response<B>>,
            session: Option<Session>,
            grpc: bool,
        },
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, session: Session, grpc: bool) -> Self {
        Self {
            state: State::Inner {
                future,
                session: Some(session),
                grpc,
            },
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Inner { .. } => "inner",
            State::Finishing { .. } => "saving",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<SessionBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Inner {
                    future,
                    session,
                    grpc,
                } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(e) => {
                            self.as_mut().project().state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    };
                    let grpc = *grpc;
                    let Some(session) = session.take() else {
                        return Poll::Ready(Ok(
                            response.map(|b| SessionBody::new(ResponseBody::inner(b), None))
                        ));
                    };
                    if !session.needs_finish() {
                        // The session was not used, or only read within the
                        // touch interval: nothing to save, nothing to set.
                        let outcome = session.head_sent();
                        self.as_mut().project().state.set(State::Done);
                        return Poll::Ready(Ok(apply(response, outcome, session, grpc)));
                    }
                    let finish: BoxFuture<'static, HeadOutcome> =
                        Box::pin(session.clone().finish_head());
                    self.as_mut().project().state.set(State::Finishing {
                        finish,
                        response: Some(response),
                        session: Some(session),
                        grpc,
                    });
                }
                StateProj::Finishing {
                    finish,
                    response,
                    session,
                    grpc,
                } => {
                    let outcome = ready!(finish.as_mut().poll(cx));
                    let grpc = *grpc;
                    let (Some(response), Some(session)) = (response.take(), session.take()) else {
                        // Unreachable: both are set with the state.
                        self.as_mut().project().state.set(State::Done);
                        continue;
                    };
                    self.as_mut().project().state.set(State::Done);
                    return Poll::Ready(Ok(apply(response, outcome, session, grpc)));
                }
                StateProj::Done => return Poll::Pending,
            }
        }
    }
}

/// Puts the session's outcome on the response: a `503` when the store
/// failed and the policy refuses, else the cookie changes, and the body
/// wrapper that saves what changes while it streams.
fn apply<B>(
    response: Response<B>,
    outcome: HeadOutcome,
    session: Session,
    grpc: bool,
) -> Response<SessionBody<B>> {
    if outcome.refuse {
        metrics::counter!("tower_ai_session_refused_total").increment(1);
        let refusal = Refusal::service_unavailable()
            .detail("the session store is unavailable")
            .retry_after(Duration::from_secs(1));
        let refused = if grpc {
            refusal.into_grpc::<B>()
        } else {
            refusal.into_http::<B>()
        };
        return refused.map(|body| SessionBody::new(body, None));
    }
    let (mut parts, body) = response.into_parts();
    let carrier = &session.config_ref().carrier;
    match (outcome.cookie, outcome.id) {
        (CookieAction::Set, Some(id)) => {
            carrier.write(&mut parts.headers, outcome.source, &id, outcome.max_age);
        }
        (CookieAction::Remove, _) => carrier.remove(&mut parts.headers, outcome.source),
        _ => {}
    }
    Response::from_parts(
        parts,
        SessionBody::new(ResponseBody::inner(body), Some(session)),
    )
}
