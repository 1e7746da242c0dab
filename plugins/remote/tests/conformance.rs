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

/// Listing crosses pages (the client asks for 500 services a page): more services than a page
/// holds, each listed once, in order, every version of a name in the same page (one at the
/// boundary has two), and the names alone from `ListNames`.
#[tokio::test]
async fn list_services_reads_page_by_page() {
    use micro_core::registry::{Node, Service};

    let registry = remote_over_memory().await;
    let ttl = std::time::Duration::from_secs(60);
    let service = |name: &str, version: &str| Service {
        name: name.into(),
        version: version.into(),
        nodes: vec![Node {
            id: format!("{name}-{version}"),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let names: Vec<String> = (0..1_234).map(|i| format!("svc-{i:05}")).collect();
    for name in &names {
        registry.register(&service(name, "v1"), ttl).await.unwrap();
    }
    registry
        .register(&service("svc-00499", "v2"), ttl)
        .await
        .unwrap();

    let listed = registry.list_services().await.unwrap();
    let versions: Vec<(&str, &str)> = listed
        .iter()
        .map(|s| (s.name.as_str(), s.version.as_str()))
        .collect();
    let mut expected: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v1")).collect();
    expected.insert(500, ("svc-00499", "v2"));
    assert_eq!(versions, expected);
    assert!(listed.iter().all(|s| s.nodes.len() == 1));
    assert_eq!(registry.list_names().await.unwrap(), names);
}
