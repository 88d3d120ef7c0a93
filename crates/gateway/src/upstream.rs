//! The clients for the upstream model servers, and the service that sends a
//! request to the server of the model it was routed to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::Service;

use crate::config::Provider;
use crate::endpoint::{DEFAULT_IDLE_TIMEOUT, Endpoint, Timeouts};
use crate::metered::{MeterSpec, Metered};
use crate::models::{Deployment, ModelRoute, Picked, Target};

/// The `anthropic-version` sent when the client sends none.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Why the upstream gave no response.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No response head within the timeout.
    Timeout,
    /// The TLS handshake with the upstream failed (an unknown CA, a name
    /// the certificate doesn't hold, a refused handshake).
    Tls(hyper_util::client::legacy::Error),
    /// The connection failed or broke before a response head.
    Transport(hyper_util::client::legacy::Error),
    /// The request could not be addressed to the upstream.
    Request(http::Error),
    /// The request was not routed to a model (a gateway bug: the handlers
    /// route every request they send).
    Unrouted,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("the upstream did not answer in time"),
            Self::Tls(e) => {
                f.write_str("the TLS handshake with the upstream failed")?;
                write_sources(f, e)
            }
            Self::Transport(e) => {
                write!(f, "the upstream could not be reached: {e}")?;
                write_sources(f, e)
            }
            Self::Request(e) => write!(f, "the upstream request is invalid: {e}"),
            Self::Unrouted => f.write_str("the request was not routed to a model"),
        }
    }
}

fn write_sources(f: &mut fmt::Formatter<'_>, e: &dyn std::error::Error) -> fmt::Result {
    let mut source = e.source();
    while let Some(s) = source {
        write!(f, ": {s}")?;
        source = s.source();
    }
    Ok(())
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    fn from_client(e: hyper_util::client::legacy::Error) -> Self {
        if std::error::Error::source(&e).is_some_and(is_tls) {
            Self::Tls(e)
        } else {
            Self::Transport(e)
        }
    }
}

/// Whether a rustls error is in the chain. rustls reports through
/// (possibly nested) io::Errors, which hide their inner error from
/// `source()`.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        return is_tls(inner);
    }
    e.source().is_some_and(is_tls)
}

/// The upstream clients as one tower [`Service`]: each request goes to the
/// server of the model it was routed to (its [`Target`] extension), with
/// the client's credentials removed (they identify the caller to the
/// gateway, not to the upstream) and the model's own added, the way its
/// provider wants them. The response body is passed through frame by frame,
/// never buffered. Waiting for the response head is bounded by a timeout;
/// the body is not, since a long answer streams for as long as it takes.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// Where requests that weren't routed go.
    default: Option<Arc<ModelRoute>>,
}

impl Upstream {
    /// The gateway's client: every request goes where it was routed.
    pub(crate) fn routed() -> Self {
        Self::default()
    }

    /// A client that sends every request to one OpenAI-compatible server
    /// at `base_url` (`http[s]://host[:port][/prefix]`), with no key of its
    /// own, waiting at most `timeout` for each response head.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, String> {
        let timeouts = Timeouts {
            connect: crate::config::DEFAULT_CONNECT_TIMEOUT,
            head: timeout,
            idle: DEFAULT_IDLE_TIMEOUT,
        };
        let endpoint = Endpoint::new(base_url, None, timeouts).map_err(|e| e.to_string())?;
        let route =
            ModelRoute::single("*", Provider::OpenAi, endpoint, None).map_err(|e| e.to_string())?;
        Ok(Self {
            default: Some(Arc::new(route)),
        })
    }
}

/// The request as it goes to `deployment`, a server of `provider`.
pub(crate) fn upstream_request(
    provider: Provider,
    deployment: &Deployment,
    req: Request<Body>,
) -> Result<Request<Body>, http::Error> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    parts.uri = deployment.endpoint.uri(path)?;
    strip_hop_by_hop(&mut parts.headers);
    // The gateway reads every answer (usage, cache, history): uncompressed.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    for name in [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        HeaderName::from_static("x-api-key"),
    ] {
        parts.headers.remove(name);
    }
    let credential = deployment.credential.as_ref();
    match provider {
        Provider::OpenAi => {
            if let Some(key) = credential {
                parts.headers.insert(header::AUTHORIZATION, key.clone());
            }
        }
        Provider::Anthropic => {
            if let Some(key) = credential {
                parts
                    .headers
                    .insert(HeaderName::from_static("x-api-key"), key.clone());
            }
            parts
                .headers
                .entry(HeaderName::from_static("anthropic-version"))
                .or_insert(HeaderValue::from_static(ANTHROPIC_VERSION));
        }
    }
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled clients are always ready: they queue for a connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let routed = req.extensions().get::<Target>().map(|t| t.0.clone());
        let Some(route) = routed.or_else(|| self.default.clone()) else {
            return Box::pin(async { Err(UpstreamError::Unrouted) });
        };
        // The deployment the balancer picked; else the route's first.
        let picked = req.extensions().get::<Picked>().map(|p| p.target().clone());
        let Some(deployment) = picked.or_else(|| route.first().cloned()) else {
            return Box::pin(async { Err(UpstreamError::Unrouted) });
        };
        let meter = req.extensions().get::<MeterSpec>().cloned();
        if let Some(meter) = &meter {
            meter
                .span
                .record("server.address", deployment.endpoint.host());
        }
        let req = upstream_request(route.provider, &deployment, req);
        Box::pin(async move {
            let req = req.map_err(UpstreamError::Request)?;
            let endpoint = &deployment.endpoint;
            let res = tokio::time::timeout(endpoint.head_timeout, endpoint.client.request(req))
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(UpstreamError::from_client)?;
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let body = match meter {
                Some(spec) => Metered::wrap(spec, &mut parts, Body::new(body)),
                None => Body::new(body),
            };
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// The fields that describe one connection, not the message (RFC 9110
/// §7.6.1), whatever their value.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the [`HOP_BY_HOP`] fields, and any named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: a look at each name, not a removal of each
    // field that might be there (a field `Connection` names is there only
    // with a `Connection`).
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(1),
        head: Duration::from_secs(1),
        idle: Duration::from_secs(1),
    };

    fn route(base_url: &str, provider: Provider, key: Option<&str>) -> (Provider, Deployment) {
        let endpoint = Endpoint::new(base_url, None, TIMEOUTS);
        let Ok(endpoint) = endpoint else {
            panic!("a valid upstream URL")
        };
        (provider, Deployment::new(provider, endpoint, key))
    }

    fn request(route: &(Provider, Deployment), uri: &str) -> Request<Body> {
        let req = Request::builder()
            .uri(uri)
            .header("authorization", "Bearer client-key")
            .header("x-api-key", "client-key")
            .header("connection", "x-private")
            .header("x-private", "1")
            .header("content-type", "application/json")
            .body(Body::empty())
            .map(|r| upstream_request(route.0, &route.1, r));
        let Ok(Ok(req)) = req else {
            panic!("a valid request")
        };
        req
    }

    #[test]
    fn rewrites_the_address_and_swaps_the_credentials() {
        let openai = route(
            "http://127.0.0.1:9/prefix/",
            Provider::OpenAi,
            Some("sk-up"),
        );
        let req = request(&openai, "/v1/chat/completions?x=1");
        assert_eq!(
            req.uri(),
            "http://127.0.0.1:9/prefix/v1/chat/completions?x=1"
        );
        assert!(req.headers().get("x-api-key").is_none());
        assert!(req.headers().get("x-private").is_none());
        assert_eq!(req.headers()["content-type"], "application/json");
        assert_eq!(req.headers()["authorization"], "Bearer sk-up");

        let anthropic = route(
            "https://api.example.com",
            Provider::Anthropic,
            Some("ak-up"),
        );
        let req = request(&anthropic, "/v1/messages");
        assert_eq!(req.uri(), "https://api.example.com/v1/messages");
        assert!(req.headers().get("authorization").is_none());
        assert_eq!(req.headers()["x-api-key"], "ak-up");
        assert_eq!(req.headers()["anthropic-version"], ANTHROPIC_VERSION);

        let keyless = route("http://127.0.0.1:9", Provider::OpenAi, None);
        let req = request(&keyless, "/v1/models");
        assert!(req.headers().get("authorization").is_none());
        assert!(req.headers().get("x-api-key").is_none());
    }

    #[test]
    fn strips_each_hop_by_hop_field_and_keeps_the_rest() {
        for name in [
            "connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut headers);
            assert!(headers.get(name).is_none(), "{name}");
            assert_eq!(headers.len(), 1, "{name}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn never_doubles_v1() {
        for base in ["http://h/v1", "http://h/v1/"] {
            let r = route(base, Provider::OpenAi, None);
            assert_eq!(
                request(&r, "/v1/chat/completions").uri(),
                "http://h/v1/chat/completions"
            );
        }
        let r = route("http://h/openai/v1", Provider::OpenAi, None);
        assert_eq!(
            request(&r, "/v1/embeddings").uri(),
            "http://h/openai/v1/embeddings"
        );
        let r = route("http://h/api", Provider::OpenAi, None);
        assert_eq!(request(&r, "/v1/models").uri(), "http://h/api/v1/models");
    }

    #[test]
    fn refuses_what_it_cannot_reach() {
        assert!(Endpoint::new("ftp://api.example.com", None, TIMEOUTS).is_err());
        assert!(Endpoint::new("not a url", None, TIMEOUTS).is_err());
        assert!(Endpoint::new("https://h/v1?x=1", None, TIMEOUTS).is_err());
        assert!(
            Endpoint::new(
                "https://h",
                Some(Path::new("/nonexistent/ca.pem")),
                TIMEOUTS
            )
            .is_err()
        );
        assert!(Endpoint::new("https://api.example.com/v1", None, TIMEOUTS).is_ok());
    }
}
