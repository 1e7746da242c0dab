//! Resolved nodes per service, each with its connection, kept fresh by a registry watch.
//!
//! The registry is read once per service; after that each watch event is applied to the
//! service's full node set, kept by the task that watches it, so that a change costs no registry
//! round trip (issue 17: at 100 000 nodes and 1 000 changes a second, re-reading the service on
//! every event doubled the registry's traffic).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};

use futures::{FutureExt, StreamExt};

use super::link::Link;
use crate::metrics::NodeCalls;
use crate::registry::{Event, EventKind, Node, Registry, Service};
use crate::tls::{ClientTls, SECURE_METADATA};
use crate::{Error, Result};

/// The node metadata key the client files each node's registered service version under.
pub(super) const VERSION_METADATA: &str = "version";

/// Every registered node of one service, stopping ones included, by id: what watch events are
/// applied to, and what the nodes calls go to are derived from.
type Nodes = BTreeMap<String, Node>;

/// A node and the connection to it (made on the first call, remade when it closes).
#[derive(Clone)]
pub(super) struct Target {
    pub(super) node: Node,
    pub(super) link: Link,
    /// The metric series of the calls to the node, by endpoint: kept with the connection, so the
    /// calls of a method seen before update them without a lookup.
    pub(super) metrics: Arc<NodeCalls>,
}

impl Target {
    pub(super) fn new(node: Node, link: Link) -> Self {
        Target {
            metrics: Arc::new(NodeCalls::new(node.id.as_str().into())),
            node,
            link,
        }
    }

    /// `node` at this target's address: the same connection, and the same series while its id
    /// (their `node` label) is the same.
    fn renewed(&self, node: Node) -> Self {
        if node.id != self.node.id {
            return Target::new(node, self.link.clone());
        }
        Target {
            node,
            link: self.link.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The live nodes of one service and its round-robin position.
pub(super) struct Resolved {
    pub(super) targets: Vec<Target>,
    pub(super) turn: AtomicUsize,
    /// Set once the cache holds another entry for the service, or none: whoever kept this one
    /// to skip the lookup must look it up again.
    retired: AtomicBool,
}

impl Resolved {
    /// `targets`, starting the round-robin at a random node.
    pub(super) fn new(targets: Vec<Target>) -> Self {
        Resolved {
            targets,
            turn: AtomicUsize::new(fastrand::usize(..)),
            retired: AtomicBool::new(false),
        }
    }

    /// Whether the cache has replaced or forgotten this entry.
    pub(super) fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

/// Read on every call, written when a service's nodes change: a read-mostly lock.
pub(super) struct Cache {
    services: RwLock<HashMap<String, Arc<Resolved>>>,
    /// How secure nodes are dialled.
    pub(super) tls: Arc<ClientTls>,
}

impl Cache {
    pub(super) fn new(tls: Arc<ClientTls>) -> Self {
        Cache {
            services: RwLock::default(),
            tls,
        }
    }

    pub(super) fn get(&self, service: &str) -> Option<Arc<Resolved>> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
    }

    /// The nodes of `service` that calls may go to, out of `nodes`, with their connections: those
    /// of `previous` (kept by address, as a node's connection is, with its metric series) or new
    /// ones. Built outside the lock, so calls are not held up while a large service is rebuilt.
    fn build(&self, service: &str, nodes: &Nodes, previous: Option<&Resolved>) -> Arc<Resolved> {
        let kept: HashMap<&str, &Target> = previous
            .map(|p| {
                p.targets
                    .iter()
                    .map(|t| (t.node.address.as_str(), t))
                    .collect()
            })
            .unwrap_or_default();
        let targets = serving(nodes)
            .filter_map(|node| {
                if let Some(kept) = kept.get(node.address.as_str()) {
                    return Some(kept.renewed(node.clone()));
                }
                match self.dial(service, node) {
                    Ok(link) => Some(Target::new(node.clone(), link)),
                    Err(e) => {
                        tracing::warn!(%service, node = %node.id, address = %node.address, error = %e, "node address unusable; skipped");
                        None
                    }
                }
            })
            .collect();
        Arc::new(Resolved::new(targets))
    }

    /// A lazy connection to `node`: TLS when it is registered as secure, plaintext otherwise.
    fn dial(&self, service: &str, node: &Node) -> Result<Link> {
        let secure = node
            .metadata
            .get(SECURE_METADATA)
            .is_some_and(|v| v == "true");
        let link = if secure {
            let what = format!("node {} ({}) of `{service}`", node.id, node.address);
            Link::tls(&node.address, self.tls.clone(), &what)
        } else {
            Link::plain(&node.address)
        };
        link.map_err(|e| Error::Option(format!("`{}` is not an address: {e}", node.address)))
    }

    fn put(&self, service: &str, resolved: Arc<Resolved>) {
        if let Some(previous) = self.lock().insert(service.to_string(), resolved) {
            previous.retire();
        }
    }

    /// Puts `new` in place of `current` if `current` is still the entry of `service`; false when
    /// it is not (forgotten, or replaced by a newer resolve whose own watch keeps it fresh).
    fn replace(&self, service: &str, current: &Arc<Resolved>, new: Arc<Resolved>) -> bool {
        match self.lock().get_mut(service) {
            Some(entry) if Arc::ptr_eq(entry, current) => {
                std::mem::replace(entry, new).retire();
                true
            }
            _ => false,
        }
    }

    /// Forgets `service` if its entry is still `current`.
    fn forget(&self, service: &str, current: &Arc<Resolved>) {
        let mut services = self.lock();
        if services
            .get(service)
            .is_some_and(|entry| Arc::ptr_eq(entry, current))
            && let Some(forgotten) = services.remove(service)
        {
            forgotten.retire();
        }
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Resolved>>> {
        self.services.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The nodes of `service`: from the cache, or from the registry (then watched).
pub(super) async fn resolve(
    cache: &Arc<Cache>,
    registry: &Arc<dyn Registry>,
    service: &str,
) -> Result<Arc<Resolved>> {
    if let Some(resolved) = cache.get(service) {
        return Ok(resolved);
    }
    // Watch before reading, so no change between the two is missed.
    let watcher = registry.watch(Some(service)).await?;
    let nodes = fetch(&**registry, service).await?;
    let resolved = cache.build(service, &nodes, None);
    cache.put(service, resolved.clone());
    tokio::spawn(keep_fresh(
        Arc::downgrade(cache),
        service.to_string(),
        nodes,
        resolved.clone(),
        watcher,
    ));
    Ok(resolved)
}

/// Every registered node of `service`, whatever its version.
async fn fetch(registry: &dyn Registry, service: &str) -> Result<Nodes> {
    Ok(registry
        .get_service(service)
        .await?
        .into_iter()
        .flat_map(versioned)
        .map(|node| (node.id.clone(), node))
        .collect())
}

/// The nodes of `service`, each carrying its registration's version for filters
/// (`Filter::version`); a version a node sets itself wins.
fn versioned(service: Service) -> impl Iterator<Item = Node> {
    let version = service.version;
    service.nodes.into_iter().map(move |mut node| {
        node.metadata
            .entry(VERSION_METADATA.to_string())
            .or_insert_with(|| version.clone());
        node
    })
}

/// The nodes calls may go to, by id: a node marked stopping drains its calls, so new ones go
/// elsewhere while there is elsewhere.
fn serving(nodes: &Nodes) -> impl Iterator<Item = &Node> {
    let stopping = |node: &Node| {
        node.metadata
            .get(crate::server::HEALTH_METADATA)
            .is_some_and(|v| v == crate::server::NOT_SERVING)
    };
    let any_serving = nodes.values().any(|node| !stopping(node));
    nodes
        .values()
        .filter(move |node| !any_serving || !stopping(node))
}

/// Applies one watch event of `service` to its nodes; whether they changed. Idempotent: the
/// watch starts before the first read, so it may report a change the read already saw.
fn apply(nodes: &mut Nodes, service: &str, event: Event) -> bool {
    if event.service.name != service {
        return false;
    }
    let mut changed = false;
    match event.kind {
        EventKind::Create | EventKind::Update => {
            for node in versioned(event.service) {
                if nodes.get(&node.id) != Some(&node) {
                    nodes.insert(node.id.clone(), node);
                    changed = true;
                }
            }
        }
        EventKind::Delete => {
            for node in &event.service.nodes {
                changed |= nodes.remove(&node.id).is_some();
            }
        }
    }
    changed
}

/// Applies every event to `nodes` and republishes the entry when they change; forgets the entry
/// when the watch fails or ends (the next call resolves afresh); ends when the client is gone or
/// the entry is no longer the one this watch keeps.
async fn keep_fresh(
    cache: Weak<Cache>,
    service: String,
    mut nodes: Nodes,
    mut current: Arc<Resolved>,
    mut watcher: crate::registry::Watcher,
) {
    loop {
        let mut next = watcher.next().await;
        let Some(cache) = cache.upgrade() else { return };
        // The events already waiting are applied together: a burst rebuilds the list once.
        let mut changed = false;
        let failure = loop {
            match next {
                Some(Ok(event)) => changed |= apply(&mut nodes, &service, event),
                Some(Err(e)) => break Some(format!("registry watch failed: {e}")),
                None => break Some("registry watch ended".to_string()),
            }
            match watcher.next().now_or_never() {
                Some(more) => next = more,
                None => break None,
            }
        };
        if let Some(failure) = failure {
            tracing::warn!(%service, "{failure}; resolving afresh on the next call");
            cache.forget(&service, &current);
            return;
        }
        if !changed {
            continue;
        }
        let resolved = cache.build(&service, &nodes, Some(&current));
        tracing::debug!(%service, nodes = resolved.targets.len(), "nodes changed");
        if !cache.replace(&service, &current, resolved.clone()) {
            return;
        }
        current = resolved;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::registry::{Watcher, merge_nodes};
    use crate::server::{HEALTH_METADATA, NOT_SERVING};

    /// An in-memory registry that tells its watchers every change as one event per node, and
    /// counts how often it is read.
    #[derive(Default)]
    struct Counting {
        /// One single-node record per node id.
        records: Mutex<BTreeMap<String, Service>>,
        watchers: Mutex<Vec<mpsc::Sender<Result<Event>>>>,
        reads: AtomicUsize,
    }

    impl Counting {
        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }

        /// Tells every watcher `event`, as a backend would.
        async fn emit(&self, event: Event) {
            let watchers = self.watchers.lock().unwrap().clone();
            for watcher in watchers {
                let _ = watcher.send(Ok(event.clone())).await;
            }
        }

        /// Whether every watcher has taken every event sent to it.
        fn drained(&self) -> bool {
            let watchers = self.watchers.lock().unwrap();
            watchers.iter().all(|w| w.capacity() == w.max_capacity())
        }

        /// Ends every watch.
        fn close_watches(&self) {
            self.watchers.lock().unwrap().clear();
        }
    }

    #[async_trait]
    impl Registry for Counting {
        fn name(&self) -> &str {
            "counting"
        }

        async fn register(&self, service: &Service, _ttl: Duration) -> Result<()> {
            for node in &service.nodes {
                let record = service.with_node(node.clone());
                let before = self
                    .records
                    .lock()
                    .unwrap()
                    .insert(node.id.clone(), record.clone());
                let kind = match before {
                    None => EventKind::Create,
                    Some(old) if old != record => EventKind::Update,
                    Some(_) => continue,
                };
                self.emit(Event {
                    kind,
                    service: record,
                })
                .await;
            }
            Ok(())
        }

        async fn deregister(&self, service: &Service) -> Result<()> {
            for node in &service.nodes {
                let removed = self.records.lock().unwrap().remove(&node.id);
                if let Some(record) = removed {
                    self.emit(Event {
                        kind: EventKind::Delete,
                        service: record,
                    })
                    .await;
                }
            }
            Ok(())
        }

        async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let records = self.records.lock().unwrap().clone();
            Ok(merge_nodes(
                records.into_values().filter(|s| s.name == name),
            ))
        }

        async fn list_services(&self) -> Result<Vec<Service>> {
            Ok(merge_nodes(
                self.records.lock().unwrap().clone().into_values(),
            ))
        }

        async fn watch(&self, _service: Option<&str>) -> Result<Watcher> {
            let (sender, receiver) = mpsc::channel(64);
            self.watchers.lock().unwrap().push(sender);
            Ok(tokio_stream::wrappers::ReceiverStream::new(receiver).boxed())
        }
    }

    fn greeter(version: &str, id: &str, metadata: &[(&str, &str)]) -> Service {
        Service {
            name: "greeter".into(),
            version: version.into(),
            nodes: vec![Node {
                id: id.into(),
                address: format!("127.0.0.1:{}", 1000 + id.len()),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }],
            ..Default::default()
        }
    }

    fn cache() -> Arc<Cache> {
        Arc::new(Cache::new(Arc::new(ClientTls::new(None, None))))
    }

    /// The cached node ids of greeter, none when it is not cached.
    fn ids(cache: &Cache) -> Option<Vec<String>> {
        let resolved = cache.get("greeter")?;
        Some(resolved.targets.iter().map(|t| t.node.id.clone()).collect())
    }

    /// Waits until `done` holds, failing the test after a deadline far beyond what an in-process
    /// watch takes.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn follows_the_registry_by_applying_events_without_reading_it_again() {
        let counting = Arc::new(Counting::default());
        let registry: Arc<dyn Registry> = counting.clone();
        let ttl = Duration::from_secs(60);
        registry
            .register(&greeter("v1", "a", &[]), ttl)
            .await
            .unwrap();
        registry
            .register(&greeter("v1", "b", &[]), ttl)
            .await
            .unwrap();
        let cache = cache();
        resolve(&cache, &registry, "greeter").await.unwrap();
        assert_eq!(ids(&cache).unwrap(), ["a", "b"]);
        assert_eq!(counting.reads(), 1);

        registry
            .register(&greeter("v2", "c", &[]), ttl)
            .await
            .unwrap();
        until("c to appear", || ids(&cache).unwrap() == ["a", "b", "c"]).await;
        let version = |id: &str| {
            let resolved = cache.get("greeter")?;
            let target = resolved.targets.iter().find(|t| t.node.id == id)?;
            target.node.metadata.get(VERSION_METADATA).cloned()
        };
        assert_eq!(version("c").as_deref(), Some("v2"), "the event's version");

        // An update replaces the node: new metadata, its registration's version carried.
        registry
            .register(&greeter("v1", "b", &[("zone", "eu")]), ttl)
            .await
            .unwrap();
        let zone = |id: &str| {
            let resolved = cache.get("greeter")?;
            let target = resolved.targets.iter().find(|t| t.node.id == id)?;
            target.node.metadata.get("zone").cloned()
        };
        until("b's new metadata", || zone("b").as_deref() == Some("eu")).await;
        assert_eq!(version("b").as_deref(), Some("v1"));

        // A stopping node is passed over while others serve, and comes back when it serves.
        let stopping = [(HEALTH_METADATA, NOT_SERVING)];
        registry
            .register(&greeter("v1", "a", &stopping), ttl)
            .await
            .unwrap();
        until("a to be passed over", || ids(&cache).unwrap() == ["b", "c"]).await;

        registry.deregister(&greeter("v2", "c", &[])).await.unwrap();
        until("c to go", || ids(&cache).unwrap() == ["b"]).await;

        // Every node stopping: all of them rather than none.
        registry
            .register(&greeter("v1", "b", &stopping), ttl)
            .await
            .unwrap();
        until("stopping nodes when none serves", || {
            ids(&cache).unwrap() == ["a", "b"]
        })
        .await;
        registry
            .register(&greeter("v1", "a", &[]), ttl)
            .await
            .unwrap();
        until("a to serve again", || ids(&cache).unwrap() == ["a"]).await;

        // A node already known, reported again (as a watch may report what the read saw):
        // nothing changes, not even the entry's identity.
        let before = cache.get("greeter").unwrap();
        let known = counting.records.lock().unwrap()["a"].clone();
        counting
            .emit(Event {
                kind: EventKind::Create,
                service: known,
            })
            .await;
        until("the watch to take the event", || counting.drained()).await;
        assert!(Arc::ptr_eq(&before, &cache.get("greeter").unwrap()));

        assert_eq!(counting.reads(), 1, "the registry was read once");
        resolve(&cache, &registry, "greeter").await.unwrap();
        assert_eq!(counting.reads(), 1, "a resolve is answered from the cache");
    }

    /// A counting registry holding greeter node `a`.
    async fn counting_with_a() -> (Arc<Counting>, Arc<dyn Registry>) {
        let counting = Arc::new(Counting::default());
        let registry: Arc<dyn Registry> = counting.clone();
        registry
            .register(&greeter("v1", "a", &[]), Duration::from_secs(60))
            .await
            .unwrap();
        (counting, registry)
    }

    #[tokio::test]
    async fn a_watch_that_ends_forgets_the_entry() {
        let (counting, registry) = counting_with_a().await;
        let cache = cache();
        resolve(&cache, &registry, "greeter").await.unwrap();
        counting.close_watches();
        until("the entry to be forgotten", || ids(&cache).is_none()).await;
        resolve(&cache, &registry, "greeter").await.unwrap();
        assert_eq!(counting.reads(), 2, "resolved afresh");
        assert_eq!(ids(&cache).unwrap(), ["a"]);
    }

    #[tokio::test]
    async fn an_entry_is_retired_once_replaced_or_forgotten() {
        let (counting, registry) = counting_with_a().await;
        let ttl = Duration::from_secs(60);
        let cache = cache();
        let first = resolve(&cache, &registry, "greeter").await.unwrap();
        assert!(!first.retired());
        registry
            .register(&greeter("v1", "b", &[]), ttl)
            .await
            .unwrap();
        until("b to appear", || ids(&cache).unwrap() == ["a", "b"]).await;
        assert!(first.retired(), "replaced");
        let second = cache.get("greeter").unwrap();
        assert!(!second.retired());
        counting.close_watches();
        until("the entry to be forgotten", || ids(&cache).is_none()).await;
        assert!(second.retired(), "forgotten");
    }

    #[tokio::test]
    async fn a_rebuilt_node_keeps_its_metric_series_while_its_id_and_address_are_the_same() {
        let node = |id: &str, port: u16| Node {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            ..Node::default()
        };
        let nodes =
            |list: &[Node]| -> Nodes { list.iter().map(|n| (n.id.clone(), n.clone())).collect() };
        let cache = cache();
        let first = cache.build("greeter", &nodes(&[node("a", 1001), node("b", 1002)]), None);
        let changed = nodes(&[node("a", 1001), node("c", 1002)]);
        let second = cache.build("greeter", &changed, Some(&first));
        let calls = |resolved: &Resolved, i: usize| resolved.targets[i].metrics.clone();
        assert!(
            Arc::ptr_eq(&calls(&first, 0), &calls(&second, 0)),
            "a: kept"
        );
        assert!(
            !Arc::ptr_eq(&calls(&first, 1), &calls(&second, 1)),
            "c took b's address: its own series (its own `node` label)"
        );
    }

    #[test]
    fn events_apply_idempotently() {
        let mut nodes = Nodes::new();
        let create = |service: Service| Event {
            kind: EventKind::Create,
            service,
        };
        assert!(apply(
            &mut nodes,
            "greeter",
            create(greeter("v1", "a", &[]))
        ));
        assert!(!apply(
            &mut nodes,
            "greeter",
            create(greeter("v1", "a", &[]))
        ));
        // A node's own version wins over its registration's.
        let own = greeter("v1", "b", &[(VERSION_METADATA, "canary")]);
        assert!(apply(&mut nodes, "greeter", create(own)));
        assert_eq!(nodes["b"].metadata[VERSION_METADATA], "canary");
        let gone = Event {
            kind: EventKind::Delete,
            service: greeter("v1", "a", &[]),
        };
        assert!(apply(&mut nodes, "greeter", gone.clone()));
        assert!(!apply(&mut nodes, "greeter", gone));
        let mut other = greeter("v1", "c", &[]);
        other.name = "other".into();
        assert!(!apply(&mut nodes, "greeter", create(other)), "not ours");
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["b"]);
    }
}
