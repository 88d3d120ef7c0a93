//! A TLS terminator in front of a loopback server, for tests that need
//! `https://`.
//!
//! [`TlsFront::start`] makes a fresh certificate authority at test time,
//! issues a server certificate for `localhost` and `127.0.0.1` signed by it,
//! and listens on a free loopback port. Each connection is decrypted and its
//! bytes are copied both ways to a plain TCP backend, so a plain HTTP server
//! (an axum app, the mock LLM) answers `https://` requests. ALPN offers `h2`
//! and `http/1.1`; the backend sees whichever the client chose, as raw bytes
//! (axum's server auto-detects HTTP/2 prior knowledge).
//!
//! A client trusts the front by loading [`TlsFront::ca_pem`] (or the file
//! [`TlsFront::write_ca`] writes) as its only root. [`other_ca_pem`] and
//! [`TlsFront::start_for_host`] make the "unknown CA" and "wrong name" cases.
//!
//! ```no_run
//! # async fn demo(backend: std::net::SocketAddr) -> std::io::Result<()> {
//! use test_support::tls::TlsFront;
//!
//! let front = TlsFront::start(backend).await?;
//! let ca = front.write_ca(std::env::temp_dir())?;
//! // ... point a client that trusts `ca` at `front.url()` ...
//! # Ok(()) }
//! ```
//!
//! Making the certificates costs a few milliseconds (two ECDSA P-256 keys).
//! The front uses `ring` as the crypto provider explicitly, so no process-wide
//! default provider has to be installed.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The names [`TlsFront::start`] puts in its server certificate.
pub const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A TLS terminator on a free loopback port that forwards each connection's
/// decrypted bytes to a plain TCP backend.
///
/// It stops accepting, and drops the connections it forwards, when dropped.
pub struct TlsFront {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// What the accept loop reports back to the handle.
#[derive(Debug, Default)]
struct Shared {
    /// The ALPN protocol of each completed handshake, in order.
    negotiated: Mutex<Vec<Option<Vec<u8>>>>,
    failed_handshakes: AtomicUsize,
}

impl Shared {
    fn negotiated(&self) -> MutexGuard<'_, Vec<Option<Vec<u8>>>> {
        // A Vec that is only ever pushed to stays consistent whatever panicked.
        self.negotiated
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TlsFront {
    /// Starts a front for `backend` with a certificate for `localhost` and
    /// `127.0.0.1`, signed by a CA made for this front alone.
    ///
    /// # Errors
    /// When the certificates can't be made or no loopback port can be bound.
    pub async fn start(backend: SocketAddr) -> io::Result<Self> {
        Self::start_with_names(backend, NAMES.map(String::from).to_vec()).await
    }

    /// Like [`TlsFront::start`], but the certificate names `host` only, so a
    /// client connecting to `127.0.0.1` or `localhost` must reject it.
    ///
    /// # Errors
    /// When `host` is not a valid DNS name or IP address, when the
    /// certificates can't be made, or no loopback port can be bound.
    pub async fn start_for_host(backend: SocketAddr, host: &str) -> io::Result<Self> {
        Self::start_with_names(backend, vec![host.to_owned()]).await
    }

    async fn start_with_names(backend: SocketAddr, names: Vec<String>) -> io::Result<Self> {
        let ca = new_ca("tower-ai test CA")?;
        let server_key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::new(names).map_err(cert_error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tower-ai test server");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Strict verifiers (Python 3.13's default, for one) want the AKI.
        params.use_authority_key_identifier_extension = true;
        let server_cert = params.signed_by(&server_key, &ca).map_err(cert_error)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let chain = vec![server_cert.der().clone(), ca.der().clone()];
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            backend,
            Arc::clone(&shared),
        ));
        Ok(Self {
            addr,
            ca_pem: ca.pem(),
            shared,
            accept,
        })
    }

    /// The loopback address the front listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://localhost:PORT`, no trailing slash: the same front, reached
    /// by its DNS name.
    pub fn localhost_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The PEM of the CA certificate that signed the server certificate: the
    /// one root a client needs to trust this front.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes [`TlsFront::ca_pem`] to `dir/tower-ai-test-ca-PORT.pem` (the
    /// port keeps fronts sharing a directory apart) and returns the path.
    ///
    /// # Errors
    /// When the file can't be written.
    pub fn write_ca(&self, dir: impl AsRef<Path>) -> io::Result<PathBuf> {
        let path = dir
            .as_ref()
            .join(format!("tower-ai-test-ca-{}.pem", self.addr.port()));
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// The ALPN protocol chosen by each handshake completed so far, in
    /// order: `Some(b"h2")`, `Some(b"http/1.1")`, or `None` when the client
    /// offered none.
    pub fn negotiated(&self) -> Vec<Option<Vec<u8>>> {
        self.shared.negotiated().clone()
    }

    /// How many handshakes completed with `protocol` as their ALPN result
    /// (`b"h2"`, `b"http/1.1"`).
    pub fn negotiated_count(&self, protocol: &[u8]) -> usize {
        self.shared
            .negotiated()
            .iter()
            .filter(|chosen| chosen.as_deref() == Some(protocol))
            .count()
    }

    /// How many handshakes failed so far (a client that rejected the
    /// certificate, a client that spoke plain HTTP, ...). Counted when the
    /// front sees the failure, which can be a moment after the client does.
    pub fn failed_handshakes(&self) -> usize {
        self.shared.failed_handshakes.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFront")
            .field("addr", &self.addr)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        // The connection tasks live in the loop's JoinSet and go with it.
        self.accept.abort();
    }
}

/// The PEM of a CA certificate made on the spot, unrelated to any
/// [`TlsFront`]'s: a client that trusts only this root must reject every
/// front.
///
/// # Errors
/// When the certificate can't be made.
pub fn other_ca_pem() -> io::Result<String> {
    Ok(new_ca("tower-ai other test CA")?.pem())
}

/// A self-signed CA with a fresh key.
fn new_ca(common_name: &str) -> io::Result<CertifiedIssuer<'static, KeyPair>> {
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, key).map_err(cert_error)
}

fn cert_error(error: rcgen::Error) -> io::Error {
    io::Error::other(format!("making a test certificate: {error}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: wait, don't spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        connections.spawn(forward(
            stream,
            acceptor.clone(),
            backend,
            Arc::clone(&shared),
        ));
    }
}

/// One connection: the handshake (its failure ends this connection only),
/// then bytes both ways until either side closes.
async fn forward(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut tls = match acceptor.accept(stream).await {
        Ok(tls) => tls,
        Err(_) => {
            shared.failed_handshakes.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let protocol = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    shared.negotiated().push(protocol);
    let Ok(mut plain) = TcpStream::connect(backend).await else {
        // The client sees the connection close, as with a dead upstream.
        return;
    };
    // Resets and half-closed peers end the copy; nothing to report.
    let _ = copy_both_ways(&mut tls, &mut plain).await;
}

/// Copies `a` to `b` and `b` to `a` until both have ended, shutting down
/// each writer when its reader ends: `tokio::io::copy_bidirectional`, which
/// this crate's tokio features (no `io-util`) leave out.
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Pump::new();
    let mut b_to_a = Pump::new();
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        if forward.is_ready() && backward.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of a copy: a buffer, and how far through it the writer is.
#[derive(Debug)]
struct Pump {
    buf: Box<[u8]>,
    /// `buf[written..filled]` is read but not yet written.
    written: usize,
    filled: usize,
    need_flush: bool,
    reader_done: bool,
    done: bool,
}

impl Pump {
    fn new() -> Self {
        Self {
            buf: vec![0; 16 * 1024].into_boxed_slice(),
            written: 0,
            filled: 0,
            need_flush: false,
            reader_done: false,
            done: false,
        }
    }

    /// Ready once `reader` has ended and `writer` is flushed and shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while !self.done {
            if self.written < self.filled {
                let n = ready!(
                    Pin::new(&mut *writer).poll_write(cx, &self.buf[self.written..self.filled])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.need_flush = true;
            } else if self.reader_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
            } else {
                let mut read = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                    Poll::Ready(result) => {
                        result?;
                        let n = read.filled().len();
                        (self.written, self.filled) = (0, n);
                        self.reader_done = n == 0;
                    }
                    Poll::Pending => {
                        // Nothing more to send for now: push out what the
                        // writer buffered (a TLS stream holds records back).
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{CertificateError, ClientConfig};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A backend that echoes every byte back.
    async fn echo_backend() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the echo backend");
        let addr = listener.local_addr().expect("the echo backend's address");
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let mut echo = Pump::new();
                    let _ = poll_fn(|cx| echo.poll_copy(cx, &mut read, &mut write)).await;
                });
            }
        });
        (addr, task)
    }

    fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.expect("a PEM certificate"))
                .expect("a usable root");
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(
        front: &TlsFront,
        connector: &TlsConnector,
        name: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(name.to_owned()).expect("a valid server name");
        let tcp = TcpStream::connect(front.addr()).await?;
        connector.connect(name, tcp).await
    }

    /// Why the client refused the server's certificate, if it did.
    fn certificate_error(error: &io::Error) -> Option<&CertificateError> {
        match error.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(why) => Some(why),
            _ => None,
        }
    }

    /// Sends a message through the front and reads the backend's echo.
    async fn echo_through(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) {
        let message = b"ping over tls";
        let mut rest = &message[..];
        while !rest.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, rest))
                .await
                .expect("write");
            assert!(n > 0, "the stream takes no more bytes");
            rest = &rest[n..];
        }
        poll_fn(|cx| Pin::new(&mut *stream).poll_flush(cx))
            .await
            .expect("flush");

        let mut echoed = [0u8; 13];
        let mut filled = 0;
        while filled < echoed.len() {
            let mut read = ReadBuf::new(&mut echoed[filled..]);
            poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut read))
                .await
                .expect("read the echo");
            let n = read.filled().len();
            assert!(n > 0, "the stream ended before the echo");
            filled += n;
        }
        assert_eq!(&echoed, message);
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_reaches_the_backend() {
        let (backend, _echo) = echo_backend().await;
        let front = TlsFront::start(backend).await.expect("the front starts");
        assert!(front.url().starts_with("https://127.0.0.1:"));
        assert_eq!(
            front.localhost_url(),
            format!("https://localhost:{}", front.addr().port())
        );

        let h2 = connector(front.ca_pem(), &[b"h2", b"http/1.1"]);
        let mut stream = connect(&front, &h2, "127.0.0.1")
            .await
            .expect("handshake by IP");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        echo_through(&mut stream).await;

        let http1 = connector(front.ca_pem(), &[b"http/1.1"]);
        let mut stream = connect(&front, &http1, "localhost")
            .await
            .expect("handshake by name");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        echo_through(&mut stream).await;

        let none = connector(front.ca_pem(), &[]);
        let mut stream = connect(&front, &none, "localhost")
            .await
            .expect("handshake without ALPN");
        echo_through(&mut stream).await;

        assert_eq!(
            front.negotiated(),
            vec![Some(b"h2".to_vec()), Some(b"http/1.1".to_vec()), None]
        );
        assert_eq!(front.negotiated_count(b"h2"), 1);
        assert_eq!(front.negotiated_count(b"http/1.1"), 1);
        assert_eq!(front.failed_handshakes(), 0);
    }

    #[tokio::test]
    async fn a_client_trusting_another_ca_is_refused_and_the_front_keeps_serving() {
        let (backend, _echo) = echo_backend().await;
        let front = TlsFront::start(backend).await.expect("the front starts");

        let other_pem = other_ca_pem().expect("another CA");
        assert_ne!(other_pem, front.ca_pem());
        let stranger = connector(&other_pem, &[b"http/1.1"]);
        let error = connect(&front, &stranger, "localhost")
            .await
            .expect_err("an unknown CA is rejected");
        assert!(
            matches!(
                certificate_error(&error),
                Some(CertificateError::UnknownIssuer)
            ),
            "unexpected error: {error}"
        );

        // The failed handshake did not take the accept loop down.
        let trusting = connector(front.ca_pem(), &[b"http/1.1"]);
        let mut stream = connect(&front, &trusting, "127.0.0.1")
            .await
            .expect("a later handshake succeeds");
        echo_through(&mut stream).await;
        let counted =
            crate::eventually(Duration::from_secs(5), || front.failed_handshakes() == 1).await;
        assert!(counted.is_some(), "the failed handshake is counted");
        assert_eq!(front.negotiated(), vec![Some(b"http/1.1".to_vec())]);
    }

    #[tokio::test]
    async fn a_certificate_for_another_host_is_refused() {
        let (backend, _echo) = echo_backend().await;
        let front = TlsFront::start_for_host(backend, "not-this-host.example")
            .await
            .expect("the front starts");
        let client = connector(front.ca_pem(), &[]);
        let error = connect(&front, &client, "localhost")
            .await
            .expect_err("the name does not match");
        assert!(
            matches!(
                certificate_error(&error),
                Some(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "unexpected error: {error}"
        );
        let mut stream = connect(&front, &client, "not-this-host.example")
            .await
            .expect("the named host is accepted");
        echo_through(&mut stream).await;
    }

    #[tokio::test]
    async fn write_ca_writes_the_pem() {
        let (backend, _echo) = echo_backend().await;
        let front = TlsFront::start(backend).await.expect("the front starts");
        let path = front
            .write_ca(std::env::temp_dir())
            .expect("write the CA file");
        let written = std::fs::read_to_string(&path).expect("read it back");
        assert_eq!(written, front.ca_pem());
        assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn dropping_the_front_closes_its_port() {
        let (backend, _echo) = echo_backend().await;
        let front = TlsFront::start(backend).await.expect("the front starts");
        let addr = front.addr();
        drop(front);
        let closed = crate::eventually_async(Duration::from_secs(5), || async move {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
        assert!(closed.is_some(), "the port still accepts after drop");
    }
}
