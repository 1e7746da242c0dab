//! The in-process registry: a map of nodes with deadlines, and a reaper task that removes lapsed
//! nodes and tells watchers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use micro_core::Result;
use micro_core::registry::{Event, EventKind, Registry, Service, Watcher, merge_nodes};
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
    /// Keyed by (service name, version, node id): one record per node, as etcd stores them.
    nodes: BTreeMap<(String, String, String), (Service, Instant)>,
    watchers: Vec<(Option<String>, mpsc::UnboundedSender<Result<Event>>)>,
    reaper_running: bool,
}

impl Inner {
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
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in lapsed {
            if let Some((record, _)) = self.nodes.remove(&key) {
                tracing::debug!(service = %record.name, node = %key.2, "node TTL lapsed");
                self.notify(EventKind::Delete, record);
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

    /// Copies of the live records of the service `name`, or of every service: a read of one
    /// service copies that service's records only. Lapsed nodes are passed over here; the
    /// reaper removes them and tells watchers.
    fn live(&self, name: Option<&str>) -> Vec<Service> {
        let now = Instant::now();
        let inner = self.lock();
        let live = |(_, (record, deadline)): (_, &(Service, Instant))| {
            (*deadline > now).then(|| record.clone())
        };
        match name {
            None => inner.nodes.iter().filter_map(live).collect(),
            Some(name) => inner
                .nodes
                .range((name.to_string(), String::new(), String::new())..)
                .take_while(|((service, _, _), _)| service == name)
                .filter_map(live)
                .collect(),
        }
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
        for node in &service.nodes {
            let record = service.with_node(node.clone());
            let key = (
                service.name.clone(),
                service.version.clone(),
                node.id.clone(),
            );
            let previous = inner.nodes.insert(key, (record.clone(), deadline));
            match previous {
                None => inner.notify(EventKind::Create, record),
                Some((old, _)) if old != record => inner.notify(EventKind::Update, record),
                Some(_) => {}
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
            if let Some((record, _)) = inner.nodes.remove(&key) {
                inner.notify(EventKind::Delete, record);
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        Ok(merge_nodes(self.live(Some(name))))
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        Ok(merge_nodes(self.live(None)))
    }

    async fn list_names(&self) -> Result<Vec<String>> {
        let now = Instant::now();
        let inner = self.lock();
        // Keys sort by service name first: equal names are neighbours.
        let mut names: Vec<String> = Vec::new();
        for ((service, _, _), (_, deadline)) in &inner.nodes {
            if *deadline > now && names.last() != Some(service) {
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
