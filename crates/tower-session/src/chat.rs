//! Chat turns into the signed-in session's conversation history, from any
//! chat route: [`ChatHistoryLayer`].
//!
//! Put it under a [`SessionLayer`](crate::SessionLayer) and above whatever
//! may answer a chat request (a response cache, the upstream): the user's
//! last message joins the history when a successful answer's head passes,
//! and the assistant's answer, streamed or not, when its body ends. A cached
//! answer joins the history like any other; a refused or failed one leaves
//! the history as it was.
//!
//! With [`ChatHistoryLayer::on_turn`], each turn recorded is also handed,
//! with its position in the session's conversation, to a function of yours:
//! how a conversation is copied to a durable store as it happens.
//!
//! # Example
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, service_fn};
//! use tower_session::{ChatHistoryLayer, MemoryStore, SessionLayer};
//!
//! let model = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(SessionLayer::new(MemoryStore::new()))
//!     .layer(ChatHistoryLayer::new())
//!     // A response cache would go here: its hits join the history too.
//!     .service(model);
//! # let _ = svc;
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_ai_core::body::{BoxError, ResponseBody, read_limited};
use tower_ai_core::future::LayerFuture;
use tower_ai_core::llm::{AnswerTap, estimated_tokens, last_user_message};
use tower_ai_core::reject::Refusal;
use tower_layer::Layer;
use tower_service::Service;

use crate::id::Id;
use crate::session::Session;
use crate::turn::Turn;

/// The largest chat request body read by default (1 MiB).
pub const DEFAULT_MAX_CHAT_BODY: usize = 1 << 20;
/// The most of an answer kept in the history by default (64 KiB).
pub const DEFAULT_MAX_ANSWER: usize = 64 << 10;
/// The session field holding the position of the conversation's next turn,
/// kept only when [`ChatHistoryLayer::on_turn`] is set.
pub const POSITION_FIELD: &str = "tower_session.turns";

/// A turn recorded by [`ChatHistoryLayer`], as handed to
/// [`ChatHistoryLayer::on_turn`].
#[derive(Debug)]
#[non_exhaustive]
pub struct RecordedTurn<'a> {
    /// The session's id (a secret: digest it before storing or logging).
    pub session: Id,
    /// The signed-in user.
    pub user: &'a str,
    /// The turn's 0-based position in the session's conversation: the
    /// question at an even one, its answer right after. Positions are handed
    /// out as requests arrive, one pair each (a question whose answer never
    /// came leaves a gap); two requests answered at the same time in one
    /// session may be handed the same pair.
    pub position: u64,
    /// The turn.
    pub turn: &'a Turn,
}

type OnTurn = Arc<dyn Fn(RecordedTurn<'_>) + Send + Sync>;

/// Records each chat exchange of a signed-in session into its history.
/// See the [module docs](self).
///
/// Costs nothing for a request without a body or without a signed-in
/// session beyond the session's user lookup; for a signed-in chat request,
/// one read of the body (up to [`ChatHistoryLayer::max_body`]) and a tap on
/// the answer as it passes.
#[derive(Clone)]
#[must_use]
pub struct ChatHistoryLayer {
    max_body: usize,
    max_answer: usize,
    on_turn: Option<OnTurn>,
}

impl fmt::Debug for ChatHistoryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatHistoryLayer")
            .field("max_body", &self.max_body)
            .field("max_answer", &self.max_answer)
            .field("on_turn", &self.on_turn.is_some())
            .finish()
    }
}

impl ChatHistoryLayer {
    /// The layer with the defaults.
    pub const fn new() -> Self {
        Self {
            max_body: DEFAULT_MAX_CHAT_BODY,
            max_answer: DEFAULT_MAX_ANSWER,
            on_turn: None,
        }
    }

    /// The largest request body read (larger: `413` problem+json).
    pub const fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most of an answer kept in the history (the rest is cut off).
    pub const fn max_answer(mut self, bytes: usize) -> Self {
        self.max_answer = bytes;
        self
    }

    /// Hands each turn that joins the history, with its position in the
    /// conversation, to `f`: the question when the answer's head passes, the
    /// answer when its body ends. `f` runs on the request's task (for the
    /// answer, inside the body's `poll_frame`): it must not block, e.g. it
    /// queues the turn for a durable store. The position is kept in the
    /// session's [`POSITION_FIELD`] field.
    pub fn on_turn(mut self, f: impl Fn(RecordedTurn<'_>) + Send + Sync + 'static) -> Self {
        self.on_turn = Some(Arc::new(f));
        self
    }
}

impl Default for ChatHistoryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ChatHistoryLayer {
    type Service = ChatHistory<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ChatHistory {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`ChatHistoryLayer`].
#[derive(Debug, Clone)]
pub struct ChatHistory<S> {
    inner: S,
    config: ChatHistoryLayer,
}

impl<S> ChatHistory<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ChatHistory<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ChatHistoryBody<ResBody>>;
    type Error = S::Error;
    type Future = ChatHistoryFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let session = match req.extensions().get::<Session>() {
            // A visitor without a session isn't signed in: no recording.
            Some(session) if !req.body().is_end_stream() && !session.is_blank() => session.clone(),
            _ => return LayerFuture::inner(self.inner.call(req), passthrough),
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        LayerFuture::boxed(Box::pin(record(inner, req, session, self.config.clone())))
    }
}

async fn record<S, ReqBody, ResBody>(
    mut inner: S,
    req: Request<ReqBody>,
    session: Session,
    config: ChatHistoryLayer,
) -> Result<Response<ChatHistoryBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes> + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
{
    let Ok(Some(user)) = session.user_id().await else {
        return inner.call(req).await.map(passthrough);
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_limited(body, config.max_body).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let head = Request::from_parts(parts, ());
            return Ok(Refusal::from(e)
                .for_request::<ResBody, _>(&head)
                .map(|body| ChatHistoryBody {
                    inner: body,
                    tap: None,
                    session: None,
                    observer: None,
                }));
        }
    };
    let question = last_user_message(&bytes);
    // The session was loaded to read its user: no store round trip.
    let position = match &config.on_turn {
        Some(_) => session.get::<u64>(POSITION_FIELD).await.ok().flatten(),
        None => None,
    };
    let res = inner
        .call(Request::from_parts(parts, ReqBody::from(bytes)))
        .await?;
    let Some(question) = question.filter(|_| res.status().is_success()) else {
        return Ok(passthrough(res));
    };
    let tokens = u32::try_from(estimated_tokens(question.len())).unwrap_or(u32::MAX);
    let turn = Turn::user(question, tokens);
    let observed = config.on_turn.as_ref().map(|_| turn.clone());
    if let Err(e) = session.history().append_later(turn) {
        tracing::debug!(error = %e, "the message could not join the history");
        return Ok(passthrough(res));
    }
    let observer = match (config.on_turn, observed, session.id()) {
        (Some(on_turn), Some(turn), Some(id)) => {
            let position = position.unwrap_or(0);
            if let Err(e) = session.insert(POSITION_FIELD, position.saturating_add(2)) {
                tracing::debug!(error = %e, "the conversation's position could not be kept");
            }
            on_turn(RecordedTurn {
                session: id,
                user: &user,
                position,
                turn: &turn,
            });
            Some(Box::new(Observer {
                on_turn,
                session: id,
                user,
                position: position.saturating_add(1),
            }))
        }
        _ => None,
    };
    let tap = AnswerTap::for_response(res.headers(), DEFAULT_MAX_CHAT_BODY)
        .gather_content(config.max_answer);
    Ok(res.map(|body| ChatHistoryBody {
        inner: ResponseBody::inner(body),
        tap: Some(Box::new(tap)),
        session: Some(session),
        observer,
    }))
}

fn passthrough<B>(res: Response<B>) -> Response<ChatHistoryBody<B>> {
    res.map(|body| ChatHistoryBody {
        inner: ResponseBody::inner(body),
        tap: None,
        session: None,
        observer: None,
    })
}

/// Where the answer goes besides the history.
struct Observer {
    on_turn: OnTurn,
    session: Id,
    user: String,
    position: u64,
}

/// The response future of [`ChatHistory`].
pub type ChatHistoryFuture<F, B, E> = LayerFuture<F, Response<B>, Response<ChatHistoryBody<B>>, E>;

pin_project! {
    /// The response body of [`ChatHistory`]: the answer, passed through as it
    /// comes; its text joins the history when it ends.
    pub struct ChatHistoryBody<B> {
        #[pin]
        inner: ResponseBody<B>,
        tap: Option<Box<AnswerTap>>,
        session: Option<Session>,
        observer: Option<Box<Observer>>,
    }
}

impl<B> fmt::Debug for ChatHistoryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatHistoryBody")
            .field("recording", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

/// The answer's text joins the history.
fn answered(tap: &mut AnswerTap, session: Option<&Session>, observer: Option<&Observer>) {
    let Some(session) = session else { return };
    let summary = tap.finish();
    let Some(content) = summary.content.clone().filter(|c| !c.is_empty()) else {
        return;
    };
    let tokens = summary
        .usage
        .map_or_else(|| estimated_tokens(content.len()), |u| u.completion_tokens);
    let turn = Turn::assistant(content, u32::try_from(tokens).unwrap_or(u32::MAX));
    let observed = observer.map(|_| turn.clone());
    if let Err(e) = session.history().append_later(turn) {
        tracing::debug!(error = %e, "the answer could not join the history");
        return;
    }
    if let (Some(observer), Some(turn)) = (observer, observed) {
        (observer.on_turn)(RecordedTurn {
            session: observer.session,
            user: &observer.user,
            position: observer.position,
            turn: &turn,
        });
    }
}

impl<B> Body for ChatHistoryBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), f.data_ref()) {
                    tap.observe(data);
                }
                // A server stops polling a body that says it has ended.
                if this.inner.is_end_stream()
                    && let Some(mut tap) = this.tap.take()
                {
                    answered(&mut tap, this.session.as_ref(), this.observer.as_deref());
                }
            }
            None => {
                if let Some(mut tap) = this.tap.take() {
                    answered(&mut tap, this.session.as_ref(), this.observer.as_deref());
                }
            }
            // A broken answer doesn't join the history.
            Some(Err(_)) => *this.tap = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
