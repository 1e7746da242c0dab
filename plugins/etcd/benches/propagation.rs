//! Registry change propagation on etcd: register/deregister on one client, time until a watcher
//! on another client sees the event. Prints p50/p99 over 1 000 changes, against a baseline of a
//! raw etcd put seen by a raw etcd watch in the same run. Needs etcd (`scripts/setup`).
//!
//! `cargo bench -p micro-etcd --bench propagation`

use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions, WatchOptions};
use futures::StreamExt;
use micro_core::Registry;
use micro_core::registry::{EventKind, Node, Service};
use micro_etcd::EtcdRegistry;

const CHANGES: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(10);

fn address() -> String {
    std::env::var("MICRO_ETCD_ADDRESS").unwrap_or_else(|_| micro_etcd::DEFAULT_ADDRESS.into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(what: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    let max = samples.last().copied().unwrap_or_default();
    println!(
        "{what:<28} n={:<5} p50={p50:>10.3?} p99={p99:>10.3?} max={max:>10.3?}",
        samples.len()
    );
    (p50, p99)
}

/// The plugin: EtcdRegistry::register / deregister, seen by EtcdRegistry::watch elsewhere.
async fn registry_run(address: &str) -> Vec<Duration> {
    let registrar = EtcdRegistry::connect(address)
        .await
        .expect("registrar (run scripts/setup)");
    let observer = EtcdRegistry::connect(address).await.expect("observer");
    let name = format!("bench-propagation-{}", std::process::id());
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    let mut samples = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let service = Service {
            name: name.clone(),
            version: "1.0.0".into(),
            nodes: vec![Node {
                id: format!("{name}-{}", i / 2),
                address: "127.0.0.1:50051".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (kind, started) = if i % 2 == 0 {
            let started = Instant::now();
            registrar
                .register(&service, Duration::from_secs(30))
                .await
                .expect("register");
            (EventKind::Create, started)
        } else {
            let started = Instant::now();
            registrar.deregister(&service).await.expect("deregister");
            (EventKind::Delete, started)
        };
        let event = tokio::time::timeout(TIMEOUT, watcher.next())
            .await
            .expect("event within the timeout")
            .expect("watch open")
            .expect("event");
        assert_eq!(event.kind, kind);
        samples.push(started.elapsed());
    }
    samples
}

/// The baseline: a raw put / delete seen by a raw watch on another client.
async fn raw_run(address: &str) -> Vec<Duration> {
    let endpoints: Vec<&str> = address.split(',').map(str::trim).collect();
    let mut writer = Client::connect(&endpoints, None).await.expect("raw writer");
    let mut reader = Client::connect(&endpoints, None).await.expect("raw reader");
    let prefix = format!("/micro-bench/{}/", std::process::id());
    let mut stream = reader
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("raw watch");
    let mut samples = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let key = format!("{prefix}{}", i / 2);
        let started = Instant::now();
        if i % 2 == 0 {
            writer.put(key.as_str(), "v", None).await.expect("put");
        } else {
            writer.delete(key.as_str(), None).await.expect("delete");
        }
        loop {
            let response = tokio::time::timeout(TIMEOUT, stream.message())
                .await
                .expect("event within the timeout")
                .expect("watch")
                .expect("watch open");
            if !response.events().is_empty() {
                break;
            }
        }
        samples.push(started.elapsed());
    }
    let _ = writer
        .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
        .await;
    samples
}

#[tokio::main]
async fn main() {
    let address = address();
    println!("registry change propagation on etcd at {address}, {CHANGES} changes each");
    let (raw_p50, raw_p99) = report("raw etcd put -> watch", raw_run(&address).await);
    let (p50, p99) = report("EtcdRegistry -> watch", registry_run(&address).await);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "ratio to raw: p50 x{:.2}, p99 x{:.2}; target p99 <= 100 ms: {}",
        ratio(p50, raw_p50),
        ratio(p99, raw_p99),
        if p99 <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        }
    );
}
