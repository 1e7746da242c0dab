//! The in-process registry: a map of nodes with deadlines, and a reaper task that removes lapsed
//! nodes and tells watchers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use micro_core::Result;
use micro_core::registry::{Event, EventKind, Node, Registry, Service, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often lapsed nodes are looked for.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// In-process [`Registry`]. Clones share the same registry.
#[derive(Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// One record per node, as etcd stores them.
    nodes: BTreeMap<Key, Record>,
    watchers: Vec<(Option<String>, mpsc::UnboundedSender<Result<Event>>)>,
    reaper_running: bool,
}

/// A record's key: (service name, version, node id).
type Key = (String, String, String);

/// One node's registration. The service part (metadata, endpoints: most of a record's size) is
/// shared with the other nodes of the same name and version registered with an equal one, so a
/// registry of 20 000 nodes over 4 000 services holds 4 000 copies of it, not 20 000.
struct Record {
    /// The service, without nodes.
    service: Arc<Service>,
    node: Node,
    deadline: Instant,
}

impl Record {
    /// The record as the registry API hands it out: the service with this one node.
    fn to_service(&self) -> Service {
        self.service.with_node(self.node.clone())
    }

    fn live(&self, now: Instant) -> bool {
        self.deadline > now
    }
}

impl Inner {
    /// `service` (without nodes), shared with the records of its name and version when theirs
    /// is the same: one comparison with a neighbour per registration.
    fn shared(&self, service: Service) -> Arc<Service> {
        let start = (service.name.clone(), service.version.clone(), String::new());
        match self.nodes.range(start..).next() {
            Some(((name, version, _), record))
                if *name == service.name
                    && *version == service.version
                    && *record.service == service =>
            {
                record.service.clone()
            }
            _ => Arc::new(service),
        }
    }

    fn notify(&mut self, kind: EventKind, service: Service) {
        self.watchers.retain(|(filter, sender)| {
            if filter.as_ref().is_some_and(|f| *f != service.name) {
                return !sender.is_closed();
            }
            sender
                .send(Ok(Event {
                    kind,
                    service: service.clone(),
                }))
                .is_ok()
        });
    }

    fn reap(&mut self, now: Instant) {
        let lapsed: Vec<_> = self
            .nodes
            .iter()
            .filter(|(_, record)| !record.live(now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in lapsed {
            if let Some(record) = self.nodes.remove(&key) {
                tracing::debug!(service = %key.0, node = %key.2, "node TTL lapsed");
                self.notify(EventKind::Delete, record.to_service());
            }
        }
    }
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryRegistry")
            .field("nodes", &inner.nodes.len())
            .field("watchers", &inner.watchers.len())
            .finish()
    }
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the reaper on first use; it ends when the last clone of the registry is dropped.
    fn ensure_reaper(&self, inner: &mut Inner) {
        if inner.reaper_running {
            return;
        }
        inner.reaper_running = true;
        let weak: Weak<Mutex<Inner>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reap(Instant::now());
            }
        });
    }

    /// The live nodes of the service `name`, or of every service, merged into one [`Service`]
    /// per version as [`merge_nodes`](micro_core::registry::merge_nodes) would (the first record's service part, nodes by id):
    /// straight from the records, which are kept in that order, so the shared service part is
    /// copied once per version rather than once per node. Lapsed nodes are passed over here;
    /// the reaper removes them and tells watchers.
    fn merged(&self, name: Option<&str>) -> Vec<Service> {
        let now = Instant::now();
        let inner = self.lock();
        let records: Box<dyn Iterator<Item = (&Key, &Record)>> = match name {
            None => Box::new(inner.nodes.iter()),
            Some(name) => Box::new(
                inner
                    .nodes
                    .range((name.to_string(), String::new(), String::new())..)
                    .take_while(move |((service, _, _), _)| service == name),
            ),
        };
        let mut services: Vec<Service> = Vec::new();
        for ((name, version, _), record) in records.filter(|(_, record)| record.live(now)) {
            match services.last_mut() {
                Some(last) if last.name == *name && last.version == *version => {
                    last.nodes.push(record.node.clone());
                }
                _ => services.push(record.to_service()),
            }
        }
        services
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn name(&self) -> &str {
        crate::NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        let deadline = Instant::now() + ttl;
        let mut inner = self.lock();
        self.ensure_reaper(&mut inner);
        let shared = inner.shared(service.without_nodes());
        for node in &service.nodes {
            let key = (
                service.name.clone(),
                service.version.clone(),
                node.id.clone(),
            );
            let record = Record {
                service: shared.clone(),
                node: node.clone(),
                deadline,
            };
            let previous = inner.nodes.insert(key, record);
            let changed = previous.map(|old| {
                (!Arc::ptr_eq(&old.service, &shared) && *old.service != *shared)
                    || old.node != *node
            });
            match changed {
                None => inner.notify(EventKind::Create, service.with_node(node.clone())),
                Some(true) => inner.notify(EventKind::Update, service.with_node(node.clone())),
                Some(false) => {}
            }
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        let mut inner = self.lock();
        for node in &service.nodes {
            let key = (
                service.name.clone(),
                service.version.clone(),
                node.id.clone(),
            );
            if let Some(record) = inner.nodes.remove(&key) {
                inner.notify(EventKind::Delete, record.to_service());
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        Ok(self.merged(Some(name)))
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        Ok(self.merged(None))
    }

    async fn list_names(&self) -> Result<Vec<String>> {
        let now = Instant::now();
        let inner = self.lock();
        // Keys sort by service name first: equal names are neighbours.
        let mut names: Vec<String> = Vec::new();
        for ((service, _, _), record) in &inner.nodes {
            if record.live(now) && names.last() != Some(service) {
                names.push(service.clone());
            }
        }
        Ok(names)
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        self.ensure_reaper(&mut inner);
        inner.watchers.push((service.map(String::from), sender));
        Ok(tokio_stream_from(receiver))
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> futures::stream::BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeter(node: &str, team: &str) -> Service {
        Service {
            name: "greeter".into(),
            version: "1.0.0".into(),
            metadata: [("team".to_string(), team.to_string())].into(),
            nodes: vec![Node {
                id: node.into(),
                address: format!("{node}:50051"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The shared service parts of the records of `greeter`, in node order.
    fn parts(registry: &MemoryRegistry) -> Vec<Arc<Service>> {
        registry
            .lock()
            .nodes
            .values()
            .map(|record| record.service.clone())
            .collect()
    }

    #[tokio::test]
    async fn nodes_of_one_registration_share_its_service_part() {
        let registry = MemoryRegistry::new();
        let ttl = Duration::from_secs(60);
        for node in ["a", "b", "c"] {
            registry.register(&greeter(node, "x"), ttl).await.unwrap();
        }
        let shared = parts(&registry);
        assert!(shared.iter().all(|part| Arc::ptr_eq(part, &shared[0])));
        assert!(shared[0].nodes.is_empty());
        let mut watch = registry.watch(Some("greeter")).await.unwrap();
        // A node re-registered with other metadata gets a part of its own, and an update.
        registry.register(&greeter("b", "y"), ttl).await.unwrap();
        let event = watch.next().await.unwrap().unwrap();
        assert_eq!(event.kind, EventKind::Update);
        assert_eq!(event.service, greeter("b", "y"));
        let parts = parts(&registry);
        assert!(Arc::ptr_eq(&parts[0], &parts[2]));
        assert!(!Arc::ptr_eq(&parts[0], &parts[1]));
        assert_eq!(parts[1].metadata["team"], "y");
        // Every node is read back, with its service.
        let read = registry.get_service("greeter").await.unwrap();
        let ids: Vec<&str> = read[0].nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!((read.len(), ids), (1, vec!["a", "b", "c"]));
        assert_eq!(read[0].endpoints, greeter("a", "x").endpoints);
    }
}
