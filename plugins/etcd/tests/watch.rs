//! Registry watches against the etcd started by `scripts/setup` (127.0.0.1:2379, or
//! `MICRO_ETCD_ADDRESS`): what a watcher sees past a compaction (history it needs is gone, so it
//! lists afresh and reports the difference), through a network cut, and of keys written behind
//! the plugin's back; and that a registration that changes nothing writes nothing.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{address, raw, service};
use etcd_client::{Client, CompactionOptions, DeleteOptions, GetOptions};
use micro_core::Registry;
use micro_core::conformance::{PROMPT, next, unique};
use micro_core::registry::{EventKind, Service, Watcher};
use micro_etcd::{EtcdRegistry, REGISTRY_PREFIX};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

async fn connect(address: &str) -> EtcdRegistry {
    EtcdRegistry::connect(address)
        .await
        .expect("etcd registry (run scripts/setup)")
}

/// The same node with other metadata: an Update for watchers.
fn changed(svc: &Service) -> Service {
    let mut svc = svc.clone();
    svc.nodes[0].metadata.insert("weight".into(), "2".into());
    svc
}

/// etcd's current revision.
async fn revision(client: &mut Client) -> i64 {
    let response = client
        .get("/", Some(GetOptions::new().with_count_only()))
        .await
        .expect("get");
    response.header().expect("header").revision()
}

/// Compacts etcd's history up to now: every watch resuming from an older revision is refused.
async fn compact(client: &mut Client) {
    let now = revision(client).await;
    client
        .compact(now, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
}

/// The next event is `kind` of the node `svc` holds, with that exact record.
async fn expect(watcher: &mut Watcher, kind: EventKind, svc: &Service) {
    let node = &svc.nodes[0].id;
    let event = next(watcher, node).await.expect("watch");
    assert_eq!(
        (event.kind, event.service.nodes[0].id.as_str()),
        (kind, node.as_str()),
        "{event:?}"
    );
    if kind != EventKind::Delete {
        assert_eq!(&event.service, svc, "the record as registered");
    }
}

/// A watcher that last saw a compacted revision, knowing nothing: it lists afresh and reports
/// what is registered now (and nothing of a node that came and went), then goes on watching.
#[tokio::test(flavor = "multi_thread")]
async fn watch_resumes_past_a_compaction() {
    // Compacts etcd: alone (see `common::alone`).
    let _compacting = common::alone().await;
    let registry = connect(&address()).await;
    let observer = connect(&address()).await;
    let name = unique("watch-compact");
    let mut client = raw().await;
    let old_revision = revision(&mut client).await;

    let (a, b) = (
        service(&name, &format!("{name}-a")),
        service(&name, &format!("{name}-b")),
    );
    registry.register(&a, PROMPT).await.expect("register a");
    registry.register(&b, PROMPT).await.expect("register b");
    // Came and went before the compaction: a replay of history would report it, a resync not.
    let gone = service(&name, &format!("{name}-gone"));
    registry
        .register(&gone, PROMPT)
        .await
        .expect("register gone");
    registry.deregister(&gone).await.expect("deregister gone");
    compact(&mut client).await;

    let mut watcher = observer.watch_from_revision(Some(&name), old_revision);
    // Creates in node order (the order of `diff_nodes`).
    expect(&mut watcher, EventKind::Create, &a).await;
    expect(&mut watcher, EventKind::Create, &b).await;

    let c = service(&name, &format!("{name}-c"));
    registry.register(&c, PROMPT).await.expect("register c");
    expect(&mut watcher, EventKind::Create, &c).await;
    registry.deregister(&a).await.expect("deregister a");
    expect(&mut watcher, EventKind::Delete, &a).await;
    for s in [&b, &c] {
        registry.deregister(s).await.expect("deregister");
    }
}

/// Compacting etcd under a live watcher changes nothing for it: the changes made afterwards
/// arrive one by one, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_watch_goes_on_past_a_compaction() {
    // Compacts etcd: alone (see `common::alone`).
    let _compacting = common::alone().await;
    let registry = connect(&address()).await;
    let observer = connect(&address()).await;
    let name = unique("watch-live-compact");
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    let (a, b) = (
        service(&name, &format!("{name}-a")),
        service(&name, &format!("{name}-b")),
    );
    registry.register(&a, PROMPT).await.expect("register a");
    expect(&mut watcher, EventKind::Create, &a).await;

    compact(&mut raw().await).await;

    registry.register(&b, PROMPT).await.expect("register b");
    let a2 = changed(&a);
    registry.register(&a2, PROMPT).await.expect("change a");
    registry.deregister(&b).await.expect("deregister b");
    expect(&mut watcher, EventKind::Create, &b).await;
    expect(&mut watcher, EventKind::Update, &a2).await;
    expect(&mut watcher, EventKind::Delete, &b).await;
    // Nothing in between: the next event is the next change.
    registry.deregister(&a2).await.expect("deregister a");
    expect(&mut watcher, EventKind::Delete, &a2).await;
}

/// A TCP proxy to etcd that can cut every connection through it and refuse new ones, then let
/// them through again: a network partition between one client and etcd.
struct Partition {
    address: String,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Partition {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (is_cut, open) = (cut.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().expect("lock").push(task.abort_handle());
            }
        })
        .abort_handle();
        Partition {
            address,
            cut,
            connections,
            accept,
        }
    }

    /// Closes every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    /// Lets connections through again.
    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A live watcher cut off from etcd while nodes change and etcd compacts its history: once back,
/// it cannot resume from where it was, lists afresh, and reports exactly the difference, in the
/// documented order (creates, updates, deletes), then goes on watching.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_cut_off_past_a_compaction_reports_the_difference() {
    // Compacts etcd: alone (see `common::alone`).
    let _compacting = common::alone().await;
    let etcd = address();
    let first = etcd.split(',').next().unwrap_or_default().trim();
    let partition = Partition::start(first.trim_start_matches("http://").to_string()).await;
    let registry = connect(&etcd).await;
    let observer = connect(&partition.address).await;
    let name = unique("watch-cut");
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    let [a, b, c, d, gone] =
        ["a", "b", "c", "d", "gone"].map(|n| service(&name, &format!("{name}-{n}")));
    for svc in [&a, &b, &c] {
        registry.register(svc, PROMPT).await.expect("register");
        expect(&mut watcher, EventKind::Create, svc).await;
    }

    partition.cut();
    let b2 = changed(&b);
    registry.deregister(&c).await.expect("deregister c");
    registry.register(&b2, PROMPT).await.expect("change b");
    registry.register(&d, PROMPT).await.expect("register d");
    registry
        .register(&gone, PROMPT)
        .await
        .expect("register gone");
    registry.deregister(&gone).await.expect("deregister gone");
    compact(&mut raw().await).await;
    partition.heal();

    expect(&mut watcher, EventKind::Create, &d).await;
    expect(&mut watcher, EventKind::Update, &b2).await;
    expect(&mut watcher, EventKind::Delete, &c).await;
    let e = service(&name, &format!("{name}-e"));
    registry.register(&e, PROMPT).await.expect("register e");
    expect(&mut watcher, EventKind::Create, &e).await;
    for svc in [&a, &b2, &d, &e] {
        registry.deregister(svc).await.expect("deregister");
    }
}

/// Keys written in one transaction, or deleted by someone else, are all reported: every event
/// of a watch response, and deletes of keys the watcher never saw.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_of_a_response_and_deletes_of_unseen_keys() {
    // Watches from a past revision: its history must not be compacted meanwhile.
    common::share().await;
    let observer = connect(&address()).await;
    let name = unique("watch-txn");
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    let mut client = raw().await;
    // Two nodes put in one transaction arrive in one watch response: both are reported.
    let [x, y] = ["x", "y"].map(|id| service(&name, &format!("{name}-{id}")));
    let puts: Vec<etcd_client::TxnOp> = [&x, &y]
        .iter()
        .map(|svc| {
            let key = format!("{REGISTRY_PREFIX}{name}/{}", svc.nodes[0].id);
            etcd_client::TxnOp::put(key, serde_json::to_string(svc).expect("json"), None)
        })
        .collect();
    client
        .txn(etcd_client::Txn::new().and_then(puts))
        .await
        .expect("txn");
    expect(&mut watcher, EventKind::Create, &x).await;
    expect(&mut watcher, EventKind::Create, &y).await;

    // A watcher that never saw the keys still reports their deletes.
    let late = connect(&address()).await;
    let now = revision(&mut client).await;
    let mut late_watcher = late.watch_from_revision(Some(&name), now);
    client
        .delete(
            format!("{REGISTRY_PREFIX}{name}/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("raw delete");
    for watcher in [&mut watcher, &mut late_watcher] {
        expect(watcher, EventKind::Delete, &x).await;
        expect(watcher, EventKind::Delete, &y).await;
    }
    // Nothing more: the next event is the next change.
    let marker = service(&name, &format!("{name}-marker"));
    let registry = connect(&address()).await;
    registry
        .register(&marker, PROMPT)
        .await
        .expect("register marker");
    expect(&mut watcher, EventKind::Create, &marker).await;
    registry
        .deregister(&marker)
        .await
        .expect("deregister marker");
}

/// Registering a node again unchanged (a heartbeat) writes nothing: the key keeps its revision,
/// so no watcher anywhere hears of it. A change does write.
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_registration_writes_nothing() {
    common::share().await;
    let registry = connect(&address()).await;
    let name = unique("watch-unchanged");
    let svc = service(&name, &format!("{name}-1"));
    let key = format!("{REGISTRY_PREFIX}{name}/{name}-1");
    let mut client = raw().await;
    let mut mod_revision = async || {
        let response = client.get(key.as_str(), None).await.expect("get");
        response.kvs().first().map(|kv| kv.mod_revision())
    };
    let ttl = Duration::from_secs(30);
    registry.register(&svc, ttl).await.expect("register");
    let written = mod_revision().await.expect("registered");
    for _ in 0..3 {
        registry.register(&svc, ttl).await.expect("heartbeat");
    }
    assert_eq!(
        mod_revision().await,
        Some(written),
        "a heartbeat wrote the key"
    );
    registry
        .register(&changed(&svc), ttl)
        .await
        .expect("change");
    assert!(
        mod_revision().await.is_some_and(|at| at > written),
        "a change is written"
    );
    registry.deregister(&svc).await.expect("deregister");
}
