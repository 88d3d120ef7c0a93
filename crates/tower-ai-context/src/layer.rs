//! [`ContextLayer`]: before a chat request goes on, the conversation's last
//! turns, the user's profile and the passages nearest its question, fitted
//! into a token budget and injected as system messages.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Body;
use serde_json::Value;
use tower_ai_core::body::{ResponseBody, read_limited};
use tower_ai_core::future::LayerFuture;
use tower_ai_core::key::{ApiKey, ClientKey, KeyExtractor, RequestHead};
use tower_ai_core::llm::ChatRequest;
use tower_ai_core::reject::Refusal;
use tower_layer::Layer;
use tower_service::Service;

use crate::fit::{Fitted, Gathered, fit};
use crate::index::BoxFuture;
use crate::retrieve::TenantScope;
use crate::sources::{HistorySource, Message, ProfileSource, Retriever, SourceError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What was injected, on every answer to a request the layer handled:
/// `passages=2, history=4, profile=1, tokens=412`.
pub const CONTEXT_HEADER: HeaderName = HeaderName::from_static("x-context-injected");

/// Gathers context for chat requests (OpenAI's `messages`, Anthropic's
/// `/v1/messages`) and injects it. Built by [`ContextLayer::builder`].
///
/// For a request whose last message is the user's, the layer asks its
/// sources at once, in parallel, each within the
/// [`timeout`](ContextBuilder::timeout): the last
/// [`history_turns`](ContextBuilder::history_turns) turns of the
/// conversation (those the client sent again are left out), the user's
/// profile fields, and the [`top_k`](ContextBuilder::top_k) passages for
/// the last user turn. A source that fails or is late is left out; the
/// request is never failed for it. What was gathered is fitted into what
/// the [`budget`](ContextBuilder::budget) leaves after the client's own
/// messages (which always go, unaltered): passages by score, then history
/// newest first, then profile fields. It becomes up to three system
/// messages (profile, passages, history) placed right after the client's
/// own leading system messages (for Anthropic, appended to `system`).
///
/// A layer without sources passes every request through untouched.
///
/// Every answer to such a request carries [`CONTEXT_HEADER`]; metrics:
/// `tower_ai_context_injected_total{source}`,
/// `tower_ai_context_injected_tokens` (histogram),
/// `tower_ai_context_gather_seconds` (histogram),
/// `tower_ai_context_source_errors_total{source}`.
#[derive(Clone)]
pub struct ContextLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for ContextLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

type TenantFn = Arc<dyn Fn(RequestHead<'_>) -> Option<ClientKey> + Send + Sync>;

struct Shared {
    history: Option<Arc<dyn HistorySource>>,
    profile: Option<Arc<dyn ProfileSource>>,
    retriever: Option<Arc<dyn Retriever>>,
    tenant: TenantFn,
    history_turns: usize,
    top_k: usize,
    budget: u64,
    timeout: Duration,
    max_body: usize,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextLayer")
            .field("history", &self.history.is_some())
            .field("profile", &self.profile.is_some())
            .field("retriever", &self.retriever.is_some())
            .field("history_turns", &self.history_turns)
            .field("top_k", &self.top_k)
            .field("budget", &self.budget)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Builds a [`ContextLayer`].
#[must_use]
pub struct ContextBuilder {
    shared: Shared,
}

impl fmt::Debug for ContextBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl ContextLayer {
    /// No sources yet; 8 history turns, the top 5 passages, a prompt budget
    /// of 4,096 tokens, 500 ms for the sources, request bodies up to 1 MiB,
    /// tenants by API key.
    pub fn builder() -> ContextBuilder {
        ContextBuilder {
            shared: Shared {
                history: None,
                profile: None,
                retriever: None,
                tenant: Arc::new(|head| ApiKey::new().extract_head(head)),
                history_turns: 8,
                top_k: 5,
                budget: 4_096,
                timeout: Duration::from_millis(500),
                max_body: 1 << 20,
            },
        }
    }
}

impl ContextBuilder {
    /// Where the conversation's turns come from.
    pub fn history(mut self, source: impl HistorySource + 'static) -> Self {
        self.shared.history = Some(Arc::new(source));
        self
    }

    /// Where the user's profile comes from.
    pub fn profile(mut self, source: impl ProfileSource + 'static) -> Self {
        self.shared.profile = Some(Arc::new(source));
        self
    }

    /// Where passages come from.
    pub fn retriever(mut self, retriever: impl Retriever + 'static) -> Self {
        self.shared.retriever = Some(Arc::new(retriever));
        self
    }

    /// Who a request's tenant is (its [`TenantScope`], in the request's
    /// extensions for the retriever); default: the API key.
    pub fn tenant(mut self, extractor: impl KeyExtractor) -> Self {
        self.shared.tenant = Arc::new(move |head| extractor.extract_head(head));
        self
    }

    /// How many earlier turns to ask for.
    pub fn history_turns(mut self, n: usize) -> Self {
        self.shared.history_turns = n;
        self
    }

    /// How many passages to ask for.
    pub fn top_k(mut self, k: usize) -> Self {
        self.shared.top_k = k;
        self
    }

    /// The prompt's budget in tokens: the client's messages, then what is
    /// injected.
    pub fn budget(mut self, tokens: u64) -> Self {
        self.shared.budget = tokens;
        self
    }

    /// How long each source may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shared.timeout = timeout;
        self
    }

    /// The largest request body read (413 past it).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.shared.max_body = bytes;
        self
    }

    /// The layer.
    pub fn build(self) -> ContextLayer {
        ContextLayer {
            shared: Arc::new(self.shared),
        }
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of [`ContextLayer`].
#[derive(Clone)]
pub struct ContextService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for ContextService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ContextFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let idle = self.shared.history.is_none()
            && self.shared.profile.is_none()
            && self.shared.retriever.is_none();
        if idle || req.method() != Method::POST {
            return LayerFuture::inner(self.inner.call(req), |res| res.map(ResponseBody::inner));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if let Some(key) = (self.shared.tenant)(RequestHead::of(&req)) {
            req.extensions_mut().insert(TenantScope::of(&key));
        }
        let shared = Arc::clone(&self.shared);
        LayerFuture::boxed(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match read_limited(body, shared.max_body).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    let head = Request::from_parts(parts, ());
                    return Ok(Refusal::from(e).for_request::<ResBody, _>(&head));
                }
            };
            let Some(plan) = Plan::read(&parts, &bytes) else {
                let req = Request::from_parts(parts, ReqBody::from(bytes));
                return Ok(inner.call(req).await?.map(ResponseBody::inner));
            };
            let fitted = shared.gather(&parts, &plan, &bytes).await;
            let (mut parts, bytes) = (parts, plan.inject(&fitted).unwrap_or(bytes));
            parts.headers.remove(header::CONTENT_LENGTH);
            let header = report(&fitted);
            let req = Request::from_parts(parts, ReqBody::from(bytes));
            let mut res = inner.call(req).await?;
            res.headers_mut().insert(CONTEXT_HEADER, header);
            Ok(res.map(ResponseBody::inner))
        }))
    }
}

/// The response future of [`ContextService`]: the inner service's own
/// when there is nothing to gather (no source, or not a `POST`), else the
/// gathering's.
pub type ContextFuture<F, B, E> = LayerFuture<F, Response<B>, Response<ResponseBody<B>>, E>;

/// The header's value, and the metrics.
fn report(fitted: &Fitted) -> HeaderValue {
    for (source, n) in [
        ("passages", fitted.passages),
        ("history", fitted.history),
        ("profile", fitted.profile),
    ] {
        metrics::counter!("tower_ai_context_injected_total", "source" => source)
            .increment(n as u64);
    }
    metrics::histogram!("tower_ai_context_injected_tokens").record(fitted.tokens as f64);
    let value = format!(
        "passages={}, history={}, profile={}, tokens={}",
        fitted.passages, fitted.history, fitted.profile, fitted.tokens
    );
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("passages=0"))
}

/// A chat request the layer can add to.
struct Plan {
    value: Value,
    question: String,
    /// The client's own turns (role, text), to leave out of the history.
    sent: Vec<(String, String)>,
    anthropic: bool,
}

impl Plan {
    fn read(parts: &Parts, bytes: &Bytes) -> Option<Self> {
        let value: Value = serde_json::from_slice(bytes).ok()?;
        let messages = value.get("messages")?.as_array()?;
        let last = messages.last()?;
        if last.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        let question = text(last.get("content")?)?;
        let sent = messages
            .iter()
            .filter_map(|m| {
                let role = m.get("role")?.as_str()?;
                Some((role.to_owned(), text(m.get("content")?)?))
            })
            .collect();
        Some(Self {
            anthropic: parts.uri.path().ends_with("/v1/messages"),
            value,
            question,
            sent,
        })
    }

    /// The body with `fitted` in; `None` when nothing is injected (the
    /// client's bytes go on as they came).
    fn inject(mut self, fitted: &Fitted) -> Option<Bytes> {
        if fitted.messages.is_empty() {
            return None;
        }
        if self.anthropic {
            let injected = fitted.messages.join("\n\n");
            let object = self.value.as_object_mut()?;
            match object.get_mut("system") {
                Some(Value::String(system)) => {
                    system.push_str("\n\n");
                    system.push_str(&injected);
                }
                Some(Value::Array(blocks)) => {
                    blocks.push(serde_json::json!({"type": "text", "text": injected}));
                }
                _ => {
                    object.insert("system".into(), Value::String(injected));
                }
            }
        } else {
            let messages = self.value.get_mut("messages")?.as_array_mut()?;
            let at = messages
                .iter()
                .take_while(|m| {
                    matches!(
                        m.get("role").and_then(Value::as_str),
                        Some("system" | "developer")
                    )
                })
                .count();
            for (i, content) in fitted.messages.iter().enumerate() {
                messages.insert(
                    at + i,
                    serde_json::json!({"role": "system", "content": content}),
                );
            }
        }
        serde_json::to_vec(&self.value).ok().map(Bytes::from)
    }
}

/// A message's text: a string, or its text parts joined.
fn text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

impl Shared {
    /// Asks every source at once and fits the answers.
    async fn gather(&self, parts: &Parts, plan: &Plan, body: &[u8]) -> Fitted {
        let started = Instant::now();
        let history = async {
            match &self.history {
                Some(source) if self.history_turns > 0 => {
                    self.within("history", source.history(parts, self.history_turns))
                        .await
                }
                _ => Vec::new(),
            }
        };
        let profile = async {
            match &self.profile {
                Some(source) => self.within("profile", source.profile(parts)).await,
                None => Vec::new(),
            }
        };
        let passages = async {
            match &self.retriever {
                Some(retriever) if self.top_k > 0 && !plan.question.trim().is_empty() => {
                    self.within(
                        "passages",
                        retriever.retrieve(parts, &plan.question, self.top_k),
                    )
                    .await
                }
                _ => Vec::new(),
            }
        };
        let (history, profile, passages) = tokio::join!(history, profile, passages);
        metrics::histogram!("tower_ai_context_gather_seconds")
            .record(started.elapsed().as_secs_f64());
        let history: Vec<Message> = history
            .into_iter()
            .filter(|turn| {
                !plan
                    .sent
                    .iter()
                    .any(|(role, content)| *role == turn.role && *content == turn.content)
            })
            .collect();
        let gathered = Gathered {
            passages,
            history,
            profile,
        };
        if gathered.passages.is_empty()
            && gathered.history.is_empty()
            && gathered.profile.is_empty()
        {
            return Fitted::default();
        }
        let own = ChatRequest::from_json(body)
            .map(|request| request.estimated_prompt_tokens())
            .unwrap_or_else(|_| tower_ai_core::llm::estimated_tokens(body.len()));
        fit(gathered, self.budget.saturating_sub(own))
    }

    /// A source's answer, or nothing when it fails or is late.
    async fn within<T>(
        &self,
        source: &'static str,
        call: BoxFuture<'_, Result<Vec<T>, SourceError>>,
    ) -> Vec<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(items)) => items,
            Ok(Err(error)) => {
                tracing::debug!(source, %error, "context: a source failed; going on without it");
                metrics::counter!("tower_ai_context_source_errors_total", "source" => source)
                    .increment(1);
                Vec::new()
            }
            Err(_) => {
                tracing::debug!(source, "context: a source was late; going on without it");
                metrics::counter!("tower_ai_context_source_errors_total", "source" => source)
                    .increment(1);
                Vec::new()
            }
        }
    }
}
