//! One upstream server: a pooled client for its base URL, over https
//! (rustls: the platform's and webpki's roots, plus a CA file of its own)
//! or plain http.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// How long an idle pooled connection to an upstream is kept.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The timeouts of an upstream client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) head: Duration,
    pub(crate) idle: Duration,
}

/// One upstream server: a pooled client for its base URL, over https
/// (rustls; HTTP/2 when ALPN offers it, else HTTP/1.1) or plain http.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    base_path: Arc<str>,
    /// The upstream URIs of the model endpoints' paths, made once.
    known: Arc<[(&'static str, Uri)]>,
    pub(crate) head_timeout: Duration,
}

/// The model endpoints: each a `POST` sent on to the model's server.
pub(crate) const MODEL_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
];

/// The paths the gateway sends upstream, whose URIs each endpoint makes
/// once: the model endpoints' and the model list's.
fn known_paths() -> impl Iterator<Item = &'static str> {
    MODEL_PATHS.into_iter().chain(["/v1/models"])
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Why an upstream can't be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointError(pub(crate) String);

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Endpoint {
    /// A client for the server at `base_url` (`http[s]://host[:port][/prefix]`),
    /// trusting the platform's roots, the webpki roots and the certificates
    /// of `extra_ca` (a PEM file), if given.
    pub(crate) fn new(
        base_url: &str,
        extra_ca: Option<&Path>,
        timeouts: Timeouts,
    ) -> Result<Self, EndpointError> {
        let bad = |why: &str| EndpointError(format!("base_url {base_url}: {why}"));
        let uri: Uri = base_url.parse().map_err(|e| bad(&format!("{e}")))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(bad("expected an http:// or https:// URL")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a base URL has no query"));
        }
        let tls = tls_config(extra_ca)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeouts.connect));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.idle)
            .build(connector);
        let mut endpoint = Self {
            client,
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').into(),
            known: Arc::new([]),
            head_timeout: timeouts.head,
        };
        let known: Result<Vec<_>, _> = known_paths()
            .map(|path| endpoint.make_uri(path).map(|uri| (path, uri)))
            .collect();
        endpoint.known = known.map_err(|e| bad(&format!("{e}")))?.into();
        Ok(endpoint)
    }

    /// The server's host, for traces.
    pub(crate) fn host(&self) -> &str {
        self.authority.host()
    }

    /// The server's metrics: `/metrics` at its root (where vLLM and SGLang
    /// serve them), whatever its base path.
    pub(crate) fn metrics_uri(&self) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/metrics")
            .build()
    }

    /// The upstream URI for a client's path: the base path, then the
    /// client's path, without doubling a `/v1` the base URL already ends
    /// with.
    pub(crate) fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        match self.known.iter().find(|(path, _)| *path == path_and_query) {
            Some((_, uri)) => Ok(uri.clone()),
            None => self.make_uri(path_and_query),
        }
    }

    fn make_uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let rest = if self.base_path.ends_with("/v1")
            && (path_and_query.starts_with("/v1/") || path_and_query.starts_with("/v1?"))
        {
            &path_and_query[3..]
        } else {
            path_and_query
        };
        let path_and_query: PathAndQuery = format!("{}{}", self.base_path, rest).parse()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// The roots every upstream client trusts: the platform's and webpki's,
/// loaded once.
fn base_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(native = added, "loaded the platform's root certificates");
        roots
    })
}

fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, EndpointError> {
    let mut roots = base_roots().clone();
    if let Some(path) = extra_ca {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| EndpointError(format!("tls_ca_file {shown}: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EndpointError(format!("tls_ca_file {shown}: {e}")))?;
        if certs.is_empty() {
            return Err(EndpointError(format!(
                "tls_ca_file {shown}: no PEM certificate in it"
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| EndpointError(format!("tls_ca_file {shown}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EndpointError(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
