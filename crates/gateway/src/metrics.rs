use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. When the
/// application installed a recorder of its own first, `/metrics` renders only
/// what this one sees (nothing); the application's exporter has the rest.
pub(crate) fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Counts requests by route template (never the raw path, which a client
/// could vary without bound) and status, and times them to the response
/// head.
pub(crate) async fn record(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("tower_ai_gateway_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tower_ai_gateway_response_head_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}
