//! The registry conformance suite on the remote registry: each case talks over a loopback gRPC
//! connection to its own [`RegistryServer`](micro_remote::RegistryServer) backed by memory, so
//! what is tested is the protocol and both of its ends, not the backing registry alone.

use std::sync::Arc;

use micro_core::Registry;
use micro_memory::MemoryRegistry;
use micro_remote::{RegistryService, RemoteRegistry};
use tokio_stream::wrappers::TcpListenerStream;

/// A remote registry client of a fresh server on 127.0.0.1, port 0.
async fn remote_over_memory() -> Arc<dyn Registry> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("bound address");
    let backing: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistryService::server(backing))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Arc::new(RemoteRegistry::new(&address.to_string()).expect("client")) as Arc<dyn Registry>
}

micro_core::registry_conformance!(remote_over_memory());
