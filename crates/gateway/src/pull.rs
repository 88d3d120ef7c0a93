//! Pull mode: a model whose `balance` is `"pull"` queues its requests in a
//! Redis Stream, and each of its deployments has a puller in this process
//! that takes a request when the deployment has a free slot.
//!
//! [`Dispatch`] sits where the balancer would: a request carrying its
//! model's queue is submitted there and answered from its ticket (metered
//! here, since the upstream call happens in a puller); any other goes to the
//! balancer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_ai_balance::pull::{PullError, PullQueue, Puller, PullerHandle};
use tower_ai_core::body::read_limited;
use tower_ai_core::reject::Refusal;

use crate::MAX_CHAT_BODY;
use crate::layers::{BalancedUpstream, GuardedUpstream};
use crate::metered::{MeterSpec, Metered};
use crate::models::{Models, Target};
use crate::upstream::UpstreamError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The upstream behind the balancer (or a pull queue), behind the relay.
pub(crate) type RelayedUpstream = tower_sse_relay::SseRelay<Dispatch, tower_sse_relay::AnyStore>;

/// Starts a puller per deployment of every pull-mode model, as many slots
/// as the deployment's `max_concurrency`, calling it through its circuit
/// breaker. The pullers stop when the handles are dropped.
pub(crate) fn pullers(models: &Models, guarded: &GuardedUpstream) -> Vec<PullerHandle> {
    let replica = replica_id();
    let mut handles = Vec::new();
    for route in models.named() {
        let Some(queue) = &route.queue else {
            continue;
        };
        for endpoint in route.pool.endpoints() {
            let target = Target(Arc::clone(route));
            let picked = endpoint.clone();
            let guarded = guarded.clone();
            let service = tower::service_fn(move |req: Request<Full<Bytes>>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(target.clone());
                req.extensions_mut().insert(picked.clone());
                guarded.clone().oneshot(req)
            });
            let slots = route
                .pool
                .status()
                .iter()
                .find(|s| s.name == endpoint.name())
                .map_or(1, |s| s.max_concurrency);
            let consumer = format!("{replica}/{}", endpoint.name());
            let mut puller = Puller::new(queue.clone(), consumer, slots, service);
            if let Some(tokens) = endpoint.target().max_starting_tokens {
                puller = puller.max_starting_tokens(tokens);
            }
            handles.push(puller.spawn());
        }
    }
    handles
}

/// A random name for this process's pullers.
fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

/// The balancer, or a model's pull queue when the request carries one.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    balanced: BalancedUpstream,
}

impl Dispatch {
    pub(crate) fn new(balanced: BalancedUpstream) -> Self {
        Self { balanced }
    }
}

impl Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = BoxFuture<Result<Response<Body>, UpstreamError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.balanced.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Some(queue) = req.extensions().get::<PullQueue>().cloned() {
            return Box::pin(async move { Ok(pulled(queue, req).await) });
        }
        let call = self.balanced.call(req);
        Box::pin(async move { call.await.map(|res| res.map(Body::new)) })
    }
}

/// Submits `req` to `queue` and answers from its ticket.
async fn pulled(queue: PullQueue, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = match read_limited(body, MAX_CHAT_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => return refusal(Refusal::bad_request().detail(e.to_string())),
    };
    let meter = parts.extensions.get::<MeterSpec>().cloned();
    let mut submitted = Request::new(bytes);
    *submitted.method_mut() = parts.method.clone();
    *submitted.uri_mut() = parts.uri.clone();
    *submitted.headers_mut() = parts.headers.clone();
    let ticket = match queue.submit(submitted).await {
        Ok(ticket) => ticket,
        Err(e) => return failed(&e),
    };
    let res = match ticket.response().await {
        Ok(res) => res,
        Err(e) => return failed(&e),
    };
    let (mut head, body) = res.into_parts();
    let body = match meter {
        Some(spec) => Metered::wrap(spec, &mut head, Body::new(body)),
        None => Body::new(body),
    };
    Response::from_parts(head, body)
}

fn failed(e: &PullError) -> Response<Body> {
    let answer = match e {
        PullError::Full => Refusal::service_unavailable().title("The model's queue is full"),
        PullError::Upstream(_) => Refusal::bad_gateway(),
        _ => Refusal::service_unavailable(),
    };
    refusal(answer.detail(e.to_string()))
}

fn refusal(refusal: Refusal) -> Response<Body> {
    refusal.into_http::<Body>().map(Body::new)
}
