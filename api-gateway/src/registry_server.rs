//! The embedded registry, served over gRPC for the `remote` plugin of service processes.
//!
//! It is not an open door (`micro_remote::security`): with `--registry-token` every call must
//! carry the token; a client may refresh or deregister only the nodes it registered; with
//! `--server-tls-cert`/`--server-tls-key` it is served over TLS (`--server-tls-client-ca`: only
//! to clients with a certificate of that CA); and it refuses to listen beyond loopback unless it
//! has TLS and a token or client certificates.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use micro_core::options::Options;
use micro_core::tls::ServerTls;
use micro_core::{Error, Registry, Result};
use micro_remote::{RegistryServer, RegistryService};
use tokio::net::TcpListener;

/// The embedded registry, checked and ready to serve: [`prepare`] then [`Prepared::serve`].
pub(crate) struct Prepared {
    service: RegistryServer,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
}

/// Checks what the embedded registry is asked to do before anything is served: the TLS files
/// load, the token is usable, and the listener's address is loopback or the registry has TLS
/// and a token or client certificates. An error says what is missing and which options give it.
pub(crate) fn prepare(
    registry: Arc<dyn Registry>,
    options: &Options,
    listener: TcpListener,
) -> Result<Prepared> {
    let address = listener.local_addr()?;
    let context = |e: Error| Error::Option(format!("embedded registry (--registry-listen): {e}"));
    let tls = ServerTls::from_options(options).map_err(context)?;
    micro_remote::check_exposure(address, tls.as_ref(), options.registry_token.is_some())
        .map_err(context)?;
    let service = RegistryService::from_options(registry, options).map_err(context)?;
    log_posture(address, tls.as_ref(), service.requires_token());
    Ok(Prepared {
        service: service.into_server(),
        listener,
        tls: tls.map(Arc::new),
    })
}

fn log_posture(address: SocketAddr, tls: Option<&ServerTls>, token: bool) {
    let client_certificates = tls.is_some_and(ServerTls::requires_client_certificates);
    tracing::info!(
        %address,
        tls = tls.is_some(),
        client_certificates,
        token,
        "embedded registry ready"
    );
    if !token && !client_certificates {
        tracing::debug!(
            %address,
            "the embedded registry takes registrations from any local process (no --registry-token)"
        );
    }
}

impl Prepared {
    /// Serves until `stopped` completes.
    pub(crate) async fn serve(
        self,
        stopped: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let builder = tonic::transport::Server::builder().add_service(self.service);
        let served = match self.tls {
            Some(tls) => {
                builder
                    .serve_with_incoming_shutdown(
                        micro_core::tls::incoming(tls, self.listener),
                        stopped,
                    )
                    .await
            }
            None => {
                builder
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(self.listener)
                            .with_nodelay(Some(true)),
                        stopped,
                    )
                    .await
            }
        };
        served.map_err(|e| Error::Server(format!("embedded registry: {e}")))
    }
}
