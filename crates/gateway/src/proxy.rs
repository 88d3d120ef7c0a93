//! The model endpoints: each request is routed to its model's server, with
//! its budget reserved and its answer metered; `/v1/models`; and
//! re-attaching to a stream, for its owner only.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_ai_core::body::{ReadError, read_limited};
use tower_ai_core::key::{ApiKey, KeyExtractor, KeyExtractorExt, PeerIp};
use tower_ai_core::llm::ChatRequest;
use tower_ai_core::reject::Refusal;
use tracing::Instrument;

use crate::auth::CallerExt;
use crate::budget::Reserve;
use crate::metered::{MeterSpec, label};
use crate::models::{ModelRoute, Target};
use crate::owners::{Owner, unknown_stream};
use crate::respond::{bad_request, openai_error, upstream_failed};
use crate::upstream::Upstream;
use crate::{AppState, MAX_CHAT_BODY};

/// The target of the model calls' spans.
pub(crate) const GEN_AI_TARGET: &str = "tower_ai_gateway::gen_ai";

/// The output assumed for a budget estimate when the request sets no limit.
const DEFAULT_OUTPUT: u64 = 1_024;

/// `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
/// `/v1/responses` and `/v1/messages`: proxied to the model's server,
/// streamed or not. The gateway doesn't translate between APIs: a model
/// serves the endpoints its server speaks.
pub(crate) async fn model_call(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    // The token-cost layer in front has read the body within
    // `MAX_CHAT_BODY` (and refused a larger one with 413): this read can't
    // be cut short.
    let caller = req.extensions().get::<CallerExt>().cloned();
    let (mut parts, body) = req.into_parts();
    let bytes = match read_limited(body, MAX_CHAT_BODY).await {
        Ok(bytes) => bytes,
        Err(ReadError::Failed(e)) => {
            return bad_request(&format!("the request body could not be read: {e}"));
        }
        Err(e) => return bad_request(&e.to_string()),
    };
    let request = match ChatRequest::read_shared(&mut parts.extensions, &bytes) {
        Ok(request) => request,
        Err(e) => return bad_request(&e.to_string()),
    };
    let Some(name) = request.model.as_deref() else {
        return bad_request("the request needs a `model`");
    };
    if parts.uri.path() == "/v1/chat/completions" && request.messages == 0 {
        return bad_request(
            "a chat completion request needs a `model` and at least one message in `messages`",
        );
    }
    let Some(route) = state.models.get(name).cloned() else {
        return openai_error(
            Refusal::new(StatusCode::NOT_FOUND),
            "invalid_request_error",
            Some("model_not_found"),
            &format!("The model `{name}` does not exist or you do not have access to it."),
        );
    };

    let key_label: Arc<str> = caller
        .as_ref()
        .map_or_else(|| Arc::from("-"), |c| c.0.name.clone());
    let call = Call {
        state: &state,
        caller: caller.as_ref(),
        key_label: &key_label,
        asked: name,
        request: &request,
        bytes: &bytes,
        started,
    };
    // The model, then its fallbacks in order, while the answer is a
    // failure no byte of which has reached the client.
    // The head is copied only for a route with fallbacks to send it to.
    if route.fallbacks.is_empty() {
        return call.to(&route, parts).await;
    }
    let mut res = call.to(&route, parts.clone()).await;
    for fallback in &route.fallbacks {
        if !fails_over(res.status()) {
            break;
        }
        let Some(next) = state.models.get(fallback).filter(|r| !r.wildcard) else {
            continue;
        };
        tracing::info!(model = %route.name, fallback = %next.name, status = res.status().as_u16(), "falling back");
        metrics::counter!(
            "tower_ai_gateway_fallbacks_total",
            "model" => label(&route.name),
            "fallback" => label(&next.name)
        )
        .increment(1);
        res = call.to(next, parts.clone()).await;
    }
    res
}

/// [`model_call`] as a plain service (`POST` only: any other method is
/// answered 405, behind the layers, as axum answers it): the model routes'
/// stack of layers ends in it, so a layer that clones its inner service for
/// each request (the token cost, the cache) clones one `Arc`, not a boxed
/// handler.
#[derive(Clone)]
pub(crate) struct ModelCall(pub(crate) AppState);

impl tower::Service<Request> for ModelCall {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = tower_ai_core::future::BoxFuture<Result<Response, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Behind every layer, as axum's answer to another method would be.
        if req.method() != http::Method::POST {
            let mut res = StatusCode::METHOD_NOT_ALLOWED.into_response();
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Box::pin(std::future::ready(Ok(res)));
        }
        let state = self.0.clone();
        Box::pin(async move { Ok(model_call(State(state), req).await) })
    }
}

/// Whether an answer sends the request on to the model's fallback: the
/// upstream (or the balancer, or an open circuit) could not serve it.
fn fails_over(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// One model call's request, ready to be sent to a route.
struct Call<'a> {
    state: &'a AppState,
    caller: Option<&'a CallerExt>,
    key_label: &'a Arc<str>,
    /// The model name the client asked for.
    asked: &'a str,
    request: &'a ChatRequest,
    bytes: &'a bytes::Bytes,
    started: Instant,
}

impl Call<'_> {
    /// Sends the request to `route`'s deployments: its budget reserved,
    /// its answer metered.
    async fn to(&self, route: &Arc<ModelRoute>, mut parts: http::request::Parts) -> Response {
        let Self {
            state,
            caller,
            key_label,
            request,
            bytes,
            started,
            ..
        } = *self;
        // The budget: reserve the estimate before the call.
        let mut reservation = None;
        if let (Some(CallerExt(caller)), Some(price)) = (caller, route.price)
            && let Some(budget) = caller.budget
        {
            let output = request
                .max_output_tokens
                .unwrap_or(DEFAULT_OUTPUT)
                .saturating_mul(u64::from(request.n));
            let estimate = price.nanos(request.estimated_prompt_tokens(), output);
            // Boxed, as the other Redis calls here: their futures are
            // large, and every model call's future (moved and boxed on each
            // request) would carry them inline.
            match Box::pin(state.budgets.reserve(&caller.name, budget, estimate)).await {
                Reserve::Granted(r) => reservation = Some(r),
                Reserve::Refused { retry_after } => {
                    metrics::counter!("tower_ai_gateway_budget_refusals_total", "key" => label(&caller.name))
                        .increment(1);
                    return openai_error(
                        Refusal::too_many_requests().retry_after(retry_after),
                        "insufficient_quota",
                        Some("insufficient_quota"),
                        &format!(
                            "This key has spent its budget of ${} per {}; it renews when the period ends.",
                            budget.usd,
                            budget.per.as_str()
                        ),
                    );
                }
            }
        }
        let reservation = Arc::new(Mutex::new(reservation));

        // The name the upstream knows: the route's own, else the route's
        // name when it isn't the one asked for (a fallback).
        let send_as = route.upstream_model.clone().or_else(|| {
            (!route.wildcard && *route.name != *self.asked).then(|| route.name.clone())
        });
        let body = match send_as {
            Some(upstream_model) => match renamed(bytes, &upstream_model) {
                Some(body) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    Body::from(body)
                }
                None => return bad_request("the request body is not a JSON object"),
            },
            None => Body::from(bytes.clone()),
        };
        let span = gen_ai_span(parts.uri.path(), route, request);
        parts.extensions.insert(MeterSpec {
            span: span.clone(),
            model: route.name.clone(),
            key: key_label.clone(),
            price: route.price,
            reservation: reservation.clone(),
            budgets: state.budgets.clone(),
            started,
        });
        parts.extensions.insert(Target(route.clone()));
        // A pull-mode model's queue, else its pool for the balancer.
        if let Some(queue) = &route.queue {
            parts.extensions.insert(queue.clone());
        } else {
            parts.extensions.insert(route.pool.clone());
        }
        let req = Request::from_parts(parts, body);
        // Only a stream can be re-attached to: only its owner is worth a digest.
        let owner = request.stream.then(|| owner(&req, caller));

        // Only a stream goes through the relay: it has nothing to keep of a
        // JSON answer, and each of its generations is a task of its own.
        let res = if request.stream {
            let call = state.upstream.clone().oneshot(req);
            call.instrument(span.clone())
                .await
                .map(|r| r.map(Body::new))
        } else {
            let call = state.direct.clone().oneshot(req);
            call.instrument(span.clone())
                .await
                .map(|r| r.map(Body::new))
        };
        // Still reserved: no upstream answered (an open circuit, a failed
        // connection), so nothing was spent.
        let unspent = reservation.lock().take();
        if let Some(unspent) = unspent {
            Box::pin(state.budgets.settle(unspent, 0)).await;
        }
        let res = match res {
            Ok(res) => res,
            Err(e) => upstream_failed(&e),
        };
        if !res.status().is_success() {
            span.record("error.type", res.status().as_str());
        }
        metrics::counter!(
            "tower_ai_gateway_model_requests_total",
            "model" => label(&route.name),
            "key" => label(key_label),
            "status" => crate::metrics::status_label(res.status())
        )
        .increment(1);
        if let Some(owner) = owner
            && let Some(stream) = res
                .headers()
                .get("x-stream-id")
                .and_then(|v| v.to_str().ok())
        {
            Box::pin(state.owners.record(stream, owner)).await;
        }
        res
    }
}

/// A span for one model call, with the OpenTelemetry GenAI semantic
/// conventions' attributes; the usage is recorded when the answer ends. Its
/// target, [`GEN_AI_TARGET`], is the gateway's (the OTLP layer exports it)
/// and its own (the logs leave it out by default).
fn gen_ai_span(path: &str, route: &ModelRoute, request: &ChatRequest) -> tracing::Span {
    let operation = match path {
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        _ => "chat",
    };
    tracing::info_span!(
        target: GEN_AI_TARGET,
        "gen_ai",
        otel.name = %format_args!("{operation} {}", route.name),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.provider.name = route.provider.as_str(),
        gen_ai.system = route.provider.as_str(),
        gen_ai.request.model = %route.name,
        gen_ai.request.max_tokens = request.max_output_tokens.map(crate::metered::int),
        gen_ai.request.stream = request.stream,
        gen_ai.response.finish_reasons = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        server.address = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// The body with its `model` replaced by the name the upstream knows.
fn renamed(bytes: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut object: serde_json::Map<String, Value> = serde_json::from_slice(bytes).ok()?;
    object.insert("model".to_owned(), Value::String(model.to_owned()));
    serde_json::to_vec(&object).ok()
}

/// Who owns what a request starts: its configured key, else its client key
/// or address; a digest either way.
fn owner<B>(req: &http::Request<B>, caller: Option<&CallerExt>) -> Owner {
    let mut hasher = Sha256::new();
    match caller {
        Some(CallerExt(caller)) => {
            hasher.update(b"key:");
            hasher.update(caller.name.as_bytes());
        }
        None => {
            hasher.update(b"client:");
            if let Some(key) = ApiKey::new().or(PeerIp::new()).extract(req) {
                hasher.update(key.to_bytes());
            }
        }
    }
    hasher.finalize().into()
}

/// `GET /v1/streams/{id}`: re-attaches to a stream, for the caller who
/// started it; anyone else gets the answer for an unknown id.
pub(crate) async fn stream(State(state): State<AppState>, req: Request) -> Response {
    let id = req.uri().path().rsplit('/').next().unwrap_or_default();
    let caller = req.extensions().get::<CallerExt>().cloned();
    if !state.owners.allows(id, &owner(&req, caller.as_ref())).await {
        return unknown_stream();
    }
    match state.streams.clone().oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    }
}

/// `GET /v1/models`: the configured models, in OpenAI's list shape; with no
/// model table, the upstream's own list.
pub(crate) async fn list(State(state): State<AppState>, req: Request) -> Response {
    if let Some(route) = state.models.wildcard()
        && state.models.named().is_empty()
    {
        return upstream_list(route.clone(), req).await;
    }
    let data: Vec<Value> = state
        .models
        .named()
        .iter()
        .map(|m| {
            json!({
                "id": m.name.as_ref(),
                "object": "model",
                "created": 0,
                "owned_by": m.provider.as_str(),
            })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn upstream_list(route: Arc<ModelRoute>, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    parts.extensions.insert(Target(route));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    match Upstream::routed()
        .oneshot(Request::from_parts(parts, Body::empty()))
        .await
    {
        Ok(res) => res,
        Err(e) => upstream_failed(&e),
    }
}
