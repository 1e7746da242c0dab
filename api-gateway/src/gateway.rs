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
                options,
                registry,
                schemas,
                limiter,
                metrics: Arc::default(),
                cors,
                auth: None,
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
        let http = TcpListener::bind(&options.address).await.map_err(|e| {
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

        let registry_server = tokio::spawn({
            let service = micro_remote::RegistryService::server(self.state.registry.clone());
            let stopped = until_stopped(stopped.clone());
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(registry_listener)
                            .with_nodelay(Some(true)),
                        stopped,
                    )
                    .await
                    .map_err(|e| Error::Server(format!("embedded registry: {e}")))
            }
        });
        if let Some(limiter) = self.state.limiter.clone() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PRUNE_EVERY).await;
                    limiter.prune();
                }
            });
        }
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let http_server = tokio::spawn({
            let stopped = until_stopped(stopped.clone());
            async move {
                axum::serve(
                    axum::serve::ListenerExt::tap_io(http, |tcp| {
                        // Small JSON replies must not wait for Nagle.
                        let _ = tcp.set_nodelay(true);
                    }),
                    app,
                )
                .with_graceful_shutdown(stopped)
                .await
                .map_err(Error::Io)
            }
        });
        tracing::info!(%http_address, %registry_address, registry = self.state.registry.name(), "gateway started");
        Ok(RunningGateway {
            http_address,
            registry_address,
            stop,
            tasks: vec![http_server, registry_server],
            drain: self.state.options.service.shutdown_timeout,
        })
    }
}

/// A started gateway.
#[derive(Debug)]
pub struct RunningGateway {
    http_address: SocketAddr,
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

    /// Where the embedded registry is served.
    pub fn registry_address(&self) -> SocketAddr {
        self.registry_address
    }

    /// Stops accepting, finishes in-flight requests (at most the shutdown timeout), returns.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            match tokio::time::timeout(self.drain, task).await {
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
