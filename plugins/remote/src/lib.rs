//! # micro-remote
//!
//! The `remote` registry: a [`Registry`] served over gRPC (`proto/micro/registry/v1`), both
//! sides of it. [`RegistryServer`] serves any `Arc<dyn Registry>` (`micro-gateway` embeds one on
//! `127.0.0.1:8000`, backed by memory); [`RemoteRegistry`] is the client that service processes
//! pick with `--registry remote` (their default). With it, a gateway and any number of service
//! processes find each other with no external server.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use micro_core::Registry;
//! use micro_remote::{RegistryService, RemoteRegistry};
//!
//! // Serve an in-memory registry...
//! let backing: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_service(RegistryService::server(backing))
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//! // ...and use it from another process.
//! let registry = RemoteRegistry::new("127.0.0.1:8000")?;
//! let services = registry.list_services().await?;
//! # drop(services); Ok(()) }
//! ```

mod client;
mod proto;
mod server;

use std::sync::Arc;

use micro_core::Registry;
use micro_core::catalog::Catalog;

pub use client::RemoteRegistry;
pub use proto::registry_v1::DESCRIPTORS;
pub use server::{RegistryServer, RegistryService};

/// The name this plugin is installed under.
pub const NAME: &str = "remote";
/// Where the gateway serves its registry by default.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8000";

/// Installs the remote registry client under the name `remote`.
pub fn install(catalog: &mut Catalog) {
    catalog.add_registry(NAME, |options| async move {
        let address = options
            .address
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        Ok(Arc::new(RemoteRegistry::new(&address)?) as Arc<dyn Registry>)
    });
}
