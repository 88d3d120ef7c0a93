//! Who may call: the configured client keys (with their tiers and budgets)
//! and the admin token.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_ai_core::key::Tier;
use tower_ai_core::reject::Refusal;

use crate::config::{Budget, KeyConfig, Secret, key_digest as digest};
use crate::respond::openai_error;

/// A configured client key, as requests carry it in their extensions once
/// it was checked.
#[derive(Debug)]
pub(crate) struct Caller {
    /// The key's name in the config: safe as a label, never the key.
    pub(crate) name: Arc<str>,
    pub(crate) tier: Option<Tier>,
    pub(crate) budget: Option<Budget>,
}

/// The checked caller of a request.
#[derive(Debug, Clone)]
pub(crate) struct CallerExt(pub(crate) Arc<Caller>);

/// The key table and the admin token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Auth {
    keys: Arc<HashMap<[u8; 32], Arc<Caller>>>,
    /// In the config's order, for `/admin/keys`.
    callers: Arc<[Arc<Caller>]>,
    admin: Option<[u8; 32]>,
}

impl Auth {
    pub(crate) fn new(keys: &[KeyConfig], admin: Option<&Secret>) -> Self {
        let callers: Vec<(_, Arc<Caller>)> = keys
            .iter()
            .map(|k| {
                (
                    k.sha256,
                    Arc::new(Caller {
                        name: k.name.as_str().into(),
                        tier: k.tier.as_deref().map(Tier::new),
                        budget: k.budget,
                    }),
                )
            })
            .collect();
        Self {
            callers: callers.iter().map(|(_, c)| c.clone()).collect(),
            keys: Arc::new(callers.into_iter().collect()),
            admin: admin.map(|t| digest(t.expose())),
        }
    }

    /// The configured keys, in order.
    pub(crate) fn callers(&self) -> &[Arc<Caller>] {
        &self.callers
    }

    fn caller(&self, headers: &HeaderMap) -> Option<&Arc<Caller>> {
        let key = presented_key(headers)?;
        self.keys.get(&digest(key))
    }

    /// Whether a request may use the admin API: with a token configured,
    /// when it presents it; without one, only while no client keys are
    /// configured either (the demo). A gateway that checks its clients'
    /// keys doesn't leave its admin API open.
    fn is_admin(&self, headers: &HeaderMap) -> bool {
        match &self.admin {
            None => self.keys.is_empty(),
            Some(token) => bearer(headers).is_some_and(|t| digest(t) == *token),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The client's key: `Authorization: Bearer`, else `x-api-key` (what
/// Anthropic's SDKs send).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

/// The check in front of every route: `/admin/*` needs the admin token
/// (when configured); `/v1/*` needs a configured key (when any is
/// configured), whose tier and budget then go with the request.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer(pub(crate) Auth);

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            auth: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    auth: Auth,
    inner: S,
}

impl<S, B> Service<Request> for AuthService<S>
where
    S: Service<Request, Response = http::Response<B>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match self.auth.check(&mut req) {
            Ok(()) => AuthFuture::Inner {
                future: self.inner.call(req),
            },
            Err(reason) => AuthFuture::Refused {
                response: Some(unauthorized(reason)),
            },
        }
    }
}

pin_project! {
    /// The response future of [`AuthService`].
    #[project = AuthFutureProj]
    pub(crate) enum AuthFuture<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response> },
    }
}

impl<F, B, E> Future for AuthFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthFutureProj::Inner { future } => future
                .poll(cx)
                .map(|r| r.map(|res| res.map(axum::body::Body::new))),
            AuthFutureProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

impl Auth {
    /// Lets `req` through (with its caller in its extensions), or says why
    /// not.
    fn check(&self, req: &mut Request) -> Result<(), &'static str> {
        let path = req.uri().path();
        if path.starts_with("/admin/") || path == "/admin" {
            if !self.is_admin(req.headers()) {
                return Err(if self.admin.is_none() {
                    "the admin API is closed: with client keys configured, it needs an `[admin]` token"
                } else {
                    "the admin API needs `Authorization: Bearer <admin token>`"
                });
            }
        } else if path.starts_with("/v1/") && !self.keys.is_empty() {
            let Some(caller) = self.caller(req.headers()).cloned() else {
                return Err(
                    "a valid API key is needed: `Authorization: Bearer <key>` or `x-api-key: <key>`",
                );
            };
            if let Some(tier) = &caller.tier {
                req.extensions_mut().insert(tier.clone());
            }
            req.extensions_mut().insert(CallerExt(caller));
        }
        Ok(())
    }
}

fn unauthorized(message: &str) -> Response {
    openai_error(
        Refusal::new(StatusCode::UNAUTHORIZED).header(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        ),
        "invalid_request_error",
        Some("invalid_api_key"),
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "  k1 ".parse().unwrap_or_else(|_| panic!()));
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert(
            "authorization",
            "bearer k2".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert(
            "authorization",
            "Basic xyz".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(bearer(&h), None);
        assert_eq!(presented_key(&h), Some("k1"));
    }
}
