use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use http::Request;
use http::Response;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. When the
/// application installed a recorder of its own first, `/metrics` renders only
/// what this one sees (nothing); the application's exporter has the rest.
pub(crate) fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(Remembered::new(recorder)).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            keep_up(handle.clone());
            handle
        })
        .clone()
}

/// The bounds of every `*_seconds` histogram: from a cached answer's
/// milliseconds to a long generation's minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The exporter, with the times as Prometheus histograms: their buckets
/// add up across replicas (`histogram_quantile` over `sum by (le)`), where
/// a summary's quantiles, each computed by one replica, can't be combined.
fn builder() -> PrometheusBuilder {
    match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
    {
        Ok(builder) => builder,
        // Refused only for empty bounds, which these are not.
        Err(e) => {
            tracing::warn!(error = %e, "metrics: times are rendered as summaries");
            PrometheusBuilder::new()
        }
    }
}

/// How often the histograms' samples are folded into their buckets (and
/// the other distributions into their summaries).
const UPKEEP: Duration = Duration::from_secs(5);

/// Folds the distributions' samples into their buckets and summaries
/// every [`UPKEEP`], on a thread of its own (the recorder is the process's,
/// beyond any runtime):
/// the exporter keeps every sample until then, so a gateway nobody scrapes
/// would hold each request's samples for ever.
fn keep_up(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded only when /metrics is read");
    }
}

/// The most handles [`Remembered`] keeps of each kind (the labels are
/// bounded by design; this bounds a mistake).
const REMEMBERED: usize = 16_384;

/// A recorder in front of another that remembers the handles it made. The
/// Prometheus recorder copies a metric's key (its name and labels) into a
/// new allocation on every `counter!`, before it even looks the metric up:
/// on a request path that counts a dozen things, that was a dozen copies and
/// lookups. Here a known key is one hash (precomputed in the key) and one
/// read-locked lookup.
struct Remembered<R> {
    inner: R,
    counters: Handles<Counter>,
    gauges: Handles<Gauge>,
    histograms: Handles<Histogram>,
}

type Handles<T> = RwLock<HashMap<Key, T, BuildHasherDefault<KeyHash>>>;

/// A [`Key`]'s own hash, as it is: a key hashes as one `write_u64` of the
/// hash made with it (rapidhash of its name and labels), which SipHash
/// would only hash again.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not what a `Key` writes; anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<R> Remembered<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            counters: RwLock::default(),
            gauges: RwLock::default(),
            histograms: RwLock::default(),
        }
    }
}

fn remembered<T: Clone>(handles: &Handles<T>, key: &Key, make: impl FnOnce() -> T) -> T {
    if let Some(known) = handles.read().get(key) {
        return known.clone();
    }
    let made = make();
    let mut handles = handles.write();
    if handles.len() < REMEMBERED {
        handles.insert(key.clone(), made.clone());
    }
    made
}

impl<R: Recorder> Recorder for Remembered<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        remembered(&self.counters, key, || {
            self.inner.register_counter(key, metadata)
        })
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        remembered(&self.gauges, key, || {
            self.inner.register_gauge(key, metadata)
        })
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        remembered(&self.histograms, key, || {
            self.inner.register_histogram(key, metadata)
        })
    }
}

/// Counts requests by route template (never the raw path, which a client
/// could vary without bound) and status, and times them to the response
/// head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordLayer;

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Record { inner }
    }
}

/// The service of [`RecordLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Record<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for Record<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = match req.extensions().get::<MatchedPath>() {
            Some(template) => route_label(template.as_str()),
            // The model endpoints are not routed by axum (see `Front`):
            // their paths are their templates.
            None => crate::front::model_path(req.uri().path()).map_or(
                SharedString::const_str("unmatched"),
                SharedString::const_str,
            ),
        };
        RecordFuture {
            future: self.inner.call(req),
            route,
            started: Instant::now(),
        }
    }
}

pin_project! {
    /// The response future of [`Record`].
    pub(crate) struct RecordFuture<F> {
        #[pin]
        future: F,
        route: SharedString,
        started: Instant,
    }
}

impl<F, B, E> Future for RecordFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Ok(res) = &result {
            let route = this.route.clone();
            metrics::counter!("tower_ai_gateway_requests_total", "route" => route.clone(), "status" => status_label(res.status()))
                .increment(1);
            metrics::histogram!("tower_ai_gateway_response_head_seconds", "route" => route)
                .record(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}

/// The routes besides the model endpoints a label names without an
/// allocation.
const ROUTES: [&str; 3] = ["/v1/models", "/v1/streams/{id}", "/healthz"];

/// A route template as a label.
fn route_label(template: &str) -> SharedString {
    let mut known = crate::endpoint::MODEL_PATHS.iter().chain(&ROUTES);
    match known.find(|r| **r == template) {
        Some(known) => SharedString::const_str(known),
        None => SharedString::from(template.to_owned()),
    }
}

/// A status code as a label, without an allocation for the usual ones.
pub(crate) fn status_label(status: http::StatusCode) -> SharedString {
    const KNOWN: [&str; 12] = [
        "200", "201", "202", "204", "400", "401", "404", "413", "429", "500", "502", "503",
    ];
    let code = status.as_str();
    match KNOWN.iter().find(|k| **k == code) {
        Some(known) => SharedString::const_str(known),
        None => SharedString::from(code.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_codes_and_templates() {
        for code in [200, 429, 418, 504] {
            let status = http::StatusCode::from_u16(code).expect("a status");
            assert_eq!(&*status_label(status), code.to_string());
        }
        assert_eq!(
            &*route_label("/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(&*route_label("/admin/keys"), "/admin/keys");
    }

    #[test]
    fn remembered_handles_are_found_by_the_keys_own_hash() {
        use std::hash::BuildHasher;
        let key = |route: &'static str| {
            Key::from_parts("requests", vec![metrics::Label::new("route", route)])
        };
        let chat = key("/v1/chat/completions");
        let built = BuildHasherDefault::<KeyHash>::default();
        assert_eq!(built.hash_one(&chat), chat.get_hash());

        let recorder = Remembered::new(metrics::NoopRecorder);
        let metadata = Metadata::new("test", metrics::Level::INFO, None);
        recorder.register_counter(&chat, &metadata).increment(1);
        recorder
            .register_counter(&key("/v1/chat/completions"), &metadata)
            .increment(1);
        recorder
            .register_counter(&key("/v1/embeddings"), &metadata)
            .increment(1);
        assert_eq!(recorder.counters.read().len(), 2);
        assert!(
            recorder
                .counters
                .read()
                .contains_key(&key("/v1/embeddings"))
        );
    }
}
