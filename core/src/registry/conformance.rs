//! The conformance suite every [`Registry`] implementation must pass.
//!
//! Run it in a plugin's tests with [`registry_conformance!`](crate::registry_conformance), giving
//! an async expression that builds a fresh `Arc<dyn Registry>` against the real backend. Each case
//! uses service names of its own, so cases can run in parallel on one backend.
//!
//! Just over 600 lines: one file because the macro lists every case and the cases share their
//! fixtures; a case is a function a reader finds by the name the macro gives it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::conformance::{PROMPT, eventually, next, unique};
use crate::registry::{Endpoint, Event, EventKind, MessageType, Node, Registry, Service, Watcher};

/// The TTL the expiry case registers with; backends raise shorter TTLs (etcd to about 2 s).
pub const SHORT_TTL: Duration = Duration::from_secs(2);
const LONG_TTL: Duration = Duration::from_secs(60);

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression giving an
/// `Arc<dyn Registry>`, evaluated once per case. Cases that watch from a second client use
/// `observer: <async expr>` when given (another connection to the same backend), else the first.
#[macro_export]
macro_rules! registry_conformance {
    ($make:expr) => {
        $crate::registry_conformance!($make, observer: async { None::<::std::sync::Arc<dyn $crate::registry::Registry>> });
    };
    ($make:expr, observer: $observer:expr) => {
        mod registry_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::registry::conformance as suite;
            #[tokio::test(flavor = "multi_thread")]
            async fn register_get_list_deregister() { suite::register_get_list_deregister($make.await).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn two_versions() { suite::two_versions($make.await).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn nodes_come_and_go() { suite::nodes_come_and_go($make.await).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn watch_in_order() { let r = $make.await; let o = $observer.await.unwrap_or_else(|| r.clone()); suite::watch_in_order(r, o).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn watch_a_burst_of_changes() { let r = $make.await; let o = $observer.await.unwrap_or_else(|| r.clone()); suite::watch_a_burst_of_changes(r, o).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn unchanged_registration_is_silent() { let r = $make.await; let o = $observer.await.unwrap_or_else(|| r.clone()); suite::unchanged_registration_is_silent(r, o).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn watch_all_services() { suite::watch_all_services($make.await).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn ttl_expiry() { let r = $make.await; let o = $observer.await.unwrap_or_else(|| r.clone()); suite::ttl_expiry(r, o).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn concurrent_registrations() { suite::concurrent_registrations($make.await).await }
            #[tokio::test(flavor = "multi_thread")]
            async fn rejects_invalid_services() { suite::rejects_invalid_services($make.await).await }
        }
    };
}

fn node(id: &str, port: u16) -> Node {
    Node {
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        metadata: [("protocol".to_string(), "grpc".to_string())].into(),
    }
}

fn service(name: &str, version: &str, nodes: Vec<Node>) -> Service {
    let message = |n: &str| MessageType {
        name: n.into(),
        full_name: format!("test.v1.{n}"),
    };
    Service {
        name: name.into(),
        version: version.into(),
        metadata: [("team".to_string(), "conformance".to_string())].into(),
        endpoints: vec![Endpoint {
            name: "Test.Call".into(),
            request: Some(message("CallRequest")),
            response: Some(message("CallReply")),
            metadata: [("grpc_method".to_string(), "/test.v1.Test/Call".to_string())].into(),
        }],
        nodes,
    }
}

fn node_ids(services: &[Service]) -> Vec<String> {
    let mut ids: Vec<String> = services
        .iter()
        .flat_map(|s| s.nodes.iter().map(|n| n.id.clone()))
        .collect();
    ids.sort();
    ids
}

async fn expect_event(watcher: &mut Watcher, kind: EventKind, node_id: &str, step: &str) {
    let event = next(watcher, step)
        .await
        .unwrap_or_else(|e| panic!("{step}: watch failed: {e}"));
    assert_eq!(event.kind, kind, "{step}: wrong event kind: {event:?}");
    let ids: Vec<&str> = event.service.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [node_id],
        "{step}: event for the wrong node: {event:?}"
    );
}

/// Register, read back (endpoints and metadata intact), list, deregister, read back empty.
pub async fn register_get_list_deregister(registry: Arc<dyn Registry>) {
    let name = unique("conf-basic");
    let svc = service(&name, "1.0.0", vec![node(&format!("{name}-1"), 1001)]);
    registry.register(&svc, LONG_TTL).await.expect("register");

    let got = registry.get_service(&name).await.expect("get_service");
    assert_eq!(
        got,
        vec![svc.clone()],
        "get_service returns what was registered"
    );
    let listed = registry.list_services().await.expect("list_services");
    assert!(
        listed.iter().any(|s| s.name == name),
        "list_services includes {name}"
    );
    assert_names_agree(&*registry, &name, true).await;

    registry.deregister(&svc).await.expect("deregister");
    assert!(
        registry
            .get_service(&name)
            .await
            .expect("get_service")
            .is_empty(),
        "gone after deregister"
    );
    let listed = registry.list_services().await.expect("list_services");
    assert!(
        !listed.iter().any(|s| s.name == name),
        "list_services no longer includes {name}"
    );
    assert_names_agree(&*registry, &name, false).await;
    registry
        .deregister(&svc)
        .await
        .expect("deregistering twice is not an error");
    assert!(
        registry
            .get_service(&unique("conf-never"))
            .await
            .expect("get unknown")
            .is_empty()
    );
}

/// `list_names` is sorted, holds each name once, names what `list_services` lists (other
/// tests' services may come and go in between: only `name` is compared exactly) and holds
/// `name` exactly when `present`.
async fn assert_names_agree(registry: &dyn Registry, name: &str, present: bool) {
    let names = registry.list_names().await.expect("list_names");
    assert!(
        names.windows(2).all(|pair| pair[0] < pair[1]),
        "list_names is sorted and each name appears once: {names:?}"
    );
    assert_eq!(
        names.iter().any(|n| n == name),
        present,
        "list_names includes {name}: {present} ({names:?})"
    );
}

/// Two versions of one service are two entries, each with its own nodes.
pub async fn two_versions(registry: Arc<dyn Registry>) {
    let name = unique("conf-versions");
    let v1 = service(&name, "1.0.0", vec![node(&format!("{name}-a"), 1001)]);
    let v2 = service(&name, "2.0.0", vec![node(&format!("{name}-b"), 1002)]);
    registry.register(&v1, LONG_TTL).await.expect("register v1");
    registry.register(&v2, LONG_TTL).await.expect("register v2");
    let mut got = registry.get_service(&name).await.expect("get_service");
    got.sort_by(|a, b| a.version.cmp(&b.version));
    assert_eq!(got, vec![v1.clone(), v2.clone()]);
    // Named once, whatever its versions.
    assert_names_agree(&*registry, &name, true).await;
    registry.deregister(&v1).await.expect("deregister v1");
    assert_eq!(
        registry.get_service(&name).await.expect("get_service"),
        vec![v2.clone()]
    );
    registry.deregister(&v2).await.expect("deregister v2");
    assert_names_agree(&*registry, &name, false).await;
}

/// Nodes of one version accumulate and leave one by one.
pub async fn nodes_come_and_go(registry: Arc<dyn Registry>) {
    let name = unique("conf-nodes");
    let a = service(&name, "1", vec![node(&format!("{name}-a"), 1001)]);
    let b = service(&name, "1", vec![node(&format!("{name}-b"), 1002)]);
    registry.register(&a, LONG_TTL).await.expect("register a");
    registry.register(&b, LONG_TTL).await.expect("register b");
    let got = registry.get_service(&name).await.expect("get_service");
    assert_eq!(got.len(), 1, "one version: {got:?}");
    assert_eq!(node_ids(&got), [format!("{name}-a"), format!("{name}-b")]);
    registry.deregister(&a).await.expect("deregister a");
    assert_eq!(
        node_ids(&registry.get_service(&name).await.expect("get")),
        [format!("{name}-b")]
    );
    registry.deregister(&b).await.expect("deregister b");
}

/// A watcher (on another client) sees Create, Update, Create, Delete in order, and nothing of
/// other services.
pub async fn watch_in_order(registry: Arc<dyn Registry>, observer: Arc<dyn Registry>) {
    let name = unique("conf-watch");
    let other = unique("conf-other");
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    let n1 = service(&name, "1", vec![node(&format!("{name}-1"), 1001)]);
    let n2 = service(&name, "1", vec![node(&format!("{name}-2"), 1002)]);

    registry.register(&n1, LONG_TTL).await.expect("register n1");
    expect_event(
        &mut watcher,
        EventKind::Create,
        &format!("{name}-1"),
        "register n1",
    )
    .await;

    let mut changed = n1.clone();
    changed.nodes[0]
        .metadata
        .insert("weight".into(), "2".into());
    registry
        .register(&changed, LONG_TTL)
        .await
        .expect("re-register n1 changed");
    expect_event(
        &mut watcher,
        EventKind::Update,
        &format!("{name}-1"),
        "change n1",
    )
    .await;

    registry.register(&n2, LONG_TTL).await.expect("register n2");
    expect_event(
        &mut watcher,
        EventKind::Create,
        &format!("{name}-2"),
        "register n2",
    )
    .await;

    let unrelated = service(&other, "1", vec![node(&format!("{other}-1"), 1003)]);
    registry
        .register(&unrelated, LONG_TTL)
        .await
        .expect("register other service");
    registry.deregister(&changed).await.expect("deregister n1");
    expect_event(
        &mut watcher,
        EventKind::Delete,
        &format!("{name}-1"),
        "deregister n1",
    )
    .await;

    registry.deregister(&n2).await.expect("deregister n2");
    expect_event(
        &mut watcher,
        EventKind::Delete,
        &format!("{name}-2"),
        "deregister n2",
    )
    .await;
    registry
        .deregister(&unrelated)
        .await
        .expect("deregister other");
}

/// What one node went through, in order: each record it was registered with, `None` when it was
/// deregistered.
type History = Vec<Option<Service>>;

/// Follows one watcher through a burst of changes: every event must move its node forward along
/// the node's history (a backend that lists snapshots may skip steps, never go back or repeat),
/// and the events must end at the last state of every node.
struct Replay<'a> {
    name: &'a str,
    histories: &'a BTreeMap<String, History>,
    /// Per node: the index in its history of the last state the watcher saw.
    seen: BTreeMap<String, usize>,
    /// Per node: the record the watcher holds now.
    holds: BTreeMap<String, Service>,
}

impl<'a> Replay<'a> {
    fn new(name: &'a str, histories: &'a BTreeMap<String, History>) -> Self {
        Replay {
            name,
            histories,
            seen: BTreeMap::new(),
            holds: BTreeMap::new(),
        }
    }

    /// Whether the watcher holds the last state of every node.
    fn done(&self) -> bool {
        self.histories
            .iter()
            .all(|(id, history)| self.holds.get(id) == history.last().and_then(Option::as_ref))
    }

    fn apply(&mut self, who: &str, event: Event) {
        if event.service.name != self.name {
            return; // another case's service, seen by a watcher of everything
        }
        let [node] = event.service.nodes.as_slice() else {
            panic!("{who}: an event carries exactly one node: {event:?}");
        };
        let id = node.id.clone();
        let history = self
            .histories
            .get(&id)
            .unwrap_or_else(|| panic!("{who}: event for a node never registered: {event:?}"));
        let after = self.seen.get(&id).map_or(0, |at| at + 1);
        let state = match event.kind {
            EventKind::Delete => None,
            EventKind::Create | EventKind::Update => Some(&event.service),
        };
        let Some(at) = (after..history.len()).find(|&i| history[i].as_ref() == state) else {
            panic!(
                "{who}: {:?} of {id} is not a later state of the node (seen up to step {after} \
                 of {history:?}): reordered, repeated or wrong: {event:?}",
                event.kind
            );
        };
        let held = self.holds.contains_key(&id);
        let fits = match event.kind {
            EventKind::Create => !held,
            EventKind::Update | EventKind::Delete => held,
        };
        let holds = if held { "holds" } else { "does not hold" };
        assert!(
            fits,
            "{who}: {:?} of {id} while the watcher {holds} it: {event:?}",
            event.kind
        );
        self.seen.insert(id.clone(), at);
        match state {
            Some(record) => self.holds.insert(id, record.clone()),
            None => self.holds.remove(&id),
        };
    }
}

/// Changes made back to back, without waiting for their events (three nodes registered, one
/// deregistered, two changed, one of them twice): every watcher, of the service or of everything,
/// on either client, sees each node's changes in the order they were made and ends at the
/// registry's state; then nothing more.
///
/// A backend that diffs snapshots may merge steps (a node that came and went is never seen, two
/// changes are one `Update`), but never reorders a node's changes or reports one twice.
pub async fn watch_a_burst_of_changes(registry: Arc<dyn Registry>, observer: Arc<dyn Registry>) {
    let name = unique("conf-burst");
    let mut watchers = vec![
        (
            "observer watching the service",
            observer.watch(Some(&name)).await.expect("watch"),
        ),
        (
            "observer watching everything",
            observer.watch(None).await.expect("watch all"),
        ),
        (
            "registry watching the service",
            registry.watch(Some(&name)).await.expect("watch"),
        ),
    ];
    let ids: Vec<String> = (1..=3).map(|i| format!("{name}-{i}")).collect();
    let first: Vec<Service> = ids
        .iter()
        .zip(1001..)
        .map(|(id, port)| service(&name, "1", vec![node(id, port)]))
        .collect();
    let changed = |svc: &Service, weight: &str| {
        let mut svc = svc.clone();
        svc.nodes[0].metadata.insert("weight".into(), weight.into());
        svc
    };
    let (n2_changed, n3_changed, n3_again) = (
        changed(&first[1], "2"),
        changed(&first[2], "2"),
        changed(&first[2], "3"),
    );
    let mut histories: BTreeMap<String, History> = BTreeMap::new();
    let mut record = |svc: &Service| {
        let state = Some(svc.clone());
        histories
            .entry(svc.nodes[0].id.clone())
            .or_default()
            .push(state);
    };
    for svc in &first {
        registry.register(svc, LONG_TTL).await.expect("register");
        record(svc);
    }
    registry.deregister(&first[0]).await.expect("deregister n1");
    for (svc, step) in [
        (&n2_changed, "change n2"),
        (&n3_changed, "change n3"),
        (&n3_again, "change n3 again"),
    ] {
        registry.register(svc, LONG_TTL).await.expect(step);
        record(svc);
    }
    histories.entry(ids[0].clone()).or_default().push(None);

    for (who, watcher) in &mut watchers {
        let mut replay = Replay::new(&name, &histories);
        while !replay.done() {
            let event = next(watcher, who)
                .await
                .unwrap_or_else(|e| panic!("{who}: {e}"));
            replay.apply(who, event);
        }
    }
    // Nothing more: the next event every watcher sees is the marker registered now.
    let marker = service(&name, "1", vec![node(&format!("{name}-marker"), 1009)]);
    registry
        .register(&marker, LONG_TTL)
        .await
        .expect("register marker");
    for (who, watcher) in &mut watchers {
        loop {
            let event = next(watcher, who)
                .await
                .unwrap_or_else(|e| panic!("{who}: {e}"));
            if event.service.name != name {
                continue;
            }
            assert_eq!(
                (event.kind, event.service.nodes[0].id.as_str()),
                (EventKind::Create, marker.nodes[0].id.as_str()),
                "{who}: an event after the burst was over: {event:?}"
            );
            break;
        }
    }
    for svc in [&n2_changed, &n3_again, &marker] {
        registry.deregister(svc).await.expect("deregister");
    }
}

/// Registering a node again with the same record (a heartbeat, or a new TTL) sends no event:
/// the next event a watcher sees is the next real change.
pub async fn unchanged_registration_is_silent(
    registry: Arc<dyn Registry>,
    observer: Arc<dyn Registry>,
) {
    let name = unique("conf-silent");
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    let kept = service(&name, "1", vec![node(&format!("{name}-kept"), 1001)]);
    registry.register(&kept, LONG_TTL).await.expect("register");
    expect_event(
        &mut watcher,
        EventKind::Create,
        &kept.nodes[0].id,
        "register",
    )
    .await;
    for _ in 0..3 {
        registry.register(&kept, LONG_TTL).await.expect("heartbeat");
    }
    registry
        .register(&kept, LONG_TTL * 2)
        .await
        .expect("register with another TTL");
    registry.register(&kept, LONG_TTL).await.expect("heartbeat");
    let marker = service(&name, "1", vec![node(&format!("{name}-marker"), 1002)]);
    registry
        .register(&marker, LONG_TTL)
        .await
        .expect("register marker");
    expect_event(
        &mut watcher,
        EventKind::Create,
        &marker.nodes[0].id,
        "the next event after unchanged registrations is the next change",
    )
    .await;
    for svc in [&kept, &marker] {
        registry.deregister(svc).await.expect("deregister");
    }
}

/// A watcher without a filter sees every service.
pub async fn watch_all_services(registry: Arc<dyn Registry>) {
    let (a, b) = (unique("conf-all-a"), unique("conf-all-b"));
    let mut watcher = registry.watch(None).await.expect("watch all");
    let sa = service(&a, "1", vec![node(&format!("{a}-1"), 1001)]);
    let sb = service(&b, "1", vec![node(&format!("{b}-1"), 1002)]);
    registry.register(&sa, LONG_TTL).await.expect("register a");
    registry.register(&sb, LONG_TTL).await.expect("register b");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = next(&mut watcher, "watch all").await.expect("watch all");
        // Other cases may run on the same backend: keep only ours.
        if event.service.name == a || event.service.name == b {
            assert_eq!(event.kind, EventKind::Create);
            seen.push(event.service.name);
        }
    }
    seen.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(seen, want);
    registry.deregister(&sa).await.expect("deregister a");
    registry.deregister(&sb).await.expect("deregister b");
}

/// A node not refreshed within its TTL disappears and its watcher sees Delete; a node that is
/// refreshed stays.
pub async fn ttl_expiry(registry: Arc<dyn Registry>, observer: Arc<dyn Registry>) {
    let name = unique("conf-ttl");
    let lapsing = service(&name, "1", vec![node(&format!("{name}-lapsing"), 1001)]);
    let kept = service(&name, "1", vec![node(&format!("{name}-kept"), 1002)]);
    let mut watcher = observer.watch(Some(&name)).await.expect("watch");
    registry
        .register(&lapsing, SHORT_TTL)
        .await
        .expect("register lapsing");
    registry
        .register(&kept, SHORT_TTL)
        .await
        .expect("register kept");
    expect_event(
        &mut watcher,
        EventKind::Create,
        &format!("{name}-lapsing"),
        "register lapsing",
    )
    .await;
    expect_event(
        &mut watcher,
        EventKind::Create,
        &format!("{name}-kept"),
        "register kept",
    )
    .await;

    let heartbeat = {
        let registry = registry.clone();
        let kept = kept.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SHORT_TTL / 4).await;
                let _ = registry.register(&kept, SHORT_TTL).await;
            }
        })
    };
    // Backends may take up to two TTLs to notice (Consul sessions, etcd lease granularity).
    let deadline = SHORT_TTL * 3 + PROMPT;
    let event = tokio::time::timeout(deadline, async {
        loop {
            let event = next(&mut watcher, "ttl expiry").await.expect("watch");
            if event.kind == EventKind::Delete {
                return event;
            }
        }
    })
    .await
    .expect("the watcher sees Delete when the TTL lapses");
    assert_eq!(event.service.nodes[0].id, format!("{name}-lapsing"));
    let left = registry.get_service(&name).await.expect("get_service");
    heartbeat.abort();
    assert_eq!(
        node_ids(&left),
        [format!("{name}-kept")],
        "the refreshed node stays"
    );
    registry.deregister(&kept).await.expect("deregister kept");
    eventually(PROMPT, "kept node deregistered", || async {
        registry
            .get_service(&name)
            .await
            .map(|s| s.is_empty())
            .unwrap_or(false)
    })
    .await;
}

/// Twenty nodes registered at once are all there.
pub async fn concurrent_registrations(registry: Arc<dyn Registry>) {
    let name = unique("conf-concurrent");
    let tasks: Vec<_> = (0..20u16)
        .map(|i| {
            let registry = registry.clone();
            let svc = service(&name, "1", vec![node(&format!("{name}-{i:02}"), 2000 + i)]);
            tokio::spawn(async move { registry.register(&svc, LONG_TTL).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("register");
    }
    let got = registry.get_service(&name).await.expect("get_service");
    assert_eq!(node_ids(&got).len(), 20, "{got:?}");
    for i in 0..20u16 {
        let svc = service(&name, "1", vec![node(&format!("{name}-{i:02}"), 2000 + i)]);
        registry.deregister(&svc).await.expect("deregister");
    }
}

/// Empty names and nodes without address are refused with an error, not stored.
pub async fn rejects_invalid_services(registry: Arc<dyn Registry>) {
    let err = registry
        .register(&service("", "1", vec![node("x", 1)]), LONG_TTL)
        .await;
    assert!(err.is_err(), "an empty name is refused");
    let name = unique("conf-invalid");
    let mut bad = service(&name, "1", vec![node("x", 1)]);
    bad.nodes[0].address.clear();
    assert!(
        registry.register(&bad, LONG_TTL).await.is_err(),
        "a node without address is refused"
    );
    assert!(registry.get_service(&name).await.expect("get").is_empty());
}
