//! A `tower_ai_core::reject::Refusal` reaches a real tonic client as the
//! gRPC status it stands for.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_ai_core::body::ResponseBody;
use tower_ai_core::reject::Refusal;

type Empty = http_body_util::Empty<Bytes>;

/// Serves `refusal` to every request over HTTP/2, and returns the address.
async fn refusing_server(refusal: Refusal) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let res: http::Response<ResponseBody<Empty>> = refusal.clone().for_request(&req);
        async move { Ok::<_, Infallible>(res) }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            });
        }
    });
    addr
}

async fn call(addr: std::net::SocketAddr) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connected");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let result = client
        .unary::<(), (), _>(
            tonic::Request::new(()),
            PathAndQuery::from_static("/test.Service/Call"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    match result {
        Ok(_) => panic!("the call was refused, yet the client saw a reply"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn rate_limit_refusal_is_resource_exhausted() {
    let addr = refusing_server(
        Refusal::too_many_requests()
            .detail("60 requests per minute: 100% used")
            .retry_after(Duration::from_secs(7)),
    )
    .await;
    let status = call(addr).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "60 requests per minute: 100% used");
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .map(|v| v.to_str().ok()),
        Some(Some("7"))
    );
}

#[tokio::test]
async fn unavailable_refusal_is_unavailable() {
    let addr = refusing_server(Refusal::service_unavailable().detail("circuit open")).await;
    let status = call(addr).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "circuit open");
}

/// A unary gRPC method that answers `()` to `()`.
#[derive(Clone)]
struct Ping;

impl tonic::server::NamedService for Ping {
    const NAME: &'static str = "test.Service";
}

impl tonic::server::UnaryService<()> for Ping {
    type Response = ();
    type Future = std::future::Ready<Result<tonic::Response<()>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<()>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Ping {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ()>::default());
            Ok(grpc.unary(Ping, req).await)
        })
    }
}

#[tokio::test]
async fn the_rate_limiter_answers_a_tonic_client_with_resource_exhausted() {
    use tower_ai::ratelimit::{Policy, Rate, RateLimitLayer};

    let limit = RateLimitLayer::builder()
        .key(tower_ai_core::key::Global)
        .policy(Policy::token_bucket(2, Rate::per_minute(1.0)).named("grpc"))
        .build()
        .expect("valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(limit)
            .add_service(Ping)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connected");
    let mut client = tonic::client::Grpc::new(channel);
    let mut results = Vec::new();
    for _ in 0..3 {
        client.ready().await.expect("ready");
        results.push(
            client
                .unary::<(), (), _>(
                    tonic::Request::new(()),
                    PathAndQuery::from_static("/test.Service/Ping"),
                    tonic_prost::ProstCodec::default(),
                )
                .await,
        );
    }
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    let Err(status) = &results[2] else {
        panic!("the third call was admitted")
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("grpc"), "{}", status.message());
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("60")
    );
}
