//! A scripted upstream for the breaker's tests: each request says how it is
//! answered.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tower::{Service, ServiceExt};
use tower_circuit::CircuitHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How the upstream answers one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub status: u16,
    /// Time before the head.
    pub head_delay: Duration,
    /// Body chunks, each after its delay.
    pub chunks: Vec<(Duration, &'static str)>,
    /// The body ends with an error after its chunks.
    pub break_body: bool,
    /// The service returns an error instead of a response.
    pub error: bool,
    pub content_type: Option<&'static str>,
}

impl Plan {
    pub fn ok() -> Self {
        Self {
            status: 200,
            head_delay: Duration::ZERO,
            chunks: vec![(Duration::ZERO, "ok")],
            break_body: false,
            error: false,
            content_type: None,
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::ok()
        }
    }

    pub fn slow(delay: Duration) -> Self {
        Self {
            head_delay: delay,
            ..Self::ok()
        }
    }

    pub fn error() -> Self {
        Self {
            error: true,
            ..Self::ok()
        }
    }

    pub fn broken() -> Self {
        Self {
            break_body: true,
            ..Self::ok()
        }
    }

    pub fn sse(chunks: Vec<(Duration, &'static str)>) -> Self {
        Self {
            chunks,
            content_type: Some("text/event-stream"),
            ..Self::ok()
        }
    }
}

#[derive(Debug)]
pub struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream broken")
    }
}

impl std::error::Error for Broken {}

/// The scripted upstream; `calls` counts the requests that reached it.
#[derive(Clone, Default)]
pub struct Upstream {
    pub calls: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<Plan>> for Upstream {
    type Response = Response<TestBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Plan>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let plan = req.into_body();
        Box::pin(async move {
            if !plan.head_delay.is_zero() {
                tokio::time::sleep(plan.head_delay).await;
            }
            if plan.error {
                return Err::<_, BoxError>("connection refused".into());
            }
            let frames = plan
                .chunks
                .clone()
                .into_iter()
                .map(|(delay, text)| (delay, Ok(text)))
                .chain(plan.break_body.then_some((Duration::ZERO, Err(()))));
            let body = StreamBody::new(stream::unfold(frames, |mut frames| async move {
                let (delay, item) = frames.next()?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let frame = match item {
                    Ok(text) => Ok(Frame::data(Bytes::from_static(text.as_bytes()))),
                    Err(()) => Err(Box::new(Broken) as BoxError),
                };
                Some((frame, frames))
            }));
            let mut res = Response::new(BodyExt::boxed_unsync(body));
            *res.status_mut() = StatusCode::from_u16(plan.status).unwrap_or(StatusCode::OK);
            if let Some(ct) = plan.content_type {
                res.headers_mut()
                    .insert("content-type", http::HeaderValue::from_static(ct));
            }
            Ok(res)
        })
    }
}

/// What a call came back as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The upstream's status, and whether its body ended cleanly.
    Upstream(u16, bool),
    /// Refused by the breaker: status and `Retry-After`.
    Refused(u16, Option<String>),
    /// The service's error.
    Error,
}

/// Sends `plan` through `svc` and reads the whole body.
pub async fn call<S, B>(svc: &mut S, plan: Plan) -> Seen
where
    S: Service<Request<Plan>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
{
    let res = match svc.ready().await {
        Ok(svc) => svc.call(Request::new(plan)).await,
        Err(e) => Err(e),
    };
    match res {
        Err(_) => Seen::Error,
        Ok(res) => {
            let status = res.status().as_u16();
            let refused = res.headers().contains_key("content-type")
                && res.headers()["content-type"] == "application/problem+json";
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let clean = res.into_body().collect().await.is_ok();
            if refused {
                Seen::Refused(status, retry)
            } else {
                Seen::Upstream(status, clean)
            }
        }
    }
}

pub fn state(handle: &CircuitHandle) -> tower_circuit::State {
    handle
        .state(handle.name())
        .unwrap_or(tower_circuit::State::Disabled)
}

pub async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An infallible service type, for doc-like checks.
pub type Never = Infallible;
