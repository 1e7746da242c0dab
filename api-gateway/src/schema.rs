//! Descriptors per registered service: fetched by reflection from a live node on first use,
//! kept until the registry reports a change to that service. What is built from them (the
//! OpenAPI documents) is kept beside them and dropped with any of them.
//!
//! Each kept schema watches its own service, and only while it is kept: the gateway follows the
//! services it routes to, never the whole registry (at 100 000 nodes a whole-registry watch
//! held a decoded copy of every record, over a gigabyte).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost_reflect::ServiceDescriptor;
use tokio::sync::OnceCell;

use micro_core::client::{Filter, ServiceChannel};
use micro_core::registry::Watcher;
use micro_core::{Client, Registry};

use crate::error::ApiError;

/// The routable gRPC services of one registered service.
pub(crate) struct Schema {
    /// The registered service's name.
    name: String,
    /// Its gRPC services (reflection and health left out).
    pub(crate) services: Vec<ServiceDescriptor>,
    /// When the descriptors were fetched.
    pub(crate) fetched: Instant,
    /// The client channel to the service, made once rather than per request.
    pub(crate) channel: ServiceChannel,
    /// The gateway's client, for channels to one version of the service.
    client: Client,
    /// Channels to one version (`Micro-Version`), made on first use and dropped with the schema
    /// on any registry change to the service.
    versions: Mutex<HashMap<String, ServiceChannel>>,
    /// The task watching the service for changes, stopped with the schema. Set once the schema
    /// is built: the task holds only a weak reference, which must already upgrade.
    watch: std::sync::OnceLock<StopOnDrop>,
}

/// Aborts a task when dropped.
struct StopOnDrop(tokio::task::JoinHandle<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// At most this many versions of one service get a kept channel: versions come from requests,
/// and one asking for a new version each time must not grow the gateway.
const MAX_VERSION_CHANNELS: usize = 16;

impl Schema {
    /// The channel to the nodes of `version` (which `filter` selects), made once per version.
    pub(crate) fn versioned(&self, version: &str, filter: Filter) -> ServiceChannel {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = versions.get(version) {
            return channel.clone();
        }
        let channel = self.client.channel_with(&self.name, filter);
        if versions.len() < MAX_VERSION_CHANNELS {
            versions.insert(version.to_string(), channel.clone());
        }
        channel
    }
}

type Entry = Arc<OnceCell<Arc<Schema>>>;

/// A value built from the descriptors, kept by key.
type Derived = Arc<dyn Any + Send + Sync>;

/// The cache, shared by every request.
pub(crate) struct Schemas {
    /// Itself, for the watch tasks of its schemas.
    me: Weak<Schemas>,
    registry: Arc<dyn Registry>,
    client: Client,
    entries: Mutex<HashMap<String, Entry>>,
    /// Counts the schemas dropped: a value built at an older generation may be stale.
    generation: AtomicU64,
    /// Values built from the schemas (the OpenAPI documents), dropped with any schema.
    derived: Mutex<HashMap<String, Derived>>,
}

impl Schemas {
    /// An empty cache resolving through `registry` and calling through `client`.
    pub(crate) fn new(registry: Arc<dyn Registry>, client: Client) -> Arc<Self> {
        Arc::new_cyclic(|me| Schemas {
            me: me.clone(),
            registry,
            client,
            entries: Mutex::default(),
            generation: AtomicU64::new(0),
            derived: Mutex::default(),
        })
    }

    /// The schema of `service`; concurrent first requests share one fetch.
    pub(crate) async fn get(&self, service: &str) -> Result<Arc<Schema>, ApiError> {
        let entry = self.lock().entry(service.to_string()).or_default().clone();
        let result = entry.get_or_try_init(|| self.fetch(service)).await.cloned();
        if result.is_err() {
            // Do not keep entries for names that failed (unknown services must not pile up).
            // Nothing built from the schemas had this one: what was built stays good.
            self.lock().remove(service);
        }
        result
    }

    /// Drops the schema of `service`, and every value built from the schemas; the next request
    /// fetches it again.
    pub(crate) fn forget(&self, service: &str) {
        self.lock().remove(service);
        self.invalidate_derived();
    }

    /// Drops `schema` if it is still the one kept for its service (a late event of a schema
    /// dropped before must not drop its successor).
    fn forget_schema(&self, schema: &Arc<Schema>) {
        let mut entries = self.lock();
        let current = entries.get(&schema.name).and_then(|entry| entry.get());
        if current.is_some_and(|current| Arc::ptr_eq(current, schema)) {
            entries.remove(&schema.name);
            drop(entries);
            self.invalidate_derived();
        }
    }

    /// The current generation: it changes whenever a schema is dropped. Read it before
    /// building a value from the schemas, and [`keep`](Schemas::keep) the value with it.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The value kept under `key`, if no schema was dropped since it was built.
    pub(crate) fn derived<T: Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let value = self.lock_derived().get(key).cloned()?;
        value.downcast::<T>().ok()
    }

    /// Keeps `value`, built from the schemas of `generation`, under `key`; unless a schema was
    /// dropped since (the value may be stale: the next request builds it again).
    pub(crate) fn keep<T: Any + Send + Sync>(&self, key: &str, generation: u64, value: Arc<T>) {
        let mut derived = self.lock_derived();
        // Compared under the lock that `invalidate_derived` clears under.
        if self.generation() == generation {
            derived.insert(key.to_string(), value);
        }
    }

    fn invalidate_derived(&self) {
        let mut derived = self.lock_derived();
        self.generation.fetch_add(1, Ordering::SeqCst);
        derived.clear();
    }

    fn lock_derived(&self) -> std::sync::MutexGuard<'_, HashMap<String, Derived>> {
        self.derived.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self, service: &str) -> Result<Arc<Schema>, ApiError> {
        let unavailable = |e: micro_core::Error| {
            ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                format!("the registry cannot be read: {e}"),
            )
        };
        // Watched before it is read, so that no change between the two is missed.
        let watcher = self
            .registry
            .watch(Some(service))
            .await
            .map_err(unavailable)?;
        let registered = self
            .registry
            .get_service(service)
            .await
            .map_err(unavailable)?;
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
        let schema = Arc::new(Schema {
            channel: self.client.channel(service),
            name: service.to_string(),
            client: self.client.clone(),
            versions: Mutex::default(),
            services,
            fetched: Instant::now(),
            watch: std::sync::OnceLock::new(),
        });
        let task = forget_on_change(self.me.clone(), Arc::downgrade(&schema), watcher);
        let _ = schema.watch.set(StopOnDrop(tokio::spawn(task)));
        Ok(schema)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops `schema` at the first change the registry reports to its service, or when the watch
/// fails or ends (the next request fetches the schema, and watches, afresh).
async fn forget_on_change(schemas: Weak<Schemas>, schema: Weak<Schema>, mut watcher: Watcher) {
    let event = watcher.next().await;
    let (Some(schemas), Some(schema)) = (schemas.upgrade(), schema.upgrade()) else {
        return;
    };
    match event {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            tracing::warn!(service = %schema.name, error = %micro_core::with_causes(&e), "registry watch failed; the service's descriptors will be fetched again")
        }
        None => {
            tracing::warn!(service = %schema.name, "registry watch ended; the service's descriptors will be fetched again")
        }
    }
    schemas.forget_schema(&schema);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn derived_values_go_with_any_schema_and_never_come_back_stale() {
        let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
        let options = micro_core::Options::new("gateway")
            .load_from(["gateway"])
            .expect("options");
        let schemas = Schemas::new(registry.clone(), Client::new(&options, registry));
        let generation = schemas.generation();
        schemas.keep("doc", generation, Arc::new(String::from("v1")));
        assert_eq!(
            schemas.derived::<String>("doc").as_deref(),
            Some(&"v1".into())
        );
        assert!(
            schemas.derived::<u32>("doc").is_none(),
            "another type is not it"
        );
        schemas.forget("greeter");
        assert!(
            schemas.derived::<String>("doc").is_none(),
            "dropped with a schema"
        );
        // Built before the drop: not kept.
        schemas.keep("doc", generation, Arc::new(String::from("stale")));
        assert!(schemas.derived::<String>("doc").is_none());
        // A failed fetch is no change: what was built stays.
        let generation = schemas.generation();
        schemas.keep("doc", generation, Arc::new(String::from("v2")));
        assert!(schemas.get("nobody").await.is_err());
        assert_eq!(
            schemas.derived::<String>("doc").as_deref(),
            Some(&"v2".into())
        );
    }
}
