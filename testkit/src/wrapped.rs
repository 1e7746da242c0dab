//! A plugin value with a test's bookkeeping around it: something to run when it is dropped
//! (delete what the test made), and a look at every write and every topic used.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use micro_core::Result;
use micro_core::config::{Config, ConfigWatcher};
use micro_core::events::{ConsumeOptions, Event, EventStream, Events, Metadata};
use micro_core::registry::{Registry, Service, Watcher};
use micro_core::store::{Namespace, Query, Record, Store};
use serde_json::Value;

type WriteHook = Box<dyn Fn(&Record, &Namespace) + Send + Sync>;
type TopicHook = Box<dyn Fn(&str) + Send + Sync>;
type DropHook = Box<dyn FnOnce() + Send + Sync>;

/// `inner`, a [`Registry`], [`Store`], [`Config`] or [`Events`] as it is, plus a hook called
/// with every record written through it, one with every topic published to or consumed, and
/// one run when it is dropped (also when a test panics).
pub struct Wrapped<T> {
    /// The wrapped plugin value.
    pub inner: T,
    on_write: Option<WriteHook>,
    on_topic: Option<TopicHook>,
    on_drop: Option<DropHook>,
}

impl<T> std::fmt::Debug for Wrapped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wrapped")
            .field("on_write", &self.on_write.is_some())
            .field("on_topic", &self.on_topic.is_some())
            .field("on_drop", &self.on_drop.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Wrapped<T> {
    /// `inner`, with nothing around it yet.
    pub fn new(inner: T) -> Self {
        Wrapped {
            inner,
            on_write: None,
            on_topic: None,
            on_drop: None,
        }
    }

    /// Calls `hook` with every record written through it (a [`Store`]), before the write.
    pub fn on_write(mut self, hook: impl Fn(&Record, &Namespace) + Send + Sync + 'static) -> Self {
        self.on_write = Some(Box::new(hook));
        self
    }

    /// Calls `hook` with every topic published to or consumed through it (an [`Events`]),
    /// before the call.
    pub fn on_topic(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_topic = Some(Box::new(hook));
        self
    }

    /// Runs `hook` when dropped.
    pub fn on_drop(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(hook));
        self
    }
}

impl<T> Drop for Wrapped<T> {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.take() {
            hook();
        }
    }
}

#[async_trait]
impl<T: Registry> Registry for Wrapped<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        self.inner.register(service, ttl).await
    }
    async fn deregister(&self, service: &Service) -> Result<()> {
        self.inner.deregister(service).await
    }
    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        self.inner.get_service(name).await
    }
    async fn list_services(&self) -> Result<Vec<Service>> {
        self.inner.list_services().await
    }
    async fn list_names(&self) -> Result<Vec<String>> {
        self.inner.list_names().await
    }
    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        self.inner.watch(service).await
    }
}

#[async_trait]
impl<T: Store> Store for Wrapped<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        self.inner.read(key, query).await
    }
    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        if let Some(hook) = &self.on_write {
            hook(&record, namespace);
        }
        self.inner.write(record, namespace).await
    }
    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        self.inner.delete(key, namespace).await
    }
    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        self.inner.list(prefix, query).await
    }
}

#[async_trait]
impl<T: Config> Config for Wrapped<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, path: &str) -> Result<Option<Value>> {
        self.inner.get(path).await
    }
    async fn set(&self, path: &str, value: Value) -> Result<()> {
        self.inner.set(path, value).await
    }
    async fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path).await
    }
    async fn watch(&self, path: &str) -> Result<ConfigWatcher> {
        self.inner.watch(path).await
    }
}

#[async_trait]
impl<T: Events> Events for Wrapped<T> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn publish(&self, topic: &str, payload: Bytes, metadata: Metadata) -> Result<Event> {
        if let Some(hook) = &self.on_topic {
            hook(topic);
        }
        self.inner.publish(topic, payload, metadata).await
    }
    async fn consume(&self, topic: &str, options: ConsumeOptions) -> Result<EventStream> {
        if let Some(hook) = &self.on_topic {
            hook(topic);
        }
        self.inner.consume(topic, options).await
    }
}
