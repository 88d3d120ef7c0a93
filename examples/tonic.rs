//! The smallest gRPC server with tower-ai layers, on tonic.
//!
//! ```text
//! cargo run --example tonic -- [--listen 127.0.0.1:50051]
//! ```
//!
//! The messages and the service are written by hand with `prost` derives, so
//! building needs no `protoc`. On start the example calls itself once with a
//! real tonic client and prints the reply, then serves until Ctrl-C.
//!
//! A tower-ai layer that refuses a gRPC call (`content-type:
//! application/grpc`) answers with a gRPC status in a trailers-only
//! response (e.g. `RESOURCE_EXHAUSTED` from the rate limiter), which a tonic
//! client reads as an ordinary `tonic::Status`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tonic::server::NamedService;
use tonic_prost::ProstCodec;
use tower::Service;

/// `helloworld.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `helloworld.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// The `helloworld.Greeter` service.
#[derive(Debug, Clone, Default)]
pub struct Greeter;

impl tonic::server::UnaryService<HelloRequest> for Greeter {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let name = request.into_inner().name;
        std::future::ready(Ok(tonic::Response::new(HelloReply {
            message: format!("Hello, {name}!"),
        })))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != SAY_HELLO {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            });
        }
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(Greeter, req).await)
        })
    }
}

impl NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

/// Calls `SayHello` on `channel`.
async fn say_hello(
    channel: tonic::transport::Channel,
    name: &str,
) -> Result<HelloReply, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reply = client
        .unary(
            tonic::Request::new(HelloRequest { name: name.into() }),
            PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await?;
    Ok(reply.into_inner())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051)));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;

    // Layers go on the server builder and apply to every service: here one
    // rate limit for the whole server, 100 calls refilled at 10 a second.
    let limits = tower_ai::ratelimit::RateLimitLayer::builder()
        .key(tower_ai::core::key::Global)
        .policy(tower_ai::ratelimit::Policy::token_bucket(
            100,
            tower_ai::ratelimit::Rate::per_second(10.0),
        ))
        .build()?;
    let server = tonic::transport::Server::builder()
        .layer(limits)
        .add_service(Greeter)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        );
    let server = tokio::spawn(server);
    println!("gRPC server listening on {addr}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let reply = say_hello(channel, "tower-ai").await?;
    println!("SayHello answered: {}", reply.message);

    server.await??;
    Ok(())
}
