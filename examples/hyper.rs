//! The smallest server with tower-ai layers on plain hyper (no framework).
//!
//! ```text
//! cargo run --example hyper -- [--listen 127.0.0.1:3000]
//! curl -i localhost:3000/
//! ```
//!
//! Any `tower::Service<http::Request<B>>` can be layered: here a hello-world
//! service behind sessions and a rate limit of 5 requests per client (one
//! more every 2 s), adapted to hyper with
//! `hyper_util::service::TowerToHyperService`. The accept loop puts each
//! connection's peer address in the request extensions, where the rate
//! limiter's peer-IP key looks for it.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_ai::ratelimit::{Policy, Rate, RateLimitLayer};
use tower_ai::session::{MemoryStore, SessionLayer};

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::from("hello from hyper\n")))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen: SocketAddr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 3000)));

    // The layers sit between hyper and the service, outermost first.
    let limits = RateLimitLayer::builder()
        .policy(Policy::token_bucket(5, Rate::per_second(0.5)))
        .build()
        .map_err(std::io::Error::other)?;
    let service = ServiceBuilder::new()
        .layer(SessionLayer::new(MemoryStore::new()))
        .layer(limits)
        .service_fn(hello);

    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        let service = TowerToHyperService::new(
            ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                })
                .service(service.clone()),
        );
        tokio::spawn(async move {
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}
