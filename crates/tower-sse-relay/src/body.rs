//! The response body: passed through, relayed directly from the upstream, or
//! read from the store.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_ai_core::body::ResponseBody;

use crate::error::BoxError;
use crate::relay::{Counters, Heartbeat, Mode, Relayer, StreamClock};
use crate::store::Subscription;
use crate::tap::{EndReason, TapState};

pin_project! {
    /// The body of a response that went through the relay.
    ///
    /// - Responses that are not event streams, and answers the relay makes
    ///   itself (refusals, `202 Accepted`), pass through unchanged.
    /// - Direct mode: the upstream's events, each forwarded as soon as it is
    ///   complete with the relay's id, plus heartbeats. Nothing is buffered
    ///   beyond the event being decoded, and the upstream is read only as
    ///   fast as the client reads: a slow client slows the upstream down
    ///   instead of growing memory. Dropping the body drops the upstream
    ///   request (after the usage drain, when configured).
    /// - Resumable mode: a subscription to the stored stream, plus
    ///   heartbeats; dropping it leaves the generation running.
    pub struct SseRelayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner {
            #[pin]
            body: ResponseBody<B>,
        },
        // Boxed: a stream's state (decoder, timer, tap) is large, and a
        // passed-through body should not carry its size.
        Direct {
            body: Pin<Box<DirectBody<B>>>,
        },
        Attached {
            body: Pin<Box<AttachedBody>>,
        },
    }
}

impl<B> SseRelayBody<B> {
    pub(crate) fn inner(body: ResponseBody<B>) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn direct(body: DirectBody<B>) -> Self {
        Self {
            kind: Kind::Direct {
                body: Box::pin(body),
            },
        }
    }

    pub(crate) fn attached(body: AttachedBody) -> Self {
        Self {
            kind: Kind::Attached {
                body: Box::pin(body),
            },
        }
    }

    /// `body`, passed through unchanged.
    pub fn passthrough(body: B) -> Self {
        Self::inner(ResponseBody::inner(body))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::inner(ResponseBody::empty())
    }

    /// A body of these bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::inner(ResponseBody::full(data))
    }
}

impl<B> Default for SseRelayBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> fmt::Debug for SseRelayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Direct { .. } => "direct",
            Kind::Attached { .. } => "attached",
        };
        f.debug_struct("SseRelayBody").field("kind", &kind).finish()
    }
}

impl<B> Body for SseRelayBody<B>
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
            KindProj::Direct { body } => body.as_mut().poll_frame(cx),
            KindProj::Attached { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Direct { body } => body.finished,
            Kind::Attached { body } => body.finished,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Direct { .. } | Kind::Attached { .. } => SizeHint::default(),
        }
    }
}

/// What polling a stream for its next frame gives.
type PolledFrame = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// Reads the rest of a direct stream after its client went away, until the
/// usage passed: a fn pointer made where `B`'s bounds are known, so the
/// body's `Drop` can start it.
pub(crate) type DrainFn<B> = fn(Pin<Box<B>>, Relayer, StreamClock, Duration);

pin_project! {
    /// Direct mode: the upstream body, decoded and re-encoded event by event.
    pub(crate) struct DirectBody<B> {
        // Boxed so that `Drop` can hand it to the usage drain.
        upstream: Option<Pin<Box<B>>>,
        #[pin]
        heartbeat: Heartbeat,
        relayer: Option<Relayer>,
        clock: Option<StreamClock>,
        counters: Arc<Counters>,
        drain: Option<(DrainFn<B>, Duration)>,
        finished: bool,
    }

    impl<B> PinnedDrop for DirectBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.finished {
                return;
            }
            this.counters.direct_active.fetch_sub(1, Ordering::Relaxed);
            let (Some(relayer), Some(clock)) = (this.relayer.take(), this.clock.take()) else {
                return;
            };
            match (this.upstream.take(), this.drain.take()) {
                (Some(upstream), Some((drain, limit))) if relayer.tap.is_some() => {
                    this.counters.drains.fetch_add(1, Ordering::Relaxed);
                    drain(upstream, relayer, clock, limit);
                }
                // The upstream request is dropped here: cancelled.
                _ => end_direct(relayer, &clock, EndReason::ClientGone),
            }
        }
    }
}

impl<B> DirectBody<B> {
    pub(crate) fn new(
        upstream: B,
        heartbeat: Heartbeat,
        relayer: Relayer,
        clock: StreamClock,
        counters: Arc<Counters>,
        drain: Option<(DrainFn<B>, Duration)>,
    ) -> Self {
        counters.direct_active.fetch_add(1, Ordering::Relaxed);
        Self {
            upstream: Some(Box::pin(upstream)),
            heartbeat,
            relayer: Some(relayer),
            clock: Some(clock),
            counters,
            drain,
            finished: false,
        }
    }
}

/// The end of a direct stream: metrics, and the tap.
pub(crate) fn end_direct(mut relayer: Relayer, clock: &StreamClock, reason: EndReason) {
    let events = relayer.seq();
    clock.end(events, reason);
    tracing::debug!(stream_id = %relayer.stream(), events, reason = reason.as_str(), "direct stream ended");
    if let Some(tap) = relayer.tap.take() {
        tap.on_end(relayer.stream(), reason, events, clock.elapsed());
    }
}

/// Reads the rest of a direct stream after its client went away, until the
/// usage passed or `limit`, then drops the upstream and tells the tap.
pub(crate) fn spawn_drain<B>(
    upstream: Pin<Box<B>>,
    relayer: Relayer,
    clock: StreamClock,
    limit: Duration,
) where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        end_direct(relayer, &clock, EndReason::ClientGone);
        return;
    };
    runtime.spawn(async move {
        let mut upstream = upstream;
        let mut relayer = relayer;
        let deadline = Instant::now() + limit;
        let outcome = loop {
            while relayer.next_frame().is_some() {}
            if relayer.tap.as_ref().is_some_and(TapState::has_usage) {
                break "usage";
            }
            let frame = tokio::time::timeout_at(
                deadline,
                poll_fn(|cx| {
                    upstream
                        .as_mut()
                        .poll_frame(cx)
                        .map(|f| f.map(|f| f.map_err(|_| ())))
                }),
            )
            .await;
            match frame {
                Err(_) => break "timeout",
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        relayer.push(data);
                    }
                }
                Ok(None | Some(Err(_))) => {
                    relayer.finish_input();
                    while relayer.next_frame().is_some() {}
                    break "ended";
                }
            }
        };
        drop(upstream);
        metrics::counter!("tower_ai_sse_usage_drains_total", "outcome" => outcome).increment(1);
        end_direct(relayer, &clock, EndReason::ClientGone);
    });
}

impl<B> DirectBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let (Some(relayer), Some(upstream)) = (this.relayer.as_mut(), this.upstream.as_mut())
        else {
            return Poll::Ready(None);
        };
        loop {
            if let Some((_, frame)) = relayer.next_frame() {
                this.counters.events.fetch_add(1, Ordering::Relaxed);
                if let Some(clock) = this.clock.as_mut() {
                    clock.event();
                }
                this.heartbeat.as_mut().sent();
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            let reason = match upstream.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers of an event stream carry nothing to relay.
                    if let Ok(data) = frame.into_data() {
                        relayer.push(data);
                    }
                    // A body that says it has ended may not be polled again.
                    if !upstream.is_end_stream() {
                        continue;
                    }
                    EndReason::Completed
                }
                Poll::Ready(None) => EndReason::Completed,
                Poll::Ready(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    tracing::warn!(stream_id = %relayer.stream(), error = %error, "the upstream stream broke");
                    EndReason::Failed
                }
                Poll::Pending => return poll_heartbeat(this.heartbeat, this.counters, cx),
            };
            // The end: whatever is left goes out in one last frame, and the
            // end-of-stream work is done now, not when (or if) the server
            // polls once more.
            let last = finish(relayer, reason);
            let events = last.len() as u64;
            this.counters.events.fetch_add(events, Ordering::Relaxed);
            *this.finished = true;
            this.counters.direct_active.fetch_sub(1, Ordering::Relaxed);
            this.upstream.take();
            if let (Some(relayer), Some(mut clock)) = (this.relayer.take(), this.clock.take()) {
                if events > 0 {
                    clock.event();
                }
                end_direct(relayer, &clock, reason);
            }
            return Poll::Ready((!last.is_empty()).then(|| Ok(Frame::data(concat(last)))));
        }
    }
}

/// A heartbeat frame when one is due (counted), while a stream waits for
/// its next event.
fn poll_heartbeat(
    heartbeat: Pin<&mut Heartbeat>,
    counters: &Counters,
    cx: &mut Context<'_>,
) -> PolledFrame {
    let frame = ready!(heartbeat.poll_due(cx));
    counters.heartbeats.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("tower_ai_sse_heartbeats_total").increment(1);
    Poll::Ready(Some(Ok(Frame::data(frame))))
}

/// Ends a relayer's input and returns its last frames, with an in-band
/// error event after them when the stream did not complete.
pub(crate) fn finish(relayer: &mut Relayer, reason: EndReason) -> Vec<(u64, Bytes)> {
    relayer.finish_input();
    let mut last = Vec::new();
    relayer.drain_frames(&mut last);
    let error = match reason {
        EndReason::Failed => Some((
            "the upstream stream ended abnormally; the answer is incomplete",
            "upstream_error",
        )),
        EndReason::Truncated => Some((
            "the stream reached the relay's time limit; the answer is incomplete",
            "relay_limit",
        )),
        EndReason::Completed | EndReason::ClientGone => None,
    };
    if let Some((message, kind)) = error
        && let Some(frame) = relayer.error_frame(message, kind)
    {
        last.push(frame);
    }
    last
}

fn concat(frames: Vec<(u64, Bytes)>) -> Bytes {
    match <[(u64, Bytes); 1]>::try_from(frames) {
        Ok([(_, frame)]) => frame,
        Err(frames) => {
            let mut out = BytesMut::with_capacity(frames.iter().map(|(_, f)| f.len()).sum());
            for (_, frame) in frames {
                out.extend_from_slice(&frame);
            }
            out.freeze()
        }
    }
}

pin_project! {
    /// Resumable mode: a subscription to the stored stream.
    pub(crate) struct AttachedBody {
        subscription: Subscription,
        #[pin]
        heartbeat: Heartbeat,
        clock: StreamClock,
        counters: Arc<Counters>,
        events: u64,
        finished: bool,
    }

    impl PinnedDrop for AttachedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.finished {
                this.counters.readers_active.fetch_sub(1, Ordering::Relaxed);
                this.clock.end(*this.events, EndReason::ClientGone);
            }
        }
    }
}

impl AttachedBody {
    pub(crate) fn new(
        subscription: Subscription,
        heartbeat: Heartbeat,
        clock: StreamClock,
        counters: Arc<Counters>,
    ) -> Self {
        counters.readers_active.fetch_add(1, Ordering::Relaxed);
        Self {
            subscription,
            heartbeat,
            clock,
            counters,
            events: 0,
            finished: false,
        }
    }

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        use futures_core::Stream as _;

        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let ended = match Pin::new(&mut *this.subscription).poll_next(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.events += 1;
                this.clock.event();
                this.heartbeat.as_mut().sent();
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            Poll::Ready(Some(Err(error))) => Some(error),
            Poll::Ready(None) => None,
            Poll::Pending => return poll_heartbeat(this.heartbeat, this.counters, cx),
        };
        *this.finished = true;
        this.counters.readers_active.fetch_sub(1, Ordering::Relaxed);
        match ended {
            None => {
                this.clock.end(*this.events, EndReason::Completed);
                Poll::Ready(None)
            }
            Some(error) => {
                tracing::warn!(error = %error, "a stream reader stopped");
                this.clock.end(*this.events, EndReason::Failed);
                Poll::Ready(Some(Err(Box::new(error))))
            }
        }
    }
}

impl Mode {
    /// The clock of a new stream in this mode, started now.
    pub(crate) fn clock(self, started: tokio::time::Instant) -> StreamClock {
        StreamClock::new(self, started)
    }
}
