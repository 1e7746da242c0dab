//! The [`Registry`] on a JetStream key-value bucket: one key per node, TTLs as deadlines.
//!
//! A node of service `s` with id `n` is the KV key `<s>.<n>` of the bucket `micro-registry`
//! (each part in the form of [`encode_key`](crate::encode_key): `go.micro.greeter` becomes
//! `go=2Emicro=2Egreeter`), holding go-micro's JSON of the service with that one node — the
//! layout of go-micro's registries, with `.` where etcd has `/`.
//!
//! **TTL.** NATS 2.9 has no per-key TTL, so each registration writes the node's deadline (now +
//! TTL, milliseconds since the Unix epoch by the registering host's clock) in the header
//! `Micro-Expires-At`; a heartbeat (registering again) moves it on. Readers never return a node
//! past its deadline, each watcher deletes a node at its deadline by its own timer, and a
//! sweeper task (every [`DEFAULT_SWEEP_INTERVAL`]) deletes the records of nodes that lapsed,
//! each only if it was not registered again since it was read. Hosts' clocks should agree
//! (NTP): a skew shortens or lengthens TTLs by as much.
//!
//! **Watch.** Each watcher follows the keys of its service (`<s>.>`, or `>`) with an ordered
//! consumer delivering the last record of every key and then each change; it holds the nodes
//! it has reported and turns changes into events against them, so registering a node again with
//! the same record (a heartbeat) sends nothing. If its consumer fails for good, it follows
//! afresh and reports the difference ([`diff_nodes`]).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use micro_core::registry::{Event, EventKind, Registry, Service, Watcher, diff_nodes, merge_nodes};
use micro_core::{Error, Result};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::NAME;
use crate::conn::{AbortOnDrop, Conn, deadline_after, now_ms};
use crate::kv::{Bucket, Follow, Item, Op, deadline_headers, encode_key};

/// The bucket holding the registry unless told otherwise.
pub const DEFAULT_BUCKET: &str = "micro-registry";

/// How often the records of lapsed nodes are deleted, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

const COMPONENT: &str = "registry";

/// Service discovery in a JetStream key-value bucket. Dropping it stops its sweeper; nodes it
/// registered lapse at their deadlines.
pub struct NatsRegistry {
    bucket: Bucket,
    sweep_interval: Option<Duration>,
    sweeper: Option<AbortOnDrop>,
}

impl std::fmt::Debug for NatsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRegistry")
            .field("bucket", &self.bucket.name())
            .field("address", &self.bucket.conn.address)
            .field("sweep_interval", &self.sweep_interval)
            .finish_non_exhaustive()
    }
}

impl NatsRegistry {
    /// Connects to the NATS servers at `address` (comma-separated; blank:
    /// [`DEFAULT_ADDRESS`](crate::DEFAULT_ADDRESS)) with the registry in the bucket
    /// [`DEFAULT_BUCKET`], created when missing. Fails with an error naming the address when no
    /// server answers or JetStream is off. Starts the sweeper.
    pub async fn connect(address: &str) -> Result<Self> {
        Self::connect_with_bucket(address, DEFAULT_BUCKET).await
    }

    /// Like [`connect`](Self::connect), with the registry in the bucket `bucket` (letters,
    /// digits, `-` and `_`).
    pub async fn connect_with_bucket(address: &str, bucket: &str) -> Result<Self> {
        let conn = Conn::connect(COMPONENT, address).await?;
        Self::start(conn, bucket).await
    }

    /// The registry on a client the caller already has, in the bucket `bucket`; `address` names
    /// it in errors.
    pub async fn from_client(
        client: async_nats::Client,
        address: impl Into<String>,
        bucket: &str,
    ) -> Result<Self> {
        Self::start(Conn::from_client(client, address), bucket).await
    }

    async fn start(conn: Conn, name: &str) -> Result<Self> {
        let bucket = Bucket::create(&conn, COMPONENT, name).await?;
        Ok(NatsRegistry {
            bucket,
            sweep_interval: None,
            sweeper: None,
        }
        .with_sweep_interval(Some(DEFAULT_SWEEP_INTERVAL)))
    }

    /// Deletes the records of lapsed nodes every `interval`; `None` stops sweeping (readers and
    /// watchers still drop lapsed nodes, but their records stay in the bucket).
    pub fn with_sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweeper = None;
        self.sweep_interval = interval;
        if let Some(interval) = interval {
            let bucket = self.bucket.clone();
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    match bucket.sweep(">").await {
                        Ok(0) => {}
                        Ok(swept) => debug!(swept, bucket = %bucket.name(), "swept lapsed nodes"),
                        Err(e) => {
                            warn!(bucket = %bucket.name(), error = %e, "registry sweep failed; trying again later")
                        }
                    }
                }
            });
            self.sweeper = Some(AbortOnDrop(task));
        }
        self
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// Deletes the records of every lapsed node now; returns how many went. What the sweeper
    /// does on each tick.
    pub async fn sweep(&self) -> Result<usize> {
        self.bucket.sweep(">").await
    }

    async fn services_under(&self, filter: &str) -> Result<Vec<Service>> {
        let now = now_ms();
        let mut records = Vec::new();
        for item in self.bucket.scan(filter).await? {
            if item.live_at(now) {
                records.push(decode(&self.bucket, &item)?);
            }
        }
        Ok(merge_nodes(records))
    }
}

/// The KV key of `node` of `service`.
fn node_key(service: &str, node: &str) -> String {
    format!("{}.{}", encode_key(service), encode_key(node))
}

/// The keys a watch of `service` (or of all) covers.
fn watch_filter(service: Option<&str>) -> String {
    match service {
        Some(name) => format!("{}.>", encode_key(name)),
        None => ">".to_string(),
    }
}

/// The one-node service a record holds; an error naming the key when it does not decode.
fn decode(bucket: &Bucket, item: &Item) -> Result<Service> {
    serde_json::from_slice::<Service>(&item.value).map_err(|e| Error::Decode {
        what: format!(
            "nats registry key `{}` in bucket `{}`",
            item.key,
            bucket.name()
        ),
        message: e.to_string(),
    })
}

#[async_trait]
impl Registry for NatsRegistry {
    fn name(&self) -> &str {
        NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        let deadline = deadline_after(ttl);
        for node in &service.nodes {
            let value = serde_json::to_vec(&service.with_node(node.clone())).map_err(|e| {
                Error::Decode {
                    what: format!("service `{}`", service.name),
                    message: e.to_string(),
                }
            })?;
            let key = node_key(&service.name, &node.id);
            self.bucket
                .put(&key, deadline_headers(Some(deadline)), Bytes::from(value))
                .await?;
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        for node in &service.nodes {
            self.bucket
                .delete(&node_key(&service.name, &node.id), None)
                .await?;
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        if name.is_empty() {
            return Ok(Vec::new());
        }
        self.services_under(&watch_filter(Some(name))).await
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        self.services_under(">").await
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        if service.is_some_and(str::is_empty) {
            return Err(Error::invalid(
                "service",
                "the service name to watch is empty",
            ));
        }
        let filter = watch_filter(service);
        let mut follow = self.bucket.follow(&filter).await?;
        let snapshot = follow
            .snapshot()
            .await
            .map_err(|e| self.bucket.err("watch", &filter, e))?;
        let mut watch = WatchLoop {
            bucket: self.bucket.clone(),
            filter,
            held: BTreeMap::new(),
        };
        // What is registered now is the watcher's starting point: no events for it.
        watch.held = watch.live(&snapshot, now_ms()).0;
        let (sender, receiver) = mpsc::channel(256);
        let guard = AbortOnDrop(tokio::spawn(watch.run(follow, sender)));
        let stream =
            futures::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
                receiver.recv().await.map(|item| (item, (receiver, guard)))
            });
        Ok(stream.boxed())
    }
}

/// A node a watcher has reported.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    service: Service,
    deadline: Option<u64>,
}

/// The task behind one watcher.
struct WatchLoop {
    bucket: Bucket,
    filter: String,
    /// The nodes reported and not deleted since, by key.
    held: BTreeMap<String, Held>,
}

type Sender = mpsc::Sender<Result<Event>>;

impl WatchLoop {
    /// The live nodes among `items`, and the errors of those that do not decode.
    fn live(&self, items: &[Item], now: u64) -> (BTreeMap<String, Held>, Vec<Error>) {
        let mut nodes = BTreeMap::new();
        let mut errors = Vec::new();
        for item in items.iter().filter(|item| item.live_at(now)) {
            match decode(&self.bucket, item) {
                Ok(service) => {
                    nodes.insert(
                        item.key.clone(),
                        Held {
                            service,
                            deadline: item.expires_at(),
                        },
                    );
                }
                Err(e) => errors.push(e),
            }
        }
        (nodes, errors)
    }

    async fn run(mut self, mut follow: Follow, sender: Sender) {
        loop {
            let next_deadline = self.held.values().filter_map(|h| h.deadline).min();
            let lapse = async {
                match next_deadline {
                    Some(at) => {
                        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                        tokio::time::sleep(wait).await
                    }
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                _ = sender.closed() => return,
                _ = lapse => {
                    if !self.lapse(&sender).await {
                        return;
                    }
                    continue;
                }
                next = follow.next() => next,
            };
            match next {
                Some(Ok(item)) => {
                    if !self.apply(item, &sender).await {
                        return;
                    }
                }
                Some(Err(e)) if e.is_transient() => {
                    warn!(bucket = %self.bucket.name(), filter = %self.filter, error = %e, "registry watch interrupted; it resumes when the connection is back");
                }
                Some(Err(e)) => {
                    warn!(bucket = %self.bucket.name(), filter = %self.filter, error = %e, "registry watch failed; following afresh");
                    match self.resync(&sender).await {
                        Some(fresh) => follow = fresh,
                        None => return,
                    }
                }
                None => {
                    info!(bucket = %self.bucket.name(), "connection closed; registry watch ends");
                    return;
                }
            }
        }
    }

    /// Reports every held node past its deadline as deleted; false when the watcher is gone.
    async fn lapse(&mut self, sender: &Sender) -> bool {
        let now = now_ms();
        let lapsed: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.deadline.is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in lapsed {
            if let Some(held) = self.held.remove(&key) {
                let event = Event {
                    kind: EventKind::Delete,
                    service: held.service,
                };
                if sender.send(Ok(event)).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// Turns one change into an event; false when the watcher is gone.
    async fn apply(&mut self, item: Item, sender: &Sender) -> bool {
        let now = now_ms();
        let event = if item.op == Op::Delete || !item.live_at(now) {
            self.held.remove(&item.key).map(|held| {
                Ok(Event {
                    kind: EventKind::Delete,
                    service: held.service,
                })
            })
        } else {
            match decode(&self.bucket, &item) {
                Ok(service) => {
                    let fresh = Held {
                        service: service.clone(),
                        deadline: item.expires_at(),
                    };
                    match self.held.insert(item.key.clone(), fresh) {
                        None => Some(Ok(Event {
                            kind: EventKind::Create,
                            service,
                        })),
                        Some(old) if old.service == service => None,
                        Some(_) => Some(Ok(Event {
                            kind: EventKind::Update,
                            service,
                        })),
                    }
                }
                Err(e) => Some(Err(e)),
            }
        };
        match event {
            Some(event) => sender.send(event).await.is_ok(),
            None => true,
        }
    }

    /// Follows afresh (retrying until it can) and reports the difference from what the watcher
    /// held; `None` when the watcher is gone.
    async fn resync(&mut self, sender: &Sender) -> Option<Follow> {
        let mut delay = Duration::from_millis(100);
        let (follow, items) = loop {
            let attempt = async {
                let mut follow = self.bucket.follow(&self.filter).await?;
                let items = follow
                    .snapshot()
                    .await
                    .map_err(|e| self.bucket.err("watch", &self.filter, e))?;
                Ok::<_, Error>((follow, items))
            };
            match attempt.await {
                Ok(done) => break done,
                Err(e) => {
                    warn!(bucket = %self.bucket.name(), filter = %self.filter, error = %e, "registry resync failed; retrying");
                    tokio::select! {
                        _ = sender.closed() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        let (fresh, errors) = self.live(&items, now_ms());
        for error in errors {
            if sender.send(Err(error)).await.is_err() {
                return None;
            }
        }
        let services = |nodes: &BTreeMap<String, Held>| -> BTreeMap<String, Service> {
            nodes
                .iter()
                .map(|(key, held)| (key.clone(), held.service.clone()))
                .collect()
        };
        for event in diff_nodes(&services(&self.held), &services(&fresh)) {
            if sender.send(Ok(event)).await.is_err() {
                return None;
            }
        }
        info!(bucket = %self.bucket.name(), filter = %self.filter, nodes = fresh.len(), "registry watch resynced");
        self.held = fresh;
        Some(follow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_token_per_part() {
        assert_eq!(node_key("greeter", "greeter-1"), "greeter.greeter-1");
        assert_eq!(
            node_key("go.micro.greeter", "n.1"),
            "go=2Emicro=2Egreeter.n=2E1"
        );
        assert_eq!(watch_filter(Some("go.micro")), "go=2Emicro.>");
        assert_eq!(watch_filter(None), ">");
    }
}
