//! Resolved nodes per service, each with its channel, kept fresh by a registry watch.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::registry::{Node, Registry};
use crate::tls::{ClientTls, SECURE_METADATA};
use crate::{Error, Result};

/// The node metadata key the client files each node's registered service version under.
pub(super) const VERSION_METADATA: &str = "version";

/// A node and the channel to it (connecting lazily, reconnecting by itself).
pub(super) struct Target {
    pub(super) node: Node,
    /// The node's id, shared with every call's metrics labels.
    pub(super) id: Arc<str>,
    pub(super) channel: Channel,
}

impl Target {
    pub(super) fn new(node: Node, channel: Channel) -> Self {
        Target {
            id: node.id.as_str().into(),
            node,
            channel,
        }
    }
}

/// The live nodes of one service and its round-robin position.
pub(super) struct Resolved {
    pub(super) targets: Vec<Target>,
    pub(super) turn: AtomicUsize,
}

impl Resolved {
    /// `targets`, starting the round-robin at a random node.
    pub(super) fn new(targets: Vec<Target>) -> Self {
        Resolved {
            targets,
            turn: AtomicUsize::new(fastrand::usize(..)),
        }
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

    /// Replaces the nodes of `service`, keeping the channels of nodes still there.
    fn put(&self, service: &str, nodes: Vec<Node>) {
        let mut services = self.lock();
        let previous = services.get(service).cloned();
        let targets = nodes
            .into_iter()
            .filter_map(|node| {
                let kept = previous.as_ref().and_then(|p| p.targets.iter().find(|t| t.node.address == node.address)).map(|t| t.channel.clone());
                let channel = match kept {
                    Some(channel) => channel,
                    None => match self.dial(service, &node) {
                        Ok(channel) => channel,
                        Err(e) => {
                            tracing::warn!(%service, node = %node.id, address = %node.address, error = %e, "node address unusable; skipped");
                            return None;
                        }
                    },
                };
                Some(Target::new(node, channel))
            })
            .collect();
        services.insert(service.to_string(), Arc::new(Resolved::new(targets)));
    }

    /// A lazy channel to `node`: TLS when it is registered as secure, plaintext otherwise.
    fn dial(&self, service: &str, node: &Node) -> Result<Channel> {
        if node
            .metadata
            .get(SECURE_METADATA)
            .is_some_and(|v| v == "true")
        {
            let what = format!("node {} ({}) of `{service}`", node.id, node.address);
            return self.tls.channel(&node.address, &what);
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", node.address))
            .map_err(|e| Error::Option(format!("`{}` is not an address: {e}", node.address)))?;
        Ok(endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy())
    }

    fn forget(&self, service: &str) {
        self.lock().remove(service);
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
    cache.put(service, nodes);
    tokio::spawn(keep_fresh(
        Arc::downgrade(cache),
        registry.clone(),
        service.to_string(),
        watcher,
    ));
    cache
        .get(service)
        .ok_or_else(|| Error::NotFound(service.to_string()))
}

async fn fetch(registry: &dyn Registry, service: &str) -> Result<Vec<Node>> {
    let mut nodes: Vec<Node> = registry
        .get_service(service)
        .await?
        .into_iter()
        .flat_map(|s| {
            // Each node carries its registration's version, for filters (`Filter::version`).
            let version = s.version;
            s.nodes.into_iter().map(move |mut node| {
                node.metadata
                    .entry(VERSION_METADATA.to_string())
                    .or_insert_with(|| version.clone());
                node
            })
        })
        .collect();
    // A node marked stopping drains its calls; new ones go elsewhere while there is elsewhere.
    let stopping = |node: &Node| {
        node.metadata
            .get(crate::server::HEALTH_METADATA)
            .is_some_and(|v| v == crate::server::NOT_SERVING)
    };
    if nodes.iter().any(|node| !stopping(node)) {
        nodes.retain(|node| !stopping(node));
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}

/// Refreshes the entry on every event; forgets it when the watch fails or ends (the next call
/// resolves afresh); ends when the client is gone.
async fn keep_fresh(
    cache: Weak<Cache>,
    registry: Arc<dyn Registry>,
    service: String,
    mut watcher: crate::registry::Watcher,
) {
    loop {
        let event = watcher.next().await;
        let Some(cache) = cache.upgrade() else { return };
        let failure = match event {
            Some(Ok(_)) => match fetch(&*registry, &service).await {
                Ok(nodes) => {
                    tracing::debug!(%service, nodes = nodes.len(), "nodes changed");
                    cache.put(&service, nodes);
                    continue;
                }
                Err(e) => format!("cannot refresh nodes: {e}"),
            },
            Some(Err(e)) => format!("registry watch failed: {e}"),
            None => "registry watch ended".to_string(),
        };
        tracing::warn!(%service, "{failure}; resolving afresh on the next call");
        cache.forget(&service);
        return;
    }
}
