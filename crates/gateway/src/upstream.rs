use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderName};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;

/// The client for the upstream LLM server, as a tower [`Service`].
///
/// It sends each request to the same path on the upstream, with the client's
/// credentials removed (they identify the caller to the gateway, not to the
/// upstream) and the gateway's own (`UPSTREAM_API_KEY`, when set) added. The
/// response body is passed through frame by frame, never buffered. Waiting
/// for the response head is bounded by a timeout; the body is not, since a
/// long answer streams for as long as it takes.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    authority: http::uri::Authority,
    base_path: String,
    api_key: Option<HeaderValue>,
    timeout: Duration,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the upstream gave no response.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No response head within the timeout.
    Timeout,
    /// The connection failed or broke before a response head.
    Transport(hyper_util::client::legacy::Error),
    /// The request could not be addressed to the upstream.
    Request(http::Error),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("the upstream did not answer in time"),
            Self::Transport(e) => {
                write!(f, "the upstream could not be reached: {e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
            Self::Request(e) => write!(f, "the upstream request is invalid: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

impl Upstream {
    /// A client for the server at `base_url` (`http://host:port[/prefix]`).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, String> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| format!("upstream URL {base_url}: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            return Err(format!(
                "upstream URL {base_url}: only http:// upstreams are supported; \
                 put a TLS-terminating proxy in front of an https:// one"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream URL {base_url}: no host"))?;
        let api_key = std::env::var("UPSTREAM_API_KEY")
            .ok()
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            api_key,
            timeout,
        })
    }

    fn upstream_request(&self, req: Request<Body>) -> Result<Request<Body>, http::Error> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query: PathAndQuery = format!("{}{}", self.base_path, path).parse()?;
        parts.uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()?;
        strip_hop_by_hop(&mut parts.headers);
        for name in [
            header::AUTHORIZATION,
            header::COOKIE,
            header::HOST,
            HeaderName::from_static("x-api-key"),
        ] {
            parts.headers.remove(name);
        }
        if let Some(key) = &self.api_key {
            parts.headers.insert(header::AUTHORIZATION, key.clone());
        }
        parts.version = http::Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client is always ready: it queues for a connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let timeout = self.timeout;
        let req = self.upstream_request(req);
        Box::pin(async move {
            let req = req.map_err(UpstreamError::Request)?;
            let res = tokio::time::timeout(timeout, client.request(req))
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(UpstreamError::Transport)?;
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110 §7.6.1), including any named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_address_and_drops_client_credentials() {
        let up = Upstream::new("http://127.0.0.1:9/prefix/", Duration::from_secs(1));
        let Ok(up) = up else {
            panic!("a valid upstream URL")
        };
        let req = Request::builder()
            .uri("/v1/chat/completions?x=1")
            .header("authorization", "Bearer client-key")
            .header("x-api-key", "client-key")
            .header("connection", "x-private")
            .header("x-private", "1")
            .header("content-type", "application/json")
            .body(Body::empty())
            .map(|r| up.upstream_request(r));
        let Ok(Ok(req)) = req else {
            panic!("a valid request")
        };
        assert_eq!(
            req.uri(),
            "http://127.0.0.1:9/prefix/v1/chat/completions?x=1"
        );
        assert!(req.headers().get("x-api-key").is_none());
        assert!(req.headers().get("x-private").is_none());
        assert_eq!(req.headers()["content-type"], "application/json");
        assert!(
            req.headers()
                .get("authorization")
                .is_none_or(|v| v != "Bearer client-key")
        );
    }

    #[test]
    fn refuses_what_it_cannot_reach() {
        assert!(Upstream::new("https://api.example.com", Duration::from_secs(1)).is_err());
        assert!(Upstream::new("not a url", Duration::from_secs(1)).is_err());
    }
}
