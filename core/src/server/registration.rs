//! Keeping the registration fresh: register at once, then every interval. While registering
//! fails (the registry is down or not started yet), retry sooner, backing off from 250 ms up to
//! the interval, and log the failure once, then quietly until it recovers.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::options::Options;
use crate::registry::{Registry, Service};

const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) async fn spawn(
    registry: Arc<dyn Registry>,
    service: Service,
    options: &Options,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (ttl, interval) = (options.register_ttl, options.register_interval);
    let mut healthy = register_once(&*registry, &service, ttl, true).await;
    tokio::spawn(async move {
        let mut backoff = RETRY_FIRST;
        loop {
            let wait = if healthy { interval } else { backoff };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = if healthy {
                RETRY_FIRST
            } else {
                (backoff * 2).min(interval)
            };
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
                tracing::error!(service = %service.name, registry = registry.name(), error = %e, "registration failed; retrying until the registry answers");
            } else {
                tracing::debug!(service = %service.name, error = %e, "registration still failing");
            }
            false
        }
    }
}
