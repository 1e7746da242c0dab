//! Resolved nodes per service, kept fresh by a registry watch.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;

use crate::registry::{Node, Registry};
use crate::{Error, Result};

/// The live nodes of one service and its round-robin position.
pub(super) struct Resolved {
    pub(super) nodes: Vec<Node>,
    pub(super) turn: AtomicUsize,
}

#[derive(Default)]
pub(super) struct Cache {
    services: Mutex<HashMap<String, Arc<Resolved>>>,
}

impl Cache {
    fn get(&self, service: &str) -> Option<Arc<Resolved>> {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
    }

    fn put(&self, service: &str, nodes: Vec<Node>) {
        let resolved = Arc::new(Resolved {
            nodes,
            turn: AtomicUsize::new(fastrand::usize(..)),
        });
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_string(), resolved);
    }

    fn forget(&self, service: &str) {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
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
        .flat_map(|s| s.nodes)
        .collect();
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
        match event {
            Some(Ok(_)) => match fetch(&*registry, &service).await {
                Ok(nodes) => {
                    tracing::debug!(%service, nodes = nodes.len(), "nodes changed");
                    cache.put(&service, nodes);
                }
                Err(e) => {
                    tracing::warn!(%service, error = %e, "cannot refresh nodes; resolving afresh on the next call");
                    cache.forget(&service);
                    return;
                }
            },
            Some(Err(e)) => {
                tracing::warn!(%service, error = %e, "registry watch failed; resolving afresh on the next call");
                cache.forget(&service);
                return;
            }
            None => {
                cache.forget(&service);
                return;
            }
        }
    }
}
