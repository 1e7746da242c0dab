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
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost_reflect::{MethodDescriptor, ServiceDescriptor};
use tokio::sync::OnceCell;

use micro_core::client::{Filter, ServiceChannel};
use micro_core::dynamic;
use micro_core::registry::Watcher;
use micro_core::{Client, Registry};

use crate::error::ApiError;
use crate::metrics::{EndpointStats, Metrics};

/// The routable gRPC services of one registered service.
pub(crate) struct Schema {
    /// The registered service's name (shared with the labels of its calls).
    pub(crate) name: Arc<str>,
    /// Its gRPC services (reflection and health left out).
    pub(crate) services: Vec<ServiceDescriptor>,
    /// What calls of each method need, by service (as `services`) and method index.
    routes: Vec<Vec<Arc<Route>>>,
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

/// One method of a schema and what every call of it needs, computed once per schema rather
/// than per request.
pub(crate) struct Route {
    /// The method.
    pub(crate) method: MethodDescriptor,
    /// The endpoint label of its calls: the gRPC service's short name and the method
    /// (`Greeter.SayHello`).
    pub(crate) endpoint: Arc<str>,
    /// The gRPC path (`/greeter.v1.Greeter/SayHello`).
    pub(crate) path: http::uri::PathAndQuery,
    /// How its request is written from JSON to the wire, built on its first unary call.
    plan: OnceLock<dynamic::Plan>,
    /// How its reply is written from the wire to JSON, built on its first unary call.
    reply: OnceLock<Arc<dynamic::ReplyPlan>>,
    /// Its request counters, found by name on its first call.
    stats: OnceLock<Arc<EndpointStats>>,
}

impl Route {
    fn new(method: MethodDescriptor) -> Route {
        Route {
            endpoint: format!("{}.{}", method.parent_service().name(), method.name()).into(),
            path: dynamic::path(&method),
            plan: OnceLock::new(),
            reply: OnceLock::new(),
            stats: OnceLock::new(),
            method,
        }
    }

    /// The plan of the request message ([`dynamic::Plan`]).
    pub(crate) fn request_plan(&self) -> &dynamic::Plan {
        self.plan
            .get_or_init(|| dynamic::Plan::new(&self.method.input()))
    }

    /// The counters of its calls, as `metrics` keeps them for the registered service
    /// `service` (the one the route's schema is of).
    pub(crate) fn stats(&self, metrics: &Metrics, service: &str) -> &Arc<EndpointStats> {
        self.stats
            .get_or_init(|| metrics.endpoint(service, &self.endpoint))
    }

    /// The plan of the reply message ([`dynamic::ReplyPlan`]).
    pub(crate) fn reply_plan(&self) -> &Arc<dynamic::ReplyPlan> {
        self.reply
            .get_or_init(|| Arc::new(dynamic::ReplyPlan::new(&self.method.output())))
    }
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
    /// The route of `method`, one of this schema's methods (as [`dynamic::find_method`] finds
    /// them); `None` for a method of another schema.
    pub(crate) fn route(&self, method: &MethodDescriptor) -> Option<Arc<Route>> {
        let service = self
            .services
            .iter()
            .position(|s| s == method.parent_service())?;
        self.routes.get(service)?.get(method.index()).cloned()
    }

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
        let entry = {
            let mut entries = self.lock();
            // Looked up before `entry`, which would take an owned name on every request.
            match entries.get(service) {
                Some(entry) => entry.clone(),
                None => entries.entry(service.to_string()).or_default().clone(),
            }
        };
        // The fetch (reflection, the registry) is boxed: a future that carries it inline is
        // kilobytes, moved on every request though the schema is nearly always there already.
        let result = entry
            .get_or_try_init(|| Box::pin(self.fetch(service)))
            .await
            .cloned();
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
        let current = entries.get(&*schema.name).and_then(|entry| entry.get());
        if current.is_some_and(|current| Arc::ptr_eq(current, schema)) {
            entries.remove(&*schema.name);
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
        let routes = services
            .iter()
            .map(|s| s.methods().map(|m| Arc::new(Route::new(m))).collect())
            .collect();
        let schema = Arc::new(Schema {
            routes,
            channel: self.client.channel(service),
            name: service.into(),
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

    #[test]
    fn a_route_has_the_label_path_and_plans_of_its_method() {
        let dir = std::env::temp_dir().join(format!(
            "micro-route-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("g.proto"),
            "syntax = \"proto3\"; package g.v1;\n\
             message In { string name = 1; }\n\
             message Out { string message = 1; }\n\
             service Greeter { rpc SayHello(In) returns (Out); }\n",
        )
        .unwrap();
        let files = protox::compile(["g.proto"], [&dir]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(files).unwrap();
        let method = pool
            .get_service_by_name("g.v1.Greeter")
            .unwrap()
            .methods()
            .next()
            .unwrap();
        let route = Route::new(method.clone());
        assert_eq!(&*route.endpoint, "Greeter.SayHello");
        assert_eq!(route.path, dynamic::path(&method));
        assert_eq!(route.path.as_str(), "/g.v1.Greeter/SayHello");
        assert_eq!(route.request_plan().descriptor(), &method.input());
        assert_eq!(route.reply_plan().descriptor(), &method.output());
        assert!(!route.reply_plan().is_fallback());
        // Built once: the same plan on every call.
        assert!(std::ptr::eq(route.request_plan(), route.request_plan()));
        assert!(Arc::ptr_eq(route.reply_plan(), route.reply_plan()));
    }

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
