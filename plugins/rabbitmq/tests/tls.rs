//! RabbitMQ over TLS (`amqps://`): the broker conformance suite against a RabbitMQ node of the
//! test's own (beside the machine's, which is left alone) whose TLS listener has a certificate
//! from the test's CA and requires client certificates (`verify_peer`,
//! `fail_if_no_peer_cert`), and the clients that must fail: no CA, another CA, no client
//! certificate, a client certificate from another CA.
//!
//! The node is shared by the cases running at the same time and stopped (its directory and
//! certificates removed) when the last of them ends, also when one panics.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use micro_core::Broker;
use micro_core::broker::{Handler, Message, SubscribeOptions, Subscription};
use micro_core::catalog::Catalog;
use micro_core::options::Options;
use micro_rabbitmq::{RabbitBroker, RabbitOptions, RabbitTls};
use micro_testkit::{Issued, PrivateRabbit, TestPki};

/// A TLS RabbitMQ and a client certificate it accepts. Fields drop in order: the node before
/// the files.
struct Secure {
    rabbit: PrivateRabbit,
    client: Issued,
    pki: TestPki,
}

impl Secure {
    /// The client TLS that the node accepts: its CA, and a certificate signed by it.
    fn tls(&self) -> RabbitTls {
        RabbitTls::new()
            .with_ca(self.pki.ca())
            .with_identity(&self.client.cert, &self.client.key)
    }
}

/// The TLS RabbitMQ of the cases running now, started when there is none.
fn secure() -> Arc<Secure> {
    static SHARED: Mutex<Weak<Secure>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(secure) = shared.upgrade() {
        return secure;
    }
    let pki = TestPki::new("rabbitmq-tls");
    let client = pki.issue("client", "micro-client");
    let rabbit = PrivateRabbit::start_tls(&pki);
    let secure = Arc::new(Secure {
        rabbit,
        client,
        pki,
    });
    *shared = Arc::downgrade(&secure);
    secure
}

/// A broker that keeps the TLS node running for as long as it lives.
struct Holding {
    broker: RabbitBroker,
    _secure: Arc<Secure>,
}

#[async_trait]
impl Broker for Holding {
    fn name(&self) -> &str {
        self.broker.name()
    }

    async fn publish(&self, topic: &str, message: Message) -> micro_core::Result<()> {
        self.broker.publish(topic, message).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> micro_core::Result<Box<dyn Subscription>> {
        self.broker.subscribe(topic, handler, options).await
    }
}

micro_core::broker_conformance!(async {
    let secure = secure();
    let options = RabbitOptions::new(&secure.rabbit.amqps).with_tls(secure.tls());
    let broker = RabbitBroker::connect(options)
        .await
        .expect("RabbitMQ over TLS");
    Arc::new(Holding {
        broker,
        _secure: secure,
    }) as Arc<dyn Broker>
});

/// The address as errors show it: the password replaced.
fn redacted(secure: &Secure) -> String {
    secure.rabbit.amqps.replace("guest:guest@", "guest:***@")
}

/// The error of connecting to the TLS node with `tls`; it must not show the password.
async fn refused(secure: &Secure, tls: RabbitTls) -> String {
    let options = RabbitOptions::new(&secure.rabbit.amqps).with_tls(tls.clone());
    match RabbitBroker::connect(options).await {
        Ok(_) => panic!("connected to {} with {tls:?}", secure.rabbit.amqps),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&redacted(secure)) && !message.contains("guest:guest"),
                "names the address without its password: {message}"
            );
            message
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_the_ca_cannot_verify_rabbitmq() {
    let secure = secure();
    // No CA: the system's roots, which do not know the test's CA.
    let system = refused(&secure, RabbitTls::new()).await;
    assert!(
        system.contains("--client-tls-ca") && system.contains("system's root certificates"),
        "{system}"
    );
    // Another CA, even with a client certificate RabbitMQ would accept.
    let other = TestPki::new("rabbitmq-other");
    let message = refused(&secure, secure.tls().with_ca(other.ca())).await;
    assert!(
        message.contains("--client-tls-ca") && message.contains(&other.ca().display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_refuses_a_client_without_its_certificate() {
    let secure = secure();
    let anonymous = RabbitTls::new().with_ca(secure.pki.ca());
    let message = refused(&secure, anonymous.clone()).await;
    assert!(
        message.contains("--client-tls-cert") && message.contains("none was given"),
        "{message}"
    );
    let other = TestPki::new("rabbitmq-stranger");
    let stranger = other.issue("stranger", "stranger");
    let message = refused(
        &secure,
        anonymous.with_identity(&stranger.cert, &stranger.key),
    )
    .await;
    assert!(
        message.contains("refused this client's certificate")
            && message.contains(&stranger.cert.display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_takes_the_client_tls_options() {
    let secure = secure();
    let mut catalog = Catalog::new();
    micro_rabbitmq::install(&mut catalog);
    let mut options = Options {
        broker: "rabbitmq".into(),
        broker_address: Some(secure.rabbit.amqps.clone()),
        client_tls_ca: Some(secure.pki.ca().into()),
        client_tls_cert: Some(secure.client.cert.clone()),
        client_tls_key: Some(secure.client.key.clone()),
        ..Options::default()
    };
    let broker = catalog.broker(&options).await.expect("broker over TLS");
    broker
        .publish("tls.catalog", Message::new("over TLS"))
        .await
        .expect("publish over TLS");
    options.client_tls_cert = None;
    options.client_tls_key = None;
    let err = match catalog.broker(&options).await {
        Ok(_) => panic!("a broker connected without a client certificate"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&redacted(&secure)) && err.contains("--client-tls-cert"),
        "{err}"
    );
}
