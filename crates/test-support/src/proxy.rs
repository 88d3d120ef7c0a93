//! A proxy harness: a tower layer (a cache, a relay, ...) in front of a
//! forwarding client to an upstream (the mock LLM), served over a real
//! socket the way the gateway does it, reduced.
//!
//! ```no_run
//! # async fn example(upstream: &str) {
//! use tower::layer::util::Identity;
//!
//! let proxy = test_support::proxy::start(Identity::new(), upstream).await;
//! let url = proxy.url("/v1/chat/completions");
//! // ...; dropping `proxy` stops it.
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Uri, Version, header};
use axum::response::IntoResponse;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tower::{Layer, Service};

/// Forwards every request to the same path on an upstream, streaming the
/// answer through frame by frame (hyper-util's pooled client, no Nagle).
/// An upstream it can't reach is a `502`.
#[derive(Clone)]
pub struct Forward {
    client: Client<HttpConnector, Body>,
    base: String,
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward").field("base", &self.base).finish()
    }
}

impl Forward {
    /// Forwards to `base` (`http://host:port`).
    pub fn new(base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: base.trim_end_matches('/').to_owned(),
        }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{}{path}", self.base)
            .parse::<Uri>()
            .expect("a valid upstream URI");
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        Box::pin(async move {
            match client.request(req).await {
                Ok(res) => Ok(res.map(Body::new)),
                Err(error) => Ok(
                    (StatusCode::BAD_GATEWAY, format!("upstream error: {error}")).into_response(),
                ),
            }
        })
    }
}

/// An app served on a loopback port; dropping it stops serving.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`; `url("")` is the base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on a free loopback port.
///
/// # Panics
/// When no port can be bound.
pub async fn serve(router: Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Server { addr, task }
}

/// `layer` in front of a [`Forward`] to `upstream`, for every path and
/// method, as a router to add routes to (they win over the proxy).
pub fn router<L>(layer: L, upstream: &str) -> Router
where
    L: Layer<Forward>,
    L::Service: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    Router::new().fallback_service(layer.layer(Forward::new(upstream)))
}

/// Serves `layer` in front of a [`Forward`] to `upstream` on a free
/// loopback port: [`router`], then [`serve`].
pub async fn start<L>(layer: L, upstream: &str) -> Server
where
    L: Layer<Forward>,
    L::Service: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    serve(router(layer, upstream)).await
}
