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
