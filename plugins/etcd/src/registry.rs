//! The etcd [`Registry`]: one key per node, one lease per node, watch by prefix.
//!
//! A node lives at `/micro/registry/<service>/<node id>` holding the service JSON with that one
//! node (go-micro's layout). Its key is attached to a lease of the registration TTL; a keeper task
//! sends keep-alives every TTL/3 for as long as the node is refreshed (registered again) within
//! its TTL, so a node whose process stops refreshing lapses like in every registry. When etcd
//! reports the lease gone (TTL 0: etcd restarted without its data, a long partition, a revoke)
//! the keeper grants a new lease and puts the node again by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions,
};
use futures::StreamExt;
use micro_core::registry::{Event, EventKind, Node, Registry, Service, Watcher, merge_nodes};
use micro_core::{Error, Result};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{AbortOnDrop, Conn, NAME};

/// Where the registry keys live (go-micro's prefix).
pub const PREFIX: &str = "/micro/registry/";

const COMPONENT: &str = "registry";

/// Service discovery on etcd. Cheap to share behind an `Arc`; dropping it stops its keep-alive
/// tasks (the leases then lapse after their TTL).
pub struct EtcdRegistry {
    conn: Conn,
    nodes: Mutex<HashMap<String, Arc<NodeEntry>>>,
}

/// What this process registered under one key.
struct NodeEntry {
    state: tokio::sync::Mutex<NodeState>,
}

#[derive(Default)]
struct NodeState {
    /// The JSON stored under the key.
    value: String,
    /// The lease the key is attached to; 0 when none is held.
    lease: i64,
    /// The TTL asked for.
    ttl: Duration,
    /// When the node was last registered.
    refreshed: Option<Instant>,
    /// Set by deregister: the keeper must stop.
    removed: bool,
    /// The keeper's last failure to reach etcd, cleared once it gets through.
    failure: Option<String>,
    keeper: Option<AbortOnDrop>,
}

impl EtcdRegistry {
    /// Connects to etcd at `address` (endpoints comma-separated), failing with an error naming
    /// them when etcd does not answer.
    pub async fn connect(address: &str) -> Result<Self> {
        Ok(EtcdRegistry {
            conn: crate::connect(COMPONENT, address).await?,
            nodes: Mutex::default(),
        })
    }

    /// Like [`connect`](Self::connect), but an etcd that does not answer yet is logged as an
    /// error naming the endpoints instead of failing: registrations fail (naming them) until it
    /// answers, and a server's registration loop keeps trying. What the catalog uses.
    pub async fn connect_tolerant(address: &str) -> Result<Self> {
        Ok(EtcdRegistry {
            conn: crate::connect_checked(COMPONENT, address, false).await?,
            nodes: Mutex::default(),
        })
    }

    /// The registry on an already connected client; `endpoints` names it in errors.
    pub fn from_client(client: etcd_client::Client, endpoints: impl Into<String>) -> Self {
        EtcdRegistry {
            conn: Conn {
                client,
                endpoints: endpoints.into(),
            },
            nodes: Mutex::default(),
        }
    }

    fn entry(&self, key: &str) -> Arc<NodeEntry> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(NodeEntry {
                    state: Default::default(),
                })
            })
            .clone()
    }

    async fn register_node(&self, key: String, value: String, ttl: Duration) -> Result<()> {
        let entry = self.entry(&key);
        let mut state = entry.state.lock().await;
        state.refreshed = Some(Instant::now());
        state.removed = false;
        let same_ttl = state.ttl == ttl;
        if state.lease != 0 && same_ttl && state.value == value && state.failure.is_none() {
            // Unchanged: the keeper keeps the lease alive; no put, so watchers see nothing.
            // (While the keeper cannot reach etcd, the node is put again below instead, so the
            // caller learns of the failure.)
            ensure_keeper(&self.conn, &key, &entry, &mut state);
            return Ok(());
        }
        let mut client = self.conn.client.clone();
        let mut put_done = false;
        if state.lease != 0 && same_ttl {
            // Changed content, same TTL: put on the lease we hold (an Update for watchers).
            let options = PutOptions::new().with_lease(state.lease);
            match client
                .put(key.as_str(), value.as_str(), Some(options))
                .await
            {
                Ok(_) => put_done = true,
                Err(e) => {
                    debug!(%key, error = %e, "put on the held lease failed; granting a new one")
                }
            }
        }
        if !put_done {
            let lease = grant_and_put(&self.conn, &key, &value, ttl).await?;
            let old = std::mem::replace(&mut state.lease, lease);
            if old != 0 && old != lease {
                // The key now hangs on the new lease: revoking the old one leaves it be.
                let _ = client.lease_revoke(old).await;
            }
        }
        state.value = value;
        state.ttl = ttl;
        state.failure = None;
        ensure_keeper(&self.conn, &key, &entry, &mut state);
        Ok(())
    }

    async fn list_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let mut client = self.conn.client.clone();
        let mut response = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.conn.err(COMPONENT, format!("list {prefix}"), e))?;
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        Ok((response.take_kvs(), revision))
    }

    async fn services_under(&self, prefix: &str) -> Result<Vec<Service>> {
        let (kvs, _) = self.list_prefix(prefix).await?;
        let records = kvs.iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(merge_nodes(records))
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        // Dropping the entries drops their keepers, which aborts them.
        self.nodes
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The key of `node` of `service`.
fn node_key(service: &str, node: &str) -> String {
    format!("{PREFIX}{service}/{node}")
}

/// The lease TTL in whole seconds (etcd raises very short TTLs to its minimum, about 2 s).
fn ttl_secs(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000) as i64).max(1)
}

/// Grants a lease of `ttl` and puts `key` on it; returns the lease.
async fn grant_and_put(conn: &Conn, key: &str, value: &str, ttl: Duration) -> Result<i64> {
    let mut client = conn.client.clone();
    let lease = client
        .lease_grant(ttl_secs(ttl), None)
        .await
        .map_err(|e| conn.err(COMPONENT, format!("grant a lease for {key}"), e))?
        .id();
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        let _ = client.lease_revoke(lease).await;
        return Err(conn.err(COMPONENT, format!("put {key}"), e));
    }
    Ok(lease)
}

fn ensure_keeper(conn: &Conn, key: &str, entry: &Arc<NodeEntry>, state: &mut NodeState) {
    if state.keeper.as_ref().is_some_and(|k| !k.0.is_finished()) {
        return;
    }
    let task = tokio::spawn(keep_alive(
        conn.clone(),
        key.to_string(),
        Arc::downgrade(entry),
    ));
    state.keeper = Some(AbortOnDrop(task));
}

/// An open keep-alive stream for one lease.
struct Keeper {
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

enum Beat {
    /// etcd extended the lease.
    Alive,
    /// etcd says the lease no longer exists.
    Lost,
    /// etcd could not be asked (down, partitioned): try again next time.
    Failed(String),
}

/// Keeps the lease of one node alive while the node is refreshed within its TTL; puts it again
/// on a fresh lease when the lease is lost. Ends when the node is deregistered, lapses, or the
/// registry is dropped.
async fn keep_alive(conn: Conn, key: String, entry: Weak<NodeEntry>) {
    let mut open: Option<Keeper> = None;
    loop {
        let interval = {
            let Some(entry) = entry.upgrade() else { return };
            let state = entry.state.lock().await;
            (state.ttl / 3).max(Duration::from_millis(500))
        };
        tokio::time::sleep(interval).await;
        let Some(entry) = entry.upgrade() else { return };
        let mut state = entry.state.lock().await;
        if state.removed {
            return;
        }
        if state.refreshed.is_none_or(|at| at.elapsed() > state.ttl) {
            debug!(%key, "not refreshed within its TTL: letting its lease lapse");
            state.lease = 0;
            state.value.clear();
            return;
        }
        let beat = if state.lease == 0 {
            Beat::Lost
        } else {
            beat(&conn, state.lease, &mut open, interval).await
        };
        match beat {
            Beat::Alive => {
                if state.failure.take().is_some() {
                    info!(%key, "lease keep-alive works again");
                }
            }
            Beat::Lost => {
                warn!(%key, lease = state.lease, "registry lease lost; registering the node again");
                open = None;
                match grant_and_put(&conn, &key, &state.value, state.ttl).await {
                    Ok(lease) => {
                        info!(%key, lease, "node registered again on a new lease");
                        state.lease = lease;
                        state.failure = None;
                    }
                    Err(e) => {
                        warn!(%key, error = %e, "registering the node again failed; retrying");
                        state.lease = 0;
                        state.failure = Some(e.to_string());
                    }
                }
            }
            Beat::Failed(e) => {
                warn!(%key, endpoints = %conn.endpoints, error = %e, "lease keep-alive failed; retrying");
                open = None;
                state.failure = Some(e);
            }
        }
    }
}

/// Sends one keep-alive for `lease` and reads its answer.
async fn beat(conn: &Conn, lease: i64, open: &mut Option<Keeper>, wait: Duration) -> Beat {
    if open.as_ref().is_none_or(|k| k.lease != lease) {
        *open = None;
        let mut client = conn.client.clone();
        match tokio::time::timeout(wait, client.lease_keep_alive(lease)).await {
            // The first answer came with the stream: the lease is alive.
            Ok(Ok((keeper, stream))) => {
                *open = Some(Keeper {
                    lease,
                    keeper,
                    stream,
                });
                return Beat::Alive;
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                return Beat::Lost;
            }
            Ok(Err(e)) => return Beat::Failed(e.to_string()),
            Err(_) => return Beat::Failed(format!("no keep-alive answer within {wait:?}")),
        }
    }
    let Some(k) = open.as_mut() else {
        return Beat::Failed("no keep-alive stream".into());
    };
    if let Err(e) = k.keeper.keep_alive().await {
        *open = None;
        return Beat::Failed(e.to_string());
    }
    match tokio::time::timeout(wait, k.stream.message()).await {
        Ok(Ok(Some(response))) if response.ttl() > 0 => Beat::Alive,
        Ok(Ok(Some(_))) => Beat::Lost,
        Ok(Ok(None)) => {
            *open = None;
            Beat::Failed("keep-alive stream closed".into())
        }
        Ok(Err(e)) => {
            *open = None;
            Beat::Failed(e.to_string())
        }
        Err(_) => {
            *open = None;
            Beat::Failed(format!("no keep-alive answer within {wait:?}"))
        }
    }
}

/// The service and node id a key names.
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (service, node) = rest.split_once('/')?;
    (!service.is_empty() && !node.is_empty() && !node.contains('/')).then_some((service, node))
}

/// The one-node service a stored key holds; an error naming the key when it does not decode.
fn decode(kv: &KeyValue) -> Result<Service> {
    let key = String::from_utf8_lossy(kv.key());
    serde_json::from_slice::<Service>(kv.value()).map_err(|e| Error::Decode {
        what: format!("etcd registry key `{key}`"),
        message: e.to_string(),
    })
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn name(&self) -> &str {
        NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        for node in &service.nodes {
            let value = serde_json::to_string(&service.with_node(node.clone())).map_err(|e| {
                Error::Decode {
                    what: format!("service `{}`", service.name),
                    message: e.to_string(),
                }
            })?;
            self.register_node(node_key(&service.name, &node.id), value, ttl)
                .await?;
        }
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        for node in &service.nodes {
            let key = node_key(&service.name, &node.id);
            let entry = self
                .nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            let mut lease = 0;
            let _guard = match &entry {
                Some(entry) => {
                    let mut state = entry.state.lock().await;
                    state.removed = true;
                    lease = std::mem::take(&mut state.lease);
                    state.keeper = None;
                    Some(state)
                }
                None => None,
            };
            let mut client = self.conn.client.clone();
            client
                .delete(key.as_str(), None)
                .await
                .map_err(|e| self.conn.err(COMPONENT, format!("delete {key}"), e))?;
            if lease != 0 {
                let _ = client.lease_revoke(lease).await;
            }
        }
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        if name.is_empty() || name.contains('/') {
            return Ok(Vec::new());
        }
        self.services_under(&format!("{PREFIX}{name}/")).await
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        self.services_under(PREFIX).await
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        let prefix = watch_prefix(service);
        let (kvs, revision) = self.list_prefix(&prefix).await?;
        Ok(self.start_watch(prefix, &kvs, revision))
    }
}

impl EtcdRegistry {
    /// A watcher that takes itself to have seen every change up to `revision` with nothing
    /// registered, as after a long interruption. For tests of the resync path (a compacted
    /// `revision`): not part of the API.
    #[doc(hidden)]
    pub fn watch_from_revision(&self, service: Option<&str>, revision: i64) -> Watcher {
        self.start_watch(watch_prefix(service), &[], revision)
    }

    fn start_watch(&self, prefix: String, kvs: &[KeyValue], revision: i64) -> Watcher {
        let mut watch = WatchLoop {
            conn: self.conn.clone(),
            prefix,
            known: BTreeMap::new(),
            revision,
        };
        for kv in kvs {
            watch.remember(kv);
        }
        let (sender, receiver) = mpsc::channel(256);
        let guard = AbortOnDrop(tokio::spawn(watch.run(sender)));
        let stream =
            futures::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
                receiver.recv().await.map(|item| (item, (receiver, guard)))
            });
        stream.boxed()
    }
}

/// The key prefix a watch of `service` (or of all) covers.
fn watch_prefix(service: Option<&str>) -> String {
    match service {
        Some(name) => format!("{PREFIX}{name}/"),
        None => PREFIX.to_string(),
    }
}

/// The task behind one watcher.
struct WatchLoop {
    conn: Conn,
    prefix: String,
    /// The last service seen under each key, to fill events whose `prev_kv` is missing.
    known: BTreeMap<String, Service>,
    /// The last revision seen.
    revision: i64,
}

impl WatchLoop {
    fn remember(&mut self, kv: &KeyValue) {
        if let (Ok(service), Ok(key)) = (decode(kv), kv.key_str()) {
            self.known.insert(key.to_string(), service);
        }
    }

    async fn run(mut self, sender: mpsc::Sender<Result<Event>>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut client = self.conn.client.clone();
            let options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(self.revision + 1);
            let mut stream = match client.watch(self.prefix.as_str(), Some(options)).await {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(prefix = %self.prefix, endpoints = %self.conn.endpoints, error = %e, "registry watch failed; retrying");
                    tokio::select! {
                        _ = sender.closed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    _ = sender.closed() => return,
                    message = stream.message() => message,
                };
                match message {
                    Ok(Some(response)) => {
                        delay = Duration::from_millis(100);
                        if went_back(&response, self.revision) {
                            warn!(prefix = %self.prefix, "etcd's revision went back (restarted without its data?); resyncing");
                            if !self.resync(&sender).await {
                                return;
                            }
                            break;
                        }
                        if response.compact_revision() > 0 {
                            warn!(prefix = %self.prefix, compacted = response.compact_revision(), "registry watch compacted; resyncing");
                            if !self.resync(&sender).await {
                                return;
                            }
                            break;
                        }
                        if response.canceled() {
                            warn!(prefix = %self.prefix, reason = response.cancel_reason(), "registry watch cancelled; watching again");
                            break;
                        }
                        for event in response.events() {
                            if !self.apply(event, &sender).await {
                                return;
                            }
                        }
                        if let Some(header) = response.header() {
                            // Progress notifications move the revision on too.
                            if response.events().is_empty() && header.revision() > self.revision {
                                self.revision = header.revision();
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        warn!(prefix = %self.prefix, endpoints = %self.conn.endpoints, "registry watch interrupted; resuming");
                        tokio::select! {
                            _ = sender.closed() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                        break;
                    }
                }
            }
        }
    }

    /// Turns one etcd event into a registry event; false when the watcher is gone.
    async fn apply(
        &mut self,
        event: &etcd_client::Event,
        sender: &mpsc::Sender<Result<Event>>,
    ) -> bool {
        let Some(kv) = event.kv() else { return true };
        self.revision = self.revision.max(kv.mod_revision());
        let Ok(key) = kv.key_str() else { return true };
        let key = key.to_string();
        let item = match event.event_type() {
            EventType::Put => match decode(kv) {
                Ok(service) => {
                    let previous = self.known.insert(key, service.clone());
                    match previous {
                        Some(previous) if previous == service => return true,
                        Some(_) => Ok(Event {
                            kind: EventKind::Update,
                            service,
                        }),
                        None => Ok(Event {
                            kind: EventKind::Create,
                            service,
                        }),
                    }
                }
                Err(e) => Err(e),
            },
            EventType::Delete => {
                let previous = self.known.remove(&key);
                let service = previous
                    .or_else(|| event.prev_kv().and_then(|kv| decode(kv).ok()))
                    .or_else(|| service_from_key(&key));
                match service {
                    Some(service) => Ok(Event {
                        kind: EventKind::Delete,
                        service,
                    }),
                    None => return true,
                }
            }
        };
        sender.send(item).await.is_ok()
    }

    /// Lists the prefix afresh after a compaction and emits the difference; false when the
    /// watcher is gone.
    async fn resync(&mut self, sender: &mpsc::Sender<Result<Event>>) -> bool {
        let mut client = self.conn.client.clone();
        let listed = loop {
            match client
                .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(response) => break response,
                Err(e) => {
                    warn!(prefix = %self.prefix, error = %e, "registry resync failed; retrying");
                    tokio::select! {
                        _ = sender.closed() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        self.revision = listed
            .header()
            .map(|h| h.revision())
            .unwrap_or(self.revision);
        let mut now = BTreeMap::new();
        let mut items = Vec::new();
        for kv in listed.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            match decode(kv) {
                Ok(service) => {
                    now.insert(key.to_string(), service);
                }
                Err(e) => items.push(Err(e)),
            }
        }
        for (key, service) in &now {
            match self.known.get(key) {
                None => items.push(Ok(Event {
                    kind: EventKind::Create,
                    service: service.clone(),
                })),
                Some(before) if before != service => items.push(Ok(Event {
                    kind: EventKind::Update,
                    service: service.clone(),
                })),
                Some(_) => {}
            }
        }
        for (key, service) in &self.known {
            if !now.contains_key(key) {
                items.push(Ok(Event {
                    kind: EventKind::Delete,
                    service: service.clone(),
                }));
            }
        }
        info!(prefix = %self.prefix, revision = self.revision, changes = items.len(), "registry watch resynced");
        self.known = now;
        for item in items {
            if sender.send(item).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Whether a new watch's first answer shows a revision older than one already seen: etcd lost
/// its data, and watching from the old revision would miss everything until it catches up.
pub(crate) fn went_back(response: &etcd_client::WatchResponse, seen: i64) -> bool {
    response.created() && response.header().is_some_and(|h| h.revision() < seen)
}

/// A service with just the node a key names, for deletes of keys never seen.
fn service_from_key(key: &str) -> Option<Service> {
    let (name, id) = parse_key(key)?;
    let node = Node {
        id: id.to_string(),
        ..Default::default()
    };
    Some(Service {
        name: name.to_string(),
        nodes: vec![node],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys() {
        assert_eq!(
            parse_key("/micro/registry/greeter/g-1"),
            Some(("greeter", "g-1"))
        );
        assert_eq!(parse_key("/micro/registry/greeter/"), None);
        assert_eq!(parse_key("/other/greeter/g-1"), None);
        let service = service_from_key("/micro/registry/greeter/g-1").unwrap();
        assert_eq!(service.nodes[0].id, "g-1");
    }

    #[test]
    fn rounds_ttls_up() {
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_secs(90)), 90);
    }
}
