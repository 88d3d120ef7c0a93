//! OpenTelemetry traces over OTLP.
//!
//! [`init`] installs the process's `tracing` subscriber: logs to stderr and,
//! when the config has an `[otel]` table, the gateway's model-call spans
//! exported over OTLP/HTTP (protobuf bodies, `POST {endpoint}/v1/traces`).
//! Each model call is one span named `{operation} {model}` (`chat
//! gpt-4o-mini`), of kind client, with the GenAI semantic conventions'
//! attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
//! `gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...); it ends when
//! the answer's body does, so a streamed answer's usage is on it. The
//! resource's `service.name` is `otel.service_name`. The standard variables
//! still apply where the config says nothing: `OTEL_EXPORTER_OTLP_HEADERS`
//! (a vendor's API key, say) and `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! Only spans of the `tower_ai_gateway` target at `info` or above are
//! exported: the per-request spans of hyper and tower-http would add a
//! parent per HTTP request (health checks and metrics scrapes included)
//! whose fields are not the OpenTelemetry HTTP conventions' names.
//!
//! Exporting never holds up a request. A span that ends is queued without
//! waiting (a full queue, 2048 spans, drops it); batches are sent from the
//! OpenTelemetry batch processor's own thread, through an HTTP client that
//! runs on a one-thread runtime of its own, every 5 s or at 512 spans. A
//! collector that is down, slow or refusing costs spans, never requests,
//! and never a worker of the gateway's runtime.
//!
//! # Example
//!
//! ```no_run
//! use tower_ai_gateway::{Config, Gateway, telemetry};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_args(std::env::args().skip(1))?;
//! let telemetry = telemetry::init(config.otel.as_ref())?;
//! let gateway = Gateway::start(config).await?;
//! tokio::signal::ctrl_c().await?;
//! gateway.shutdown().await?;
//! // Sends the spans still queued (at most 5 s).
//! telemetry.shutdown()?;
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::OtelConfig;

/// How long one export may take, retries included, before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`Telemetry::shutdown`] waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector's answer is a small protobuf; anything larger is refused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// The spans the OTLP layer exports: the gateway's own.
const EXPORTED_TARGET: &str = "tower_ai_gateway";

/// What the logs show without `RUST_LOG`: `info`, but not the model calls'
/// spans. Those are for the OTLP export; in the logs they would only
/// decorate the rare line logged inside one, and formatting each call's
/// attributes for that costs about 6% of the gateway's throughput.
/// `RUST_LOG=info` puts them back.
const LOGGED: &str = "info,tower_ai_gateway::gen_ai=warn";

/// Installs the process's tracing subscriber: `fmt` logs to stderr, filtered
/// by `RUST_LOG` (default [`LOGGED`]), and, when `otel` is given, the
/// gateway's spans exported over OTLP/HTTP.
///
/// Keep the returned [`Telemetry`] until the program ends: dropping it or
/// calling [`Telemetry::shutdown`] sends the spans still queued and stops
/// the exporter. Nothing is sent at start, so an unreachable collector is
/// not an error here (its export failures are logged as they happen).
///
/// # Errors
///
/// A subscriber is already installed, or the exporter can't be built (an
/// endpoint that isn't an `http://` or `https://` URL).
pub fn init(otel: Option<&OtelConfig>) -> Result<Telemetry, TelemetryError> {
    let logged = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(LOGGED));
    let (subscriber, telemetry) = subscriber(otel, logged, std::io::stderr)?;
    subscriber.try_init().map_err(TelemetryError::Subscriber)?;
    Ok(telemetry)
}

/// [`init`]'s subscriber, not installed: logs filtered by `logged` to
/// `writer`, and the OTLP layer when `otel` is given.
///
/// Without `otel` there is no traces layer at all, not a `None` one: an
/// `Option` layer that is `None` says it wants every callsite, so the
/// registry made, entered, recorded and closed each model call's span
/// (about 1% of a profile of the gateway) though no layer wanted it.
fn subscriber<W>(
    otel: Option<&OtelConfig>,
    logged: EnvFilter,
    writer: W,
) -> Result<(tracing::Dispatch, Telemetry), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_filter(logged);
    let registry = tracing_subscriber::registry().with(logs);
    Ok(match otel {
        Some(otel) => {
            let (traces, telemetry) = otel_layer(otel)?;
            (tracing::Dispatch::new(registry.with(traces)), telemetry)
        }
        None => (
            tracing::Dispatch::new(registry),
            Telemetry { provider: None },
        ),
    })
}

/// The OTLP half of [`init`], for a caller that composes its own
/// subscriber: a layer exporting the gateway's spans (target
/// `tower_ai_gateway`, `info` and above) to `{otel.endpoint}/v1/traces`,
/// and the handle that flushes and stops its exporter.
///
/// Starts the batch processor's thread and the exporter's one-thread
/// runtime; opens no connection until the first batch.
///
/// # Errors
///
/// The endpoint isn't an `http://` or `https://` URL, or the exporter or its
/// runtime can't be made.
pub fn otel_layer<S>(otel: &OtelConfig) -> Result<(impl Layer<S>, Telemetry), TelemetryError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let endpoint = traces_endpoint(&otel.endpoint)?;
    let client = ExportClient::new(endpoint.scheme_str() == Some("https"))?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.to_string())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(TelemetryError::Exporter)?;
    let resource = Resource::builder()
        .with_service_name(otel.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(EXPORTED_TARGET))
        // The thread a task happened to start on, and per-poll timings, say
        // nothing about a model call.
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(EXPORTED_TARGET, tracing::Level::INFO));
    Ok((
        layer,
        Telemetry {
            provider: Some(provider),
        },
    ))
}

/// `{endpoint}/v1/traces`, checked.
fn traces_endpoint(endpoint: &str) -> Result<Uri, TelemetryError> {
    let bad = |why: String| TelemetryError::Endpoint(format!("otel.endpoint {endpoint}: {why}"));
    let uri: Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        .parse()
        .map_err(|e| bad(format!("{e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(bad("expected an http:// or https:// URL".to_owned()));
    }
    if uri.query().is_some() {
        return Err(bad("a base URL has no query".to_owned()));
    }
    Ok(uri)
}

/// The OpenTelemetry exporter of a process: flushes and stops it on
/// [`shutdown`](Telemetry::shutdown) or on drop. Without an `[otel]` table
/// it holds nothing and both are no-ops.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an `[otel]` table was given).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans that have ended so far, and waits for the collector's
    /// answer: blocks the calling thread up to 5 s (the export itself runs
    /// on the exporter's own thread and runtime, so any thread may wait).
    ///
    /// # Errors
    ///
    /// The export failed (the collector is unreachable or refused the
    /// spans) or timed out.
    pub fn force_flush(&self) -> Result<(), TelemetryError> {
        match &self.provider {
            Some(provider) => provider.force_flush().map_err(TelemetryError::Export),
            None => Ok(()),
        }
    }

    /// Sends the spans still queued and stops the exporter; blocks the
    /// calling thread up to 5 s. Spans that end afterwards are dropped.
    ///
    /// # Errors
    ///
    /// The last export failed or didn't finish in time.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        match self.provider.take() {
            Some(provider) => provider
                .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
                .map_err(TelemetryError::Export),
            None => Ok(()),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(%error, "OpenTelemetry: the last spans were not exported");
        }
    }
}

/// Why telemetry could not be set up, or an export failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `otel.endpoint` is not an `http://` or `https://` base URL.
    Endpoint(String),
    /// The exporter's TLS setup failed.
    Tls(rustls::Error),
    /// The exporter's runtime could not be started.
    Runtime(std::io::Error),
    /// The OTLP exporter could not be built.
    Exporter(opentelemetry_otlp::ExporterBuildError),
    /// A tracing subscriber was already installed in this process.
    Subscriber(tracing_subscriber::util::TryInitError),
    /// A flush or shutdown failed: the collector is unreachable, refused the
    /// spans, or didn't answer in time.
    Export(opentelemetry_sdk::error::OTelSdkError),
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Endpoint(why) => f.write_str(why),
            Self::Tls(e) => write!(f, "otel: TLS setup: {e}"),
            Self::Runtime(e) => write!(f, "otel: can't start the exporter's runtime: {e}"),
            Self::Exporter(e) => write!(f, "otel: can't build the OTLP exporter: {e}"),
            Self::Subscriber(e) => write!(f, "can't install the tracing subscriber: {e}"),
            Self::Export(e) => write!(f, "otel: export failed: {e}"),
        }
    }
}

impl StdError for TelemetryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Endpoint(_) => None,
            Self::Tls(e) => Some(e),
            Self::Runtime(e) => Some(e),
            Self::Exporter(e) => Some(e),
            Self::Subscriber(e) => Some(e),
            Self::Export(e) => Some(e),
        }
    }
}

/// The exporter's HTTP client: hyper (the gateway's own, with rustls and
/// ring for `https://` collectors) on a one-thread runtime that belongs to
/// the exporter. The batch processor waits for each export on its own
/// thread; the runtime keeps the connection alive between exports, so no
/// export needs, or blocks, the gateway's runtime.
struct ExportClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: ExportRuntime,
}

impl ExportClient {
    fn new(https: bool) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otel-export")
            .enable_all()
            .build()
            .map_err(TelemetryError::Runtime)?;
        let mut roots = rustls::RootCertStore::empty();
        if https {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TelemetryError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        // Requests are made on the exporter's runtime (see `send_bytes`), so
        // the pool's connection tasks run there too.
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            runtime: ExportRuntime(Some(runtime)),
        })
    }
}

impl fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportClient").finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let Some(runtime) = &self.runtime.0 else {
            return Err("the exporter's runtime is gone".into());
        };
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BODY).collect().await?;
            Ok::<_, HttpError>(Response::from_parts(parts, body.to_bytes()))
        };
        // The caller is the batch processor's thread, outside any runtime:
        // the exchange and its timer run on the exporter's runtime, and the
        // join handle is a plain future.
        let exchange = runtime.spawn(async move {
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer from the collector in {EXPORT_TIMEOUT:?}").into()),
            }
        });
        exchange.await?
    }
}

/// Owns the exporter's runtime; stops it without waiting, so dropping the
/// exporter is allowed anywhere, even inside another runtime.
struct ExportRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test, not two: a callsite's interest is shared by every
    // subscriber alive in the process, so two tests' subscribers side by
    // side would see each other's.
    #[test]
    fn the_default_logs_leave_out_the_model_calls_spans() {
        use crate::proxy::GEN_AI_TARGET;
        let (logged, _) = subscriber(None, EnvFilter::new(LOGGED), std::io::sink).unwrap();
        tracing::dispatcher::with_default(&logged, || {
            assert!(!tracing::span_enabled!(target: GEN_AI_TARGET, tracing::Level::INFO));
            // Not made at all: no layer wants it.
            assert!(tracing::info_span!(target: GEN_AI_TARGET, "chat").is_disabled());
            assert!(tracing::event_enabled!(target: GEN_AI_TARGET, tracing::Level::WARN));
            assert!(tracing::event_enabled!(target: "tower_ai_gateway", tracing::Level::INFO));
            assert!(!tracing::event_enabled!(target: "tower_ai_gateway", tracing::Level::DEBUG));
        });
        drop(logged);
        // `RUST_LOG=info` puts them back.
        let (info, _) = subscriber(None, EnvFilter::new("info"), std::io::sink).unwrap();
        tracing::dispatcher::with_default(&info, || {
            assert!(!tracing::info_span!(target: GEN_AI_TARGET, "chat").is_disabled());
        });
    }

    #[test]
    fn the_traces_path_goes_after_the_base_url() {
        let uri = traces_endpoint("http://127.0.0.1:4318").unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:4318/v1/traces");
        let uri = traces_endpoint("https://collector.example/otlp/").unwrap();
        assert_eq!(uri.to_string(), "https://collector.example/otlp/v1/traces");
    }

    #[test]
    fn refuses_what_is_not_an_http_url() {
        for endpoint in [
            "127.0.0.1:4318",
            "grpc://127.0.0.1:4317",
            "http://",
            "http://h?q=1",
        ] {
            assert!(
                matches!(traces_endpoint(endpoint), Err(TelemetryError::Endpoint(_))),
                "{endpoint}"
            );
        }
    }
}
