//! Descriptors per registered service: fetched by reflection from a live node on first use,
//! kept until the registry reports a change to that service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost_reflect::ServiceDescriptor;
use tokio::sync::OnceCell;

use micro_core::{Client, Registry};

use crate::error::ApiError;

/// The routable gRPC services of one registered service.
pub(crate) struct Schema {
    /// Its gRPC services (reflection and health left out).
    pub(crate) services: Vec<ServiceDescriptor>,
    /// When the descriptors were fetched.
    pub(crate) fetched: Instant,
    /// The client channel to the service, made once rather than per request.
    pub(crate) channel: micro_core::client::ServiceChannel,
}

type Entry = Arc<OnceCell<Arc<Schema>>>;

/// The cache, shared by every request.
pub(crate) struct Schemas {
    registry: Arc<dyn Registry>,
    client: Client,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Schemas {
    /// An empty cache resolving through `registry` and calling through `client`.
    pub(crate) fn new(registry: Arc<dyn Registry>, client: Client) -> Arc<Self> {
        let schemas = Arc::new(Schemas {
            registry,
            client,
            entries: Mutex::default(),
        });
        tokio::spawn(invalidate_on_change(Arc::downgrade(&schemas)));
        schemas
    }

    /// The schema of `service`; concurrent first requests share one fetch.
    pub(crate) async fn get(&self, service: &str) -> Result<Arc<Schema>, ApiError> {
        let entry = self.lock().entry(service.to_string()).or_default().clone();
        let result = entry.get_or_try_init(|| self.fetch(service)).await.cloned();
        if result.is_err() {
            // Do not keep entries for names that failed (unknown services must not pile up).
            self.forget(service);
        }
        result
    }

    /// Drops the schema of `service`; the next request fetches it again.
    pub(crate) fn forget(&self, service: &str) {
        self.lock().remove(service);
    }

    async fn fetch(&self, service: &str) -> Result<Arc<Schema>, ApiError> {
        let registered = self.registry.get_service(service).await.map_err(|e| {
            ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                format!("the registry cannot be read: {e}"),
            )
        })?;
        if registered.is_empty() {
            return Err(ApiError::not_found(format!("unknown service `{service}`")));
        }
        if registered.iter().all(|s| s.nodes.is_empty()) {
            return Err(ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                format!("service `{service}` is registered but has no live node"),
            ));
        }
        let channel = self.client.channel(service);
        let (pool, names) = tokio::time::timeout(
            Duration::from_secs(10),
            micro_core::dynamic::reflection::fetch(channel),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                tonic::Code::DeadlineExceeded,
                format!("fetching the descriptors of `{service}` timed out"),
            )
        })?
        .map_err(|status| {
            let mut error = ApiError::from_status(&status);
            error.message = format!(
                "cannot fetch the descriptors of `{service}` by reflection: {}",
                status.message()
            );
            error
        })?;
        let services: Vec<ServiceDescriptor> = names
            .iter()
            .filter_map(|n| pool.get_service_by_name(n))
            .collect();
        tracing::info!(%service, grpc_services = ?names, "descriptors fetched by reflection");
        Ok(Arc::new(Schema {
            channel: self.client.channel(service),
            services,
            fetched: Instant::now(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Watches every service and drops its schema on any change; on a watch failure drops all and
/// watches again.
async fn invalidate_on_change(schemas: std::sync::Weak<Schemas>) {
    loop {
        let Some(registry) = schemas.upgrade().map(|s| s.registry.clone()) else {
            return;
        };
        match registry.watch(None).await {
            Ok(mut watcher) => {
                while let Some(event) = watcher.next().await {
                    let Some(schemas) = schemas.upgrade() else {
                        return;
                    };
                    match event {
                        Ok(event) => schemas.forget(&event.service.name),
                        Err(e) => {
                            tracing::warn!(error = %e, "registry watch failed; dropping every cached schema");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the registry; retrying in 1s"),
        }
        if let Some(schemas) = schemas.upgrade() {
            schemas.lock().clear();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
