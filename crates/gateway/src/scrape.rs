//! Reading each deployment's own view of its load: its `/metrics` (vLLM or
//! SGLang), every `metrics_interval_ms`, into its pool
//! ([`Pool::report`](tower_ai_balance::Pool::report)).

use std::time::Duration;

use axum::body::Body;
use http::Request;
use tokio::task::JoinHandle;
use tower_ai_balance::signals::Signals;
use tower_ai_core::body::read_limited;

use crate::models::Models;

/// The largest metrics page read.
const MAX_METRICS: usize = 1 << 20;

/// The scraping tasks; they stop when this is dropped.
#[derive(Debug, Default)]
pub(crate) struct Scrapers(Vec<JoinHandle<()>>);

impl Drop for Scrapers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts a task per deployment of every model with a metrics interval.
pub(crate) fn start(models: &Models) -> Scrapers {
    let mut tasks = Vec::new();
    for route in models.named() {
        let Some(interval) = route.metrics_interval else {
            continue;
        };
        for endpoint in route.pool.endpoints() {
            let pool = route.pool.clone();
            let name = endpoint.name().to_owned();
            let deployment = endpoint.target().clone();
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let signals = read(&deployment.endpoint, interval).await;
                    if signals.is_none() {
                        tracing::debug!(deployment = %name, "no metrics read");
                    }
                    pool.report(&name, signals);
                }
            }));
        }
    }
    Scrapers(tasks)
}

/// One read of a deployment's metrics, within `interval` (at least 1 s).
async fn read(endpoint: &crate::endpoint::Endpoint, interval: Duration) -> Option<Signals> {
    let uri = endpoint.metrics_uri().ok()?;
    let req = Request::get(uri).body(Body::empty()).ok()?;
    let within = interval.max(Duration::from_secs(1));
    let res = tokio::time::timeout(within, endpoint.client.request(req))
        .await
        .ok()?
        .ok()?;
    if !res.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(within, read_limited(res.into_body(), MAX_METRICS))
        .await
        .ok()?
        .ok()?;
    Signals::parse(std::str::from_utf8(&body).ok()?)
}
