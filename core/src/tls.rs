//! TLS for servers and clients (rustls on ring), from PEM files that are re-read when they
//! change: a rotated certificate is served to, and presented on, new connections without a
//! restart. A file that fails to load keeps the last good configuration (and says so in the
//! log), so a half-written file during rotation breaks nothing.
//!
//! - [`ServerTls`]: a certificate and key, and optionally the CAs client certificates must be
//!   signed by (mutual TLS). [`incoming`] turns a listener into TLS connections for tonic.
//! - [`ClientTls`]: the CAs a client verifies servers against (the system's roots when none are
//!   given) and the certificate it presents when asked. Never skips verification: a server it
//!   cannot verify is an error naming the server and the option that would fix it.
//!
//! The options are `--server-tls-cert`, `--server-tls-key`, `--server-tls-client-ca`,
//! `--client-tls-ca`, `--client-tls-cert` and `--client-tls-key` (see [`Options`]).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::options::Options;
use crate::{Error, Result};

/// How long a client may take to finish its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node metadata key saying a node serves TLS (`"true"`), as go-micro registers it.
pub const SECURE_METADATA: &str = "secure";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: impl std::fmt::Display, error: impl std::fmt::Display) -> Error {
    Error::Option(format!("{what}: {error}"))
}

fn read_certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            tls_error(
                format_args!("option `{option}`: `{}`", path.display()),
                pem_message(e),
            )
        })?;
    if certificates.is_empty() {
        return Err(tls_error(
            format_args!("option `{option}`: `{}`", path.display()),
            "holds no PEM certificate (BEGIN CERTIFICATE)",
        ));
    }
    Ok(certificates)
}

fn read_key(path: &Path, option: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        tls_error(
            format_args!("option `{option}`: `{}`", path.display()),
            pem_message(e),
        )
    })
}

fn pem_message(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no PEM item of the kind needed".into()
        }
        other => format!("is not valid PEM: {other:?}"),
    }
}

fn roots_from(path: &Path, option: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path, option)? {
        roots.add(certificate).map_err(|e| {
            tls_error(
                format_args!("option `{option}`: `{}`", path.display()),
                format_args!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    Ok(roots)
}

/// When each file last changed and its size (`None`: unreadable), to tell a rotation.
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamp(paths: &[&Path]) -> Stamps {
    paths
        .iter()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A configuration built from files, rebuilt when one of them changes.
struct Reloading<T> {
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T> + Send + Sync>,
    current: Mutex<(Stamps, Arc<T>)>,
}

impl<T> Reloading<T> {
    fn new(
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T> + Send + Sync + 'static,
    ) -> Result<Self> {
        let stamps = stamp(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let first = Arc::new(build()?);
        Ok(Reloading {
            paths,
            build: Box::new(build),
            current: Mutex::new((stamps, first)),
        })
    }

    /// The configuration of the files as they are now (one `stat` per file when unchanged).
    fn get(&self) -> Arc<T> {
        let stamps = stamp(&self.paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != stamps {
            match (self.build)() {
                Ok(fresh) => {
                    tracing::info!(files = ?self.paths, "TLS files changed; new connections use them");
                    *current = (stamps, Arc::new(fresh));
                }
                Err(e) => {
                    // Keep serving with the last good files; try again when they change again.
                    tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                    current.0 = stamps;
                }
            }
        }
        current.1.clone()
    }
}

/// A server's TLS: its certificate chain and key, and the CAs client certificates must be signed
/// by when it requires them. Cheap to share (`Arc`); re-reads the files when they change.
pub struct ServerTls {
    config: Reloading<ServerConfig>,
    client_ca: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.config.paths)
            .field("client_certificates", &self.client_ca)
            .finish()
    }
}

impl ServerTls {
    /// TLS with the PEM certificate chain `cert` and its key `key`; with `client_ca`, clients
    /// must present a certificate signed by one of its CAs. The files are read now (an error
    /// names the file and what is wrong with it) and again whenever they change. ALPN offers
    /// `h2` (gRPC); see [`with_alpn`](Self::with_alpn).
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<ServerTls> {
        Self::build(cert.into(), key.into(), client_ca, vec![b"h2".to_vec()])
    }

    fn build(
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<ServerTls> {
        let mut paths = vec![cert.clone(), key.clone()];
        paths.extend(client_ca.clone());
        let has_client_ca = client_ca.is_some();
        let config = Reloading::new(paths, move || {
            let chain = read_certificates(&cert, "server-tls-cert")?;
            let key = read_key(&key, "server-tls-key")?;
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error("TLS", e))?;
            let builder = match &client_ca {
                Some(path) => {
                    let roots = roots_from(path, "server-tls-client-ca")?;
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                            .build()
                            .map_err(|e| {
                                tls_error(
                                    format_args!(
                                        "option `server-tls-client-ca`: `{}`",
                                        path.display()
                                    ),
                                    e,
                                )
                            })?;
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_single_cert(chain, key).map_err(|e| {
                tls_error(
                    format_args!(
                        "options `server-tls-cert` and `server-tls-key` (`{}`)",
                        cert.display()
                    ),
                    format_args!("the key does not fit the certificate: {e}"),
                )
            })?;
            config.alpn_protocols = alpn.clone();
            Ok(config)
        })?;
        Ok(ServerTls {
            config,
            client_ca: has_client_ca,
        })
    }

    /// The server TLS the options ask for (`server-tls-cert`, `server-tls-key`,
    /// `server-tls-client-ca`), or `None` for plaintext.
    pub fn from_options(options: &Options) -> Result<Option<ServerTls>> {
        match (&options.server_tls_cert, &options.server_tls_key) {
            (Some(cert), Some(key)) => Self::new(
                cert.clone(),
                key.clone(),
                options.server_tls_client_ca.clone(),
            )
            .map(Some),
            (None, None) => Ok(None),
            _ => Err(Error::Option(
                "options `server-tls-cert` and `server-tls-key` go together: give both".into(),
            )),
        }
    }

    /// Offers these ALPN protocols instead (an HTTP server: `&[b"h2", b"http/1.1"]`).
    pub fn with_alpn(self, protocols: &[&[u8]]) -> Result<ServerTls> {
        let paths = &self.config.paths;
        let client_ca = self.client_ca.then(|| paths[2].clone());
        Self::build(
            paths[0].clone(),
            paths[1].clone(),
            client_ca,
            protocols.iter().map(|p| p.to_vec()).collect(),
        )
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca
    }

    /// An acceptor with the files as they are now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.get())
    }
}

/// A TLS connection accepted by [`incoming`]: what tonic serves.
#[derive(Debug)]
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl TlsConnection {
    /// The certificate chain the client presented (mutual TLS), if any.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// TLS connections from `listener`, for `tonic::transport::Server::serve_with_incoming`:
/// handshakes run concurrently (a slow client holds up no one) and each gets
/// [`HANDSHAKE_TIMEOUT`]; a failed handshake (a client without a certificate the server asks
/// for, one from another CA, plaintext) is logged and dropped. Ends when the stream is dropped.
pub fn incoming(
    tls: Arc<ServerTls>,
    listener: TcpListener,
) -> impl Stream<Item = io::Result<TlsConnection>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let info = TcpConnectInfo {
                local_addr: tcp.local_addr().ok(),
                remote_addr: Some(peer),
            };
            let (acceptor, sender) = (tls.acceptor(), sender.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(TlsConnection { stream, info })).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake not finished in time; closed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// A client's TLS: the CAs it verifies servers with (`client-tls-ca`, else the system's roots)
/// and the certificate it presents when a server asks (`client-tls-cert`/`client-tls-key`).
/// Files are read on first use and again whenever they change.
pub struct ClientTls {
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    config: Mutex<Option<Arc<Reloading<ClientConfig>>>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca)
            .field("identity", &self.identity)
            .finish()
    }
}

impl ClientTls {
    /// Verifies against `ca` (PEM; the system's roots when `None`), presenting `identity`
    /// (certificate chain and key, PEM) when a server asks for one.
    pub fn new(ca: Option<PathBuf>, identity: Option<(PathBuf, PathBuf)>) -> ClientTls {
        ClientTls {
            ca,
            identity,
            config: Mutex::new(None),
        }
    }

    /// The client TLS of `client-tls-ca`, `client-tls-cert` and `client-tls-key`.
    pub fn from_options(options: &Options) -> ClientTls {
        let identity = options
            .client_tls_cert
            .clone()
            .zip(options.client_tls_key.clone());
        Self::new(options.client_tls_ca.clone(), identity)
    }

    /// What servers are verified against, for messages.
    pub fn trust(&self) -> String {
        match &self.ca {
            Some(path) => format!("the CA of --client-tls-ca ({})", path.display()),
            None => "the system's root certificates (no --client-tls-ca given)".into(),
        }
    }

    /// The rustls configuration (ALPN `h2`) with the files as they are now: an error names the
    /// file that does not load.
    pub fn config(&self) -> Result<Arc<ClientConfig>> {
        let mut slot = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reloading) = &*slot {
            return Ok(reloading.get());
        }
        let mut paths: Vec<PathBuf> = self.ca.iter().cloned().collect();
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        let (ca, identity) = (self.ca.clone(), self.identity.clone());
        let reloading = Arc::new(Reloading::new(paths, move || {
            let roots = match &ca {
                Some(path) => roots_from(path, "client-tls-ca")?,
                None => system_roots()?,
            };
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error("TLS", e))?
                .with_root_certificates(roots);
            let mut config = match &identity {
                Some((cert, key)) => builder
                    .with_client_auth_cert(
                        read_certificates(cert, "client-tls-cert")?,
                        read_key(key, "client-tls-key")?,
                    )
                    .map_err(|e| {
                        tls_error(
                            format_args!(
                                "options `client-tls-cert` and `client-tls-key` (`{}`)",
                                cert.display()
                            ),
                            format_args!("the key does not fit the certificate: {e}"),
                        )
                    })?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        })?);
        let config = reloading.get();
        *slot = Some(reloading);
        Ok(config)
    }

    /// Connects to `address` (`host:port`) over TLS, verifying its certificate for `host`.
    /// `what` names the peer in errors (`node greeter-1 (127.0.0.1:5000)`).
    pub async fn connect(
        &self,
        address: &str,
        what: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = self
            .config()
            .map_err(|e| io::Error::other(format!("{what}: {e}")))?;
        let host = host_of(address);
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}: `{host}` is not a host name TLS can verify: {e}"),
            )
        })?;
        let tcp = TcpStream::connect(address).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                if let Some(rustls::Error::InvalidCertificate(_)) = rustls_failure(&e) {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{what} serves TLS with a certificate this client cannot verify against {} ({e}): give its CA with --client-tls-ca (MICRO_CLIENT_TLS_CA)",
                            self.trust()
                        ),
                    )
                } else {
                    io::Error::new(e.kind(), format!("{what}: TLS handshake failed: {e}"))
                }
            })
    }

    /// A lazy gRPC channel to `address` over TLS (connecting on first use, reconnecting by
    /// itself). `what` names the peer in errors.
    pub fn channel(self: &Arc<Self>, address: &str, what: &str) -> Result<Channel> {
        // The scheme stays http: TLS is this connector's, not tonic's.
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::Option(format!("{what}: `{address}` is not an address: {e}")))?
            .connect_timeout(Duration::from_secs(3));
        let connector = Connector {
            tls: self.clone(),
            address: address.into(),
            what: what.into(),
        };
        Ok(endpoint.connect_with_connector_lazy(connector))
    }

    /// Why a connection to `peer` failed, in words that say which option fixes it: a server
    /// certificate this client cannot verify, a server refusing this client's certificate (or
    /// its absence), another TLS failure. `None` when `error`'s chain holds no TLS failure.
    pub fn explain(
        &self,
        peer: Peer<'_>,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<String> {
        let name = peer.name;
        Some(match rustls_failure(error)? {
            tls @ rustls::Error::InvalidCertificate(_) => format!(
                "{name}'s certificate cannot be verified against {} ({tls}): give the CA that signed it with --client-tls-ca (MICRO_CLIENT_TLS_CA)",
                self.trust()
            ),
            rustls::Error::AlertReceived(alert) if refuses_client(alert) => match &self.identity {
                Some((cert, _)) => format!(
                    "{name} refused this client's certificate {} ({alert:?}): give one signed by a CA {name} trusts (its {}) with --client-tls-cert and --client-tls-key",
                    cert.display(),
                    peer.client_ca_setting
                ),
                None => format!(
                    "{name} asks for a client certificate and none was given ({alert:?}): give one with --client-tls-cert and --client-tls-key (MICRO_CLIENT_TLS_CERT, MICRO_CLIENT_TLS_KEY)"
                ),
            },
            other => format!("TLS failed: {other}"),
        })
    }

    /// Why TLS to `peer` at `address` (`host:port`) fails, found by connecting once more and
    /// reading: with TLS 1.3 a server refuses a client's certificate (or its absence) only after
    /// the client finished its handshake, so a client library sees a closed connection, not the
    /// server's alert. `None` when this connection shows no TLS failure (see
    /// [`explain`](Self::explain)).
    pub async fn diagnose(&self, address: &str, peer: Peer<'_>) -> Option<String> {
        let probe = async {
            let mut stream = self.connect(address, peer.name).await?;
            // A server that accepted the handshake waits for the client to speak first.
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut buf)).await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Err(error)) => self.explain(peer, &error),
            _ => None,
        }
    }
}

/// How long [`ClientTls::diagnose`] waits for a server to refuse a handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The server at the other end of a [`ClientTls`] connection, as [`ClientTls::explain`] names
/// it.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// What the server is: `etcd`, `RabbitMQ`.
    pub name: &'a str,
    /// The server's setting of the CAs whose client certificates it accepts:
    /// `--trusted-ca-file`, `ssl_options.cacertfile`.
    pub client_ca_setting: &'a str,
}

/// The rustls error somewhere in `error`'s chain, also inside I/O errors (whose `source` skips
/// the error they wrap).
pub fn rustls_failure<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            && let Some(tls) = rustls_failure(inner)
        {
            return Some(tls);
        }
        next = error.source();
    }
    None
}

/// Alerts a server sends when it does not accept the client's certificate (or its absence).
fn refuses_client(alert: &rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied
            | A::HandshakeFailure
    )
}

/// The files of a client's TLS as a plugin takes them for its backend (`micro_etcd::EtcdTls`,
/// `micro_rabbitmq::RabbitTls`): the CA certificates the server's certificate must be signed by
/// (PEM; the system's roots when `None`) and the certificate and key the client presents (PEM).
///
/// ```
/// let tls = micro_core::tls::ClientTlsFiles::new()
///     .with_ca("/etc/micro/ca.pem")
///     .with_identity("/etc/micro/client.pem", "/etc/micro/client.key");
/// assert!(tls.ca.is_some() && tls.cert.is_some() && tls.key.is_some());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates to verify the server with, instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// The contents of [`ClientTlsFiles`], for client libraries that take PEM rather than a rustls
/// configuration.
#[derive(Clone, Debug, Default)]
pub struct ClientPem {
    /// The CA certificates, when a CA is given.
    pub ca: Option<Vec<u8>>,
    /// The certificate chain and its key, when given.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTlsFiles {
    /// No files: servers are verified against the system's roots, and no client certificate is
    /// presented.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's client TLS options: `client-tls-ca`, `client-tls-cert`, `client-tls-key`
    /// (`--client-tls-ca`, `MICRO_CLIENT_TLS_CA`, ...).
    pub fn from_options(options: &Options) -> Self {
        ClientTlsFiles {
            ca: options.client_tls_ca.clone(),
            cert: options.client_tls_cert.clone(),
            key: options.client_tls_key.clone(),
        }
    }

    /// Verifies the server against the CA certificates in `ca` (PEM) instead of the system's
    /// roots.
    pub fn with_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    /// Presents the certificate chain `cert` with its key `key` (PEM).
    pub fn with_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// The client TLS of these files (read on first use); a certificate without its key, or a
    /// key without its certificate, is an error.
    pub fn client(&self) -> Result<ClientTls> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Option(
                    "options `client-tls-cert` and `client-tls-key` go together: give both".into(),
                ));
            }
        };
        Ok(ClientTls::new(self.ca.clone(), identity))
    }

    /// The files' contents, after checking they make a TLS configuration: an error names the
    /// option and the file.
    pub fn pem(&self) -> Result<ClientPem> {
        let client = self.client()?;
        client.config()?;
        let ca = match &client.ca {
            Some(ca) => Some(read_file(ca, "client-tls-ca")?),
            None => None,
        };
        let identity = match &client.identity {
            Some((cert, key)) => Some((
                read_file(cert, "client-tls-cert")?,
                read_file(key, "client-tls-key")?,
            )),
            None => None,
        };
        Ok(ClientPem { ca, identity })
    }
}

fn read_file(path: &Path, option: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Option(format!(
            "option `{option}`: cannot read `{}`: {e}",
            path.display()
        ))
    })
}

/// The host of `host:port` (`[::1]:80` gives `::1`).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The system's root certificates: an error naming `--client-tls-ca` when there are none.
pub fn system_certificates() -> Result<Vec<CertificateDer<'static>>> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(Error::Option(format!(
            "no --client-tls-ca given and no system root certificates found{}: give the CA with --client-tls-ca (MICRO_CLIENT_TLS_CA)",
            found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    Ok(found.certs)
}

fn system_roots() -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(system_certificates()?);
    if added == 0 {
        return Err(Error::Option(format!(
            "none of the {ignored} system root certificates is usable: give the CA with --client-tls-ca (MICRO_CLIENT_TLS_CA)"
        )));
    }
    Ok(roots)
}

/// Dials one address over TLS for a tonic channel.
#[derive(Clone)]
struct Connector {
    tls: Arc<ClientTls>,
    address: Arc<str>,
    what: Arc<str>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.tls
                .connect(&this.address, &this.what)
                .await
                .map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("localhost:80"), "localhost");
    }

    const ETCD: Peer<'static> = Peer {
        name: "etcd",
        client_ca_setting: "--trusted-ca-file",
    };

    #[test]
    fn tls_failures_are_found_inside_io_errors_and_explained() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let refused = io::Error::new(io::ErrorKind::InvalidData, alert);
        let unverified = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let identity = Some(("/tls/client.pem".into(), "/tls/client.key".into()));
        let cases: [(ClientTls, &(dyn std::error::Error + 'static), &[&str]); 3] = [
            (
                ClientTls::new(None, None),
                &refused,
                &[
                    "etcd asks for a client certificate and none was given",
                    "--client-tls-cert",
                ],
            ),
            (
                ClientTls::new(None, identity),
                &refused,
                &[
                    "etcd refused this client's certificate /tls/client.pem",
                    "(its --trusted-ca-file)",
                ],
            ),
            (
                ClientTls::new(Some("/tls/ca.pem".into()), None),
                &unverified,
                &["the CA of --client-tls-ca (/tls/ca.pem)", "UnknownIssuer"],
            ),
        ];
        for (client, error, expected) in cases {
            let message = client.explain(ETCD, error).expect("a TLS error");
            assert!(
                expected.iter().all(|part| message.contains(part)),
                "{message}"
            );
        }
        let plain = io::Error::other("connection refused");
        assert!(rustls_failure(&plain).is_none());
        assert!(ClientTls::new(None, None).explain(ETCD, &plain).is_none());
    }

    #[test]
    fn a_client_certificate_and_its_key_go_together() {
        for half in [
            ClientTlsFiles {
                cert: Some("/tmp/client.pem".into()),
                ..ClientTlsFiles::default()
            },
            ClientTlsFiles {
                key: Some("/tmp/client.key".into()),
                ..ClientTlsFiles::default()
            },
        ] {
            let err = half.pem().unwrap_err().to_string();
            assert!(
                err.contains("client-tls-cert") && err.contains("client-tls-key"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_files_are_named() {
        let err = ServerTls::new("/nonexistent/cert.pem", "/nonexistent/key.pem", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server-tls-cert") && err.contains("/nonexistent/cert.pem"),
            "{err}"
        );
        // Through the files' check, which builds the configuration.
        let err = ClientTlsFiles::new()
            .with_ca("/nonexistent/ca.pem")
            .pem()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client-tls-ca") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }
}
