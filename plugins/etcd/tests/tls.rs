//! etcd over TLS: every conformance suite (registry, store, config) against an etcd of the
//! test's own serving `https://` with a certificate from the test's CA and requiring client
//! certificates (`--client-cert-auth`), and the clients that must fail: no CA, another CA, no
//! client certificate, a client certificate from another CA, endpoints mixing TLS and plaintext.
//!
//! The TLS etcd is shared by the cases running at the same time and stopped (its directory and
//! certificates removed) when the last of them ends, also when one panics.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use micro_core::catalog::Catalog;
use micro_core::options::Options;
use micro_core::{Config, Registry, Store};
use micro_etcd::{EtcdConfig, EtcdRegistry, EtcdStore, EtcdTls};
use micro_testkit::{Issued, PrivateEtcd, TestPki, Wrapped};

/// A TLS etcd and a client certificate it accepts. Fields drop in order: etcd before the files.
struct Secure {
    etcd: PrivateEtcd,
    client: Issued,
    pki: TestPki,
}

impl Secure {
    /// The client TLS that etcd accepts: its CA, and a certificate signed by it.
    fn tls(&self) -> EtcdTls {
        EtcdTls::new()
            .with_ca(self.pki.ca())
            .with_identity(&self.client.cert, &self.client.key)
    }
}

/// The TLS etcd of the cases running now, started when there is none.
fn secure() -> Arc<Secure> {
    static SHARED: Mutex<Weak<Secure>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(secure) = shared.upgrade() {
        return secure;
    }
    let pki = TestPki::new("etcd-tls");
    let client = pki.issue("client", "micro-client");
    let etcd = PrivateEtcd::start_tls(&pki);
    let secure = Arc::new(Secure { etcd, client, pki });
    *shared = Arc::downgrade(&secure);
    secure
}

/// `value`, keeping the TLS etcd running for as long as it lives.
fn holding<T>(value: T, secure: Arc<Secure>) -> Wrapped<T> {
    Wrapped::new(value).on_drop(move || drop(secure))
}

async fn registry() -> Arc<dyn Registry> {
    let secure = secure();
    let registry = EtcdRegistry::connect_tls(&secure.etcd.address, &secure.tls())
        .await
        .expect("etcd registry over TLS");
    Arc::new(holding(registry, secure))
}

micro_core::registry_conformance!(registry(), observer: async { Some(registry().await) });
micro_core::store_conformance!(async {
    let secure = secure();
    let store = EtcdStore::connect_tls(&secure.etcd.address, &secure.tls())
        .await
        .expect("etcd store over TLS");
    Arc::new(holding(store, secure)) as Arc<dyn Store>
});
micro_core::config_conformance!(async {
    let secure = secure();
    let config = EtcdConfig::connect_tls(&secure.etcd.address, &secure.tls())
        .await
        .expect("etcd config over TLS");
    Arc::new(holding(config, secure)) as Arc<dyn Config>
});

/// The error of connecting a store to the TLS etcd with `tls`.
async fn refused(secure: &Secure, tls: &EtcdTls) -> String {
    match EtcdStore::connect_tls(&secure.etcd.address, tls).await {
        Ok(_) => panic!("a store connected to {} with {tls:?}", secure.etcd.address),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_the_ca_cannot_verify_etcd() {
    let secure = secure();
    let address = &secure.etcd.address;
    // No CA: the system's roots, which do not know the test's CA.
    let system = refused(&secure, &EtcdTls::new()).await;
    assert!(
        system.contains(address.as_str())
            && system.contains("--client-tls-ca")
            && system.contains("system's root certificates"),
        "{system}"
    );
    // The plain constructor takes https:// too, with the system's roots.
    let plain = EtcdRegistry::connect(address)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        plain.contains(address.as_str()) && plain.contains("--client-tls-ca"),
        "{plain}"
    );
    // Another CA, even with a client certificate etcd would accept.
    let other = TestPki::new("etcd-other");
    let wrong = secure.tls().with_ca(other.ca());
    let message = refused(&secure, &wrong).await;
    assert!(
        message.contains(address.as_str())
            && message.contains("--client-tls-ca")
            && message.contains(&other.ca().display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_refuses_a_client_without_its_certificate() {
    let secure = secure();
    let address = &secure.etcd.address;
    let anonymous = EtcdTls::new().with_ca(secure.pki.ca());
    let message = refused(&secure, &anonymous).await;
    assert!(
        message.contains(address.as_str())
            && message.contains("--client-tls-cert")
            && message.contains("none was given"),
        "{message}"
    );
    let other = TestPki::new("etcd-stranger");
    let stranger = other.issue("stranger", "stranger");
    let foreign = anonymous.with_identity(&stranger.cert, &stranger.key);
    let message = refused(&secure, &foreign).await;
    assert!(
        message.contains(address.as_str())
            && message.contains("refused this client's certificate")
            && message.contains(&stranger.cert.display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_mixing_tls_and_plaintext_are_refused() {
    let secure = secure();
    let address = format!("{}, 127.0.0.1:2379", secure.etcd.address);
    let err = EtcdConfig::connect_tls(&address, &secure.tls())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("TLS ({})", secure.etcd.address))
            && err.contains("plaintext (127.0.0.1:2379)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_takes_the_client_tls_options() {
    let secure = secure();
    let mut catalog = Catalog::new();
    micro_etcd::install(&mut catalog);
    let mut options = Options {
        registry: "etcd".into(),
        registry_address: Some(secure.etcd.address.clone()),
        store: "etcd".into(),
        store_address: Some(secure.etcd.address.clone()),
        client_tls_ca: Some(secure.pki.ca().into()),
        client_tls_cert: Some(secure.client.cert.clone()),
        client_tls_key: Some(secure.client.key.clone()),
        ..Options::default()
    };
    let store = catalog
        .store(&options)
        .await
        .expect("store from the catalog");
    let namespace = micro_core::store::Namespace::new("tls", "catalog");
    store
        .write(micro_core::store::Record::new("k", "v"), &namespace)
        .await
        .expect("write over TLS");
    store.delete("k", &namespace).await.expect("delete");
    catalog
        .registry(&options)
        .await
        .expect("registry from the catalog");
    // The registry tolerates an etcd that does not answer yet, not one it cannot verify.
    options.client_tls_ca = None;
    let err = match catalog.registry(&options).await {
        Ok(_) => panic!("a registry connected without the CA"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&secure.etcd.address) && err.contains("--client-tls-ca"),
        "{err}"
    );
}
