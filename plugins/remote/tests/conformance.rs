//! The registry conformance suite on the remote registry: each case talks over a loopback gRPC
//! connection to its own [`RegistryServer`](micro_remote::RegistryServer) backed by memory, so
//! what is tested is the protocol and both of its ends, not the backing registry alone. It runs
//! twice: in plaintext without a token (the default on loopback), and over TLS with a token,
//! the observer being another client (another owner key) of the same server.

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

mod over_tls_with_token {
    use std::sync::{Arc, OnceLock};

    use micro_core::tls::ServerTls;
    use micro_core::{Options, Registry};
    use micro_memory::MemoryRegistry;
    use micro_remote::{RegistryService, RemoteRegistry};
    use micro_testkit::TestPki;

    const TOKEN: &str = "conformance-token-0123456789";

    /// One CA for the whole test binary (its files live as long as the process).
    fn pki() -> &'static TestPki {
        static PKI: OnceLock<TestPki> = OnceLock::new();
        PKI.get_or_init(|| TestPki::new("remote-conformance"))
    }

    /// One TLS server with a token for every case (each case uses service names of its own),
    /// on a runtime of its own so it outlives each case's: its `https://127.0.0.1:port`.
    fn server() -> &'static str {
        static ADDRESS: OnceLock<String> = OnceLock::new();
        ADDRESS.get_or_init(|| {
            let issued = pki().issue("registry", "registry");
            let tls =
                Arc::new(ServerTls::new(&issued.cert, &issued.key, None).expect("server TLS"));
            let (bound, address) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().expect("server runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind a loopback port");
                    let _ = bound.send(listener.local_addr().expect("bound address"));
                    let backing: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
                    let service = RegistryService::new(backing)
                        .with_token(Some(TOKEN))
                        .expect("token");
                    tonic::transport::Server::builder()
                        .add_service(service.into_server())
                        .serve_with_incoming(micro_core::tls::incoming(tls, listener))
                        .await
                        .expect("serve");
                });
            });
            format!("https://{}", address.recv().expect("server address"))
        })
    }

    /// A client of the shared server with the token, verifying it against the test CA; each
    /// has an owner key of its own.
    fn client() -> Arc<dyn Registry> {
        let options = Options {
            registry_token: Some(TOKEN.into()),
            client_tls_ca: Some(pki().ca().to_path_buf()),
            ..Options::default()
        };
        Arc::new(RemoteRegistry::from_options(server(), &options).expect("client"))
    }

    micro_core::registry_conformance!(
        async { client() },
        observer: async { Some(client()) }
    );
}
