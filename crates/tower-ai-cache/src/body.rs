//! The response body: the inner body (recorded as it passes when the answer
//! may be stored), a stored answer, or a live copy of another request's
//! answer in flight.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::llm::{AnswerTap, SharedAnswer};

use crate::config::Shared;
use crate::entry::{Entry, Head, Lifetime};
use crate::flight::{Cursor, End, Flight, LeadGuard, Next, Source};
use crate::judge::{Plan, judge};
use crate::key::CacheKey;
use crate::tag::TagId;

/// A boxed error, what [`CacheBody`] fails with (the inner body's error, or a
/// shared answer in flight that broke off): the same type as
/// [`tower_ai_core::body::BoxError`], re-exported here.
pub use tower_ai_core::body::BoxError;

pin_project! {
    /// The body of a response that passed through the cache.
    ///
    /// Never buffered on the client's path: the inner body's frames are
    /// forwarded as they come (and recorded on the side when the answer may
    /// be stored); a stored answer is one frame (and its trailers); a
    /// collapsed request streams the leader's recording as it grows.
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Recording {
            #[pin]
            body: B,
            recorder: Option<Box<Recorder>>,
        },
        Stored {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Live {
            cursor: Box<Cursor>,
        },
    }
}

impl<B> CacheBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn recording(body: B, recorder: Box<Recorder>) -> Self {
        Self {
            kind: Kind::Recording {
                body,
                recorder: Some(recorder),
            },
        }
    }

    pub(crate) fn stored(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Stored {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn live(flight: Arc<Flight>) -> Self {
        Self {
            kind: Kind::Live {
                cursor: Box::new(Cursor::new(flight)),
            },
        }
    }

    /// A body made by the layer (a refusal), from the core crate's type.
    pub(crate) fn from_response_body(body: ResponseBody<B>) -> Self {
        match body {
            ResponseBody::Inner { body } => Self::inner(body),
            ResponseBody::Full { data } => Self::stored(data.unwrap_or_default(), None),
        }
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Recording { .. } => "recording",
            Kind::Stored { .. } => "stored",
            Kind::Live { .. } => "live",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

#[derive(Debug)]
struct SharedAnswerBroke;

impl fmt::Display for SharedAnswerBroke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the shared upstream answer this request followed broke off")
    }
}

impl std::error::Error for SharedAnswerBroke {}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Recording { mut body, recorder } => {
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(r) = recorder.as_mut() {
                            if let Some(data) = frame.data_ref() {
                                if !r.data(data) {
                                    *recorder = None;
                                }
                            } else if let Some(trailers) = frame.trailers_ref() {
                                r.trailers(trailers.clone());
                            }
                        }
                        // A server stops polling a body that says it has
                        // ended, so the end is seen here, not only at `None`.
                        if body.is_end_stream()
                            && let Some(r) = recorder.take()
                        {
                            r.complete();
                        }
                    }
                    None => {
                        if let Some(r) = recorder.take() {
                            r.complete();
                        }
                    }
                    // A broken body is never stored (the recorder's drop
                    // aborts it).
                    Some(Err(_)) => *recorder = None,
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            KindProj::Stored { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Live { cursor } => match std::task::ready!(cursor.poll_next(cx)) {
                Next::Chunk(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Next::Trailers(t) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Next::End => Poll::Ready(None),
                Next::Broken => Poll::Ready(Some(Err(Box::new(SharedAnswerBroke)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } | Kind::Recording { body, .. } => body.is_end_stream(),
            Kind::Stored { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Live { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Recording { body, .. } => body.size_hint(),
            Kind::Stored { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Live { .. } => SizeHint::default(),
        }
    }
}

/// Records a leader's answer as it passes: into its flight (for the
/// followers in this process), into Redis (for other replicas' followers),
/// and, when it ends complete, into L1 and L2.
pub(crate) struct Recorder {
    shared: Arc<Shared>,
    route: usize,
    key: CacheKey,
    tags: Vec<TagId>,
    head: Arc<Head>,
    guard: Option<LeadGuard>,
    tap: Option<AnswerTap>,
    /// A JSON answer's reading by a tap below, when there is one.
    answer: Option<SharedAnswer>,
    plan: Plan,
    #[cfg(feature = "redis")]
    remote: Option<Remote>,
    #[cfg(feature = "semantic")]
    semantic: Option<crate::probe::Probe>,
}

/// The Redis side of a recording.
#[cfg(feature = "redis")]
pub(crate) struct Remote {
    pub(crate) l2: Arc<crate::store::redis::L2>,
    /// The lock token, when this leader holds the Redis lock.
    pub(crate) owner: Option<String>,
    writer: Option<tokio::sync::mpsc::UnboundedSender<crate::store::redis::writer::Write>>,
}

#[cfg(feature = "redis")]
impl Remote {
    pub(crate) fn new(l2: Arc<crate::store::redis::L2>, owner: Option<String>) -> Self {
        Self {
            l2,
            owner,
            writer: None,
        }
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What a recording needs besides the body.
pub(crate) struct RecordingParts {
    pub(crate) shared: Arc<Shared>,
    pub(crate) route: usize,
    pub(crate) key: CacheKey,
    pub(crate) tags: Vec<TagId>,
    pub(crate) head: Arc<Head>,
    pub(crate) guard: LeadGuard,
    pub(crate) answer: Option<SharedAnswer>,
    pub(crate) plan: Plan,
    #[cfg(feature = "redis")]
    pub(crate) remote: Option<Remote>,
    /// Indexes the stored answer for semantic lookups.
    #[cfg(feature = "semantic")]
    pub(crate) semantic: Option<crate::probe::Probe>,
}

impl Recorder {
    pub(crate) fn new(parts: RecordingParts) -> Box<Self> {
        let tap = parts
            .head
            .is_stream()
            .then(|| AnswerTap::for_response(&parts.head.headers, 0));
        #[allow(unused_mut)]
        let mut recorder = Box::new(Self {
            shared: parts.shared,
            route: parts.route,
            key: parts.key,
            tags: parts.tags,
            head: parts.head,
            guard: Some(parts.guard),
            tap,
            answer: parts.answer,
            plan: parts.plan,
            #[cfg(feature = "redis")]
            remote: parts.remote,
            #[cfg(feature = "semantic")]
            semantic: parts.semantic,
        });
        #[cfg(feature = "redis")]
        if recorder.head.is_stream()
            && let Some(remote) = recorder.remote.as_mut()
            && let Some(owner) = remote.owner.clone()
        {
            // Other replicas follow a stream live: send it as it passes.
            remote.writer =
                crate::store::redis::writer::spawn_writer(remote.l2.clone(), parts.key, owner);
            if let Some(w) = &remote.writer {
                let _ = w.send(crate::store::redis::writer::Write::Head(
                    recorder.head.encode(),
                ));
            }
        }
        recorder
    }

    /// Records a data chunk; `false` when the recording was given up (too
    /// large), and the recorder should be dropped.
    fn data(&mut self, data: &Bytes) -> bool {
        let Some(guard) = &self.guard else {
            return false;
        };
        if !guard.flight().push(data.clone()) {
            self.give_up("too_large");
            return false;
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.observe(data);
        }
        #[cfg(feature = "redis")]
        if let Some(w) = self.remote.as_ref().and_then(|r| r.writer.as_ref()) {
            let _ = w.send(crate::store::redis::writer::Write::Data(data.clone()));
        }
        true
    }

    /// Ends the recording without storing it.
    fn give_up(&mut self, reason: &'static str) {
        if let Some(guard) = self.guard.take() {
            metrics::counter!("tower_ai_cache_not_stored_total", "route" => self.route_name(), "reason" => reason)
                .increment(1);
            tracing::debug!(key = %self.key.short(), reason, "cache: recording given up");
            self.end_remote(crate::store::END_ABORTED);
            guard.finish(End::Aborted);
        }
    }

    fn trailers(&mut self, trailers: HeaderMap) {
        if let Some(guard) = &self.guard {
            guard.flight().set_trailers(trailers);
        }
    }

    fn route_name(&self) -> metrics::SharedString {
        self.shared.route_label(self.route)
    }

    /// The body ended cleanly: store the answer if it is complete.
    pub(crate) fn complete(mut self: Box<Self>) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let (body, trailers) = guard.flight().body();
        let verdict = judge(
            &self.head,
            &body,
            trailers.as_ref(),
            self.tap.as_mut(),
            self.answer.as_ref(),
            self.plan.store_length,
        );
        let tokens = match verdict {
            Ok(tokens) => tokens,
            Err(reason) => {
                metrics::counter!("tower_ai_cache_not_stored_total", "route" => self.route_name(), "reason" => reason)
                    .increment(1);
                tracing::debug!(key = %self.key.short(), reason, "cache: answer not stored");
                self.end_remote(crate::store::END_UNSTORED);
                guard.finish(End::Finished);
                return;
            }
        };
        let entry = Arc::new(Entry {
            head: self.head.clone(),
            body,
            trailers,
            lifetime: Lifetime::new(self.plan.ttl, self.plan.grace, self.plan.age_at_store),
            tokens,
            tags: std::mem::take(&mut self.tags),
        });
        self.shared.l1.insert(self.key, entry.clone());
        metrics::counter!("tower_ai_cache_stores_total", "route" => self.route_name(), "layer" => "l1")
            .increment(1);
        metrics::counter!("tower_ai_cache_stored_bytes_total", "route" => self.route_name())
            .increment(entry.body.len() as u64);
        tracing::debug!(key = %self.key.short(), bytes = entry.body.len(), stream = entry.is_stream(), "cache: stored");
        self.store_remote(&entry);
        #[cfg(feature = "semantic")]
        if let Some(probe) = self.semantic.take() {
            probe.index(self.key, self.plan.ttl);
        }
        guard.finish(End::Stored(entry, Source::Upstream));
    }

    #[cfg(feature = "redis")]
    fn store_remote(&mut self, entry: &Arc<Entry>) {
        let Some(remote) = self.remote.take() else {
            return;
        };
        let keep = entry.lifetime.keep_for(crate::entry::now_ms());
        if let Some(w) = remote.writer {
            let _ = w.send(crate::store::redis::writer::Write::Store(
                entry.clone(),
                keep,
            ));
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.key;
        let entry = entry.clone();
        handle.spawn(async move {
            let owner = remote.owner.as_deref();
            if remote
                .l2
                .store(&key, &entry, keep, owner, crate::store::END_STORED)
                .await
                .is_ok()
            {
                metrics::counter!("tower_ai_cache_stores_total", "layer" => "l2").increment(1);
            } else if let Some(owner) = owner {
                remote.l2.end(&key, owner, crate::store::END_ABORTED).await;
            }
        });
    }

    #[cfg(not(feature = "redis"))]
    fn store_remote(&mut self, _entry: &Arc<Entry>) {}

    #[cfg(feature = "redis")]
    fn end_remote(&mut self, end: &'static str) {
        let Some(remote) = self.remote.take() else {
            return;
        };
        if let Some(w) = remote.writer {
            let _ = w.send(crate::store::redis::writer::Write::End(end));
            return;
        }
        let (Some(owner), Ok(handle)) = (remote.owner, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let key = self.key;
        handle.spawn(async move { remote.l2.end(&key, &owner, end).await });
    }

    #[cfg(not(feature = "redis"))]
    fn end_remote(&mut self, _end: &'static str) {}
}

impl Drop for Recorder {
    /// A recording dropped before its end (the body failed, the client went
    /// away) is never stored.
    fn drop(&mut self) {
        self.give_up("aborted");
    }
}
