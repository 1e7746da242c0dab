//! Keeping the registration fresh: register at once, then every interval, logging failures once
//! per interval and going on (the registry may come back).

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::options::Options;
use crate::registry::{Registry, Service};

pub(super) async fn spawn(
    registry: Arc<dyn Registry>,
    service: Service,
    options: &Options,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (ttl, interval) = (options.register_ttl, options.register_interval);
    let mut healthy = register_once(&*registry, &service, ttl, true).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let ok = register_once(&*registry, &service, ttl, healthy).await;
            if ok && !healthy {
                tracing::info!(service = %service.name, registry = registry.name(), "registered again");
            }
            healthy = ok;
        }
    })
}

async fn register_once(
    registry: &dyn Registry,
    service: &Service,
    ttl: std::time::Duration,
    was_healthy: bool,
) -> bool {
    match registry.register(service, ttl).await {
        Ok(()) => true,
        Err(e) => {
            if was_healthy {
                tracing::error!(service = %service.name, registry = registry.name(), error = %e, "registration failed; retrying every interval");
            } else {
                tracing::warn!(service = %service.name, error = %e, "registration still failing");
            }
            false
        }
    }
}
