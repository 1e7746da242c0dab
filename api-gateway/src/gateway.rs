//! The gateway's lifecycle: [`Gateway`] holds what every request shares, `start` binds the HTTP
//! listener and the embedded registry, [`RunningGateway::stop`] drains them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use micro_core::{Client, Error, Registry, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::GatewayAuth;
use crate::cors::Cors;
use crate::dispatch::dispatch;
use crate::limit::ClientLimiter;
use crate::metrics::Metrics;
use crate::options::GatewayOptions;
use crate::schema::Schemas;

/// How often idle clients are forgotten by the per-client rate limiter.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The gateway: options, the registry it routes by, and what it keeps between requests.
pub struct Gateway {
    state: Arc<GatewayState>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("options", &self.state.options)
            .field("registry", &self.state.registry.name())
            .finish_non_exhaustive()
    }
}

/// What every request of one gateway shares.
pub(crate) struct GatewayState {
    pub(crate) options: GatewayOptions,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) schemas: Arc<Schemas>,
    pub(crate) limiter: Option<Arc<ClientLimiter>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cors: Cors,
    pub(crate) auth: Option<GatewayAuth>,
    /// `--timeout` as a `grpc-timeout` value, made once ([`crate::call::grpc_timeout_value`]).
    pub(crate) grpc_timeout: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Gateway {
    /// A gateway routing by `registry`. Must be called inside a tokio runtime.
    pub fn new(options: GatewayOptions, registry: Arc<dyn Registry>) -> Self {
        let client = Client::new(&options.service, registry.clone()).timeout(options.timeout);
        let limiter = options
            .rate_limit
            .map(|rate| Arc::new(ClientLimiter::new(rate, options.rate_burst.unwrap_or(rate))));
        let cors = Cors::new(options.cors_origins.as_deref().unwrap_or_default());
        let schemas = Schemas::new(registry.clone(), client);
        Gateway {
            state: Arc::new(GatewayState {
                registry,
                schemas,
                limiter,
                metrics: Arc::default(),
                cors,
                auth: None,
                grpc_timeout: crate::call::grpc_timeout_value(options.timeout),
                options,
            }),
        }
    }

    /// Checks tokens and rules on every call (see [`GatewayAuth`]).
    pub fn with_auth(mut self, auth: GatewayAuth) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.auth = Some(auth);
        }
        self
    }

    /// The HTTP side as an axum router (needs `ConnectInfo<SocketAddr>`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(dispatch)
            .with_state(self.state.clone())
    }

    /// Binds the HTTP and registry listeners and serves both until [`RunningGateway::stop`].
    pub async fn start(self) -> Result<RunningGateway> {
        let options = &self.state.options;
        // Checked before anything listens: a bad certificate is an error at start.
        let tls = match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => Some(crate::serve::server_tls(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let http = listen(&options.address).map_err(|e| {
            Error::Server(format!(
                "cannot listen on {} (--address): {e}",
                options.address
            ))
        })?;
        let registry_listener = TcpListener::bind(&options.registry_listen)
            .await
            .map_err(|e| {
                Error::Server(format!(
                    "cannot serve the registry on {} (--registry-listen): {e}",
                    options.registry_listen
                ))
            })?;
        let (http_address, registry_address) =
            (http.local_addr()?, registry_listener.local_addr()?);
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };

        // Checked before anything is served: an embedded registry that may not start (beyond
        // loopback without TLS and a token, TLS files that do not load) stops the gateway here.
        let registry_server = crate::registry_server::prepare(
            self.state.registry.clone(),
            &self.state.options.service,
            registry_listener,
        )?;
        let registry_server = tokio::spawn(registry_server.serve(until_stopped(stopped.clone())));
        if let Some(limiter) = self.state.limiter.clone() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PRUNE_EVERY).await;
                    limiter.prune();
                }
            });
        }
        let http_server = tokio::spawn(crate::serve::serve_http(
            http,
            self.router(),
            crate::serve::Limits::of(&self.state.options),
            tls,
            until_stopped(stopped.clone()),
        ));
        tracing::info!(%http_address, %scheme, %registry_address, registry = self.state.registry.name(), "gateway started");
        Ok(RunningGateway {
            http_address,
            scheme,
            registry_address,
            stop,
            tasks: vec![http_server, registry_server],
            drain: self.state.options.service.shutdown_timeout,
        })
    }
}

/// Connections the kernel may hold for the HTTP listener before it accepts them. The standard
/// 128 drops the connections of a burst past it (their clients retry a second later); the
/// kernel caps this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 1024;

/// The HTTP listener on `address` (validated `host:port`), with [`ACCEPT_BACKLOG`].
fn listen(address: &str) -> std::io::Result<TcpListener> {
    let address: SocketAddr = address
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As the standard library's bind: a restarted gateway may listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// A started gateway.
#[derive(Debug)]
pub struct RunningGateway {
    http_address: SocketAddr,
    scheme: &'static str,
    registry_address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
    drain: Duration,
}

impl RunningGateway {
    /// Where HTTP is served.
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// Whether HTTP is served over TLS (`--tls-cert`/`--tls-key`).
    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// The base URL of the HTTP side: `http://127.0.0.1:8080`, or `https://...` over TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.http_address)
    }

    /// Where the embedded registry is served.
    pub fn registry_address(&self) -> SocketAddr {
        self.registry_address
    }

    /// Stops accepting, finishes in-flight requests (at most the shutdown timeout), returns.
    /// Connections with nothing in flight (idle, or still sending their headers) are closed at
    /// once.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        // The HTTP listener ends its own drain at the shutdown timeout; this is a backstop.
        let backstop = self.drain + Duration::from_secs(1);
        for task in self.tasks {
            match tokio::time::timeout(backstop, task).await {
                Ok(Ok(result)) => result?,
                Ok(Err(join)) => return Err(Error::Server(format!("gateway task failed: {join}"))),
                Err(_) => tracing::warn!(
                    "in-flight requests still running after {}; stopped anyway",
                    humantime::format_duration(self.drain)
                ),
            }
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}
