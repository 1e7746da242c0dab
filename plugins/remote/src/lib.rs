//! # micro-remote
//!
//! The `remote` registry: a [`Registry`] served over gRPC (`proto/micro/registry/v1`), both
//! sides of it. [`RegistryServer`] serves any `Arc<dyn Registry>` (`micro-gateway` embeds one on
//! `127.0.0.1:8000`, backed by memory); [`RemoteRegistry`] is the client that service processes
//! pick with `--registry remote` (their default). With it, a gateway and any number of service
//! processes find each other with no external server.
//!
//! It is not an open door (see the crate's README and [`security`]):
//!
//! - with `--registry-token` (`MICRO_REGISTRY_TOKEN`) on both sides, every call carries the
//!   token (`authorization: Bearer <token>`), compared in constant time; a call without it is
//!   `UNAUTHENTICATED`;
//! - a client may refresh or deregister only the nodes it registered (each [`RemoteRegistry`]
//!   sends a random owner key; another key is `PERMISSION_DENIED`);
//! - [`check_exposure`]: a server beyond loopback needs TLS and a token or client certificates;
//! - `https://host:port` addresses are dialed over TLS (`--client-tls-ca`, ...).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use micro_core::{Options, Registry};
//! use micro_remote::{RegistryService, RemoteRegistry};
//!
//! // Serve an in-memory registry that asks every call for a token...
//! let backing: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! let service = RegistryService::new(backing).with_token(Some("a-long-random-secret"))?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_service(service.into_server())
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//! // ...and use it from another process, with the same token.
//! let options = Options {
//!     registry_token: Some("a-long-random-secret".into()),
//!     ..Options::default()
//! };
//! let registry = RemoteRegistry::from_options("127.0.0.1:8000", &options)?;
//! let services = registry.list_services().await?;
//! # drop(services); Ok(()) }
//! ```

mod client;
mod owners;
mod proto;
pub mod security;
mod server;

use std::sync::Arc;

use micro_core::Registry;
use micro_core::catalog::Catalog;

pub use client::RemoteRegistry;
pub use proto::registry_v1::DESCRIPTORS;
pub use security::check_exposure;
pub use server::{RegistryServer, RegistryService};

/// The name this plugin is installed under.
pub const NAME: &str = "remote";
/// Where the gateway serves its registry by default.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8000";

/// Installs the remote registry client under the name `remote`: it sends `registry-token` when
/// set and dials `https://` addresses with the client TLS options
/// ([`RemoteRegistry::from_options`]).
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |plugin| async move {
        let address = plugin
            .address
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        Ok(Arc::new(RemoteRegistry::from_options(&address, &plugin.options)?) as Arc<dyn Registry>)
    });
}
