//! The gateway's service: a model endpoint's request goes straight to the
//! model routes' stack, any other to the router.
//!
//! The model endpoints are five fixed paths that carry nearly all of the
//! traffic. Routed by axum, each of their requests would pay for the
//! router's lookup, its extensions (`MatchedPath`, `OriginalUri`, the URL
//! parameters), a boxed clone of the route's service and a boxed future;
//! here it pays for one comparison of its path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use pin_project_lite::pin_project;
use tower::Service;

use crate::endpoint::MODEL_PATHS;

/// Sends a request for one of [`MODEL_PATHS`] to `models`, any other to
/// `router`.
#[derive(Clone)]
pub(crate) struct Front<M> {
    pub(crate) models: M,
    pub(crate) router: Router,
}

/// The model endpoint's path `path` is (exactly: as the router matches it),
/// if it is one: the route's template, too.
pub(crate) fn model_path(path: &str) -> Option<&'static str> {
    MODEL_PATHS.into_iter().find(|p| *p == path)
}

impl<M, B> Service<Request> for Front<M>
where
    M: Service<Request, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The router is always ready.
        self.models.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if model_path(req.uri().path()).is_some() {
            FrontFuture::Model {
                future: self.models.call(req),
            }
        } else {
            FrontFuture::Routed {
                future: self.router.call(req),
            }
        }
    }
}

pin_project! {
    /// The response future of [`Front`].
    #[project = FrontProj]
    pub(crate) enum FrontFuture<F> {
        Model { #[pin] future: F },
        Routed { #[pin] future: RouteFuture<Infallible> },
    }
}

impl<F, B> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FrontProj::Model { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(Body::new)))
            }
            FrontProj::Routed { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_endpoints_paths_go_to_the_models() {
        for path in MODEL_PATHS {
            assert_eq!(model_path(path), Some(path));
        }
        for path in [
            "/v1/chat/completions/",
            "/v1/chat/completions/x",
            "/V1/chat/completions",
            "/v1/chat",
            "/v1/models",
            "/",
            "",
        ] {
            assert_eq!(model_path(path), None, "{path}");
        }
    }
}
