//! Keeping the registration fresh: register at once, then every interval. While registering
//! fails (the registry is down or not started yet), retry sooner, backing off from 250 ms up to
//! the interval, and log the failure at most once per interval until it recovers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::options::Options;
use crate::registry::{Registry, Service};

const RETRY_FIRST: Duration = Duration::from_millis(250);

/// The node metadata key a stopping server sets (to [`NOT_SERVING`]) just before it
/// deregisters, so that registry watchers see it stopping before it is gone.
pub const HEALTH_METADATA: &str = "health";
/// The value of [`HEALTH_METADATA`] on a node that is stopping: it answers NOT_SERVING to gRPC
/// health checks and is draining its in-flight calls.
pub const NOT_SERVING: &str = "not_serving";

/// Registers `service`'s node again with `health=not_serving` (the registration task is
/// stopped first). A failure is logged only: the deregistration that follows matters more.
pub(super) async fn announce_stopping(registry: &dyn Registry, service: &Service, ttl: Duration) {
    let mut stopping = service.clone();
    for node in &mut stopping.nodes {
        node.metadata
            .insert(HEALTH_METADATA.into(), NOT_SERVING.into());
    }
    if let Err(e) = registry.register(&stopping, ttl).await {
        tracing::warn!(service = %service.name, registry = registry.name(), error = %e, "cannot mark the node not serving in the registry; deregistering anyway");
    }
}

pub(super) async fn spawn(
    registry: Arc<dyn Registry>,
    service: Service,
    options: &Options,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (ttl, interval) = (options.register_ttl, options.register_interval);
    let mut log = FailureLog::new(interval);
    let mut healthy = log.outcome(&*registry, &service, registry.register(&service, ttl).await);
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
            healthy = log.outcome(&*registry, &service, registry.register(&service, ttl).await);
        }
    })
}

/// Logs failures at most once per interval, and the recovery once.
struct FailureLog {
    interval: Duration,
    last: Option<Instant>,
}

impl FailureLog {
    fn new(interval: Duration) -> Self {
        FailureLog {
            interval,
            last: None,
        }
    }

    fn outcome(
        &mut self,
        registry: &dyn Registry,
        service: &Service,
        result: crate::Result<()>,
    ) -> bool {
        match result {
            Ok(()) => {
                if self.last.take().is_some() {
                    tracing::info!(service = %service.name, registry = registry.name(), "registered again");
                }
                true
            }
            Err(e) => {
                if self.last.is_none_or(|at| at.elapsed() >= self.interval) {
                    tracing::error!(service = %service.name, registry = registry.name(), error = %e, "registration failed; retrying until the registry answers");
                    self.last = Some(Instant::now());
                } else {
                    tracing::debug!(service = %service.name, error = %e, "registration still failing");
                }
                false
            }
        }
    }
}
