//! The watch loop behind each registry watcher: an etcd watch of the prefix turned into per-node
//! events, resumed after interruptions from the last revision seen, and resynced by listing
//! afresh when etcd compacted that revision away (or lost its data).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};
use futures::StreamExt;
use micro_core::Result;
use micro_core::registry::{Event, EventKind, Node, Service, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{PREFIX, decode, parse_key};
use crate::{AbortOnDrop, Conn, range, went_back};

/// The key prefix a watch of `service` (or of all) covers.
pub(super) fn watch_prefix(service: Option<&str>) -> String {
    match service {
        Some(name) => format!("{PREFIX}{name}/"),
        None => PREFIX.to_string(),
    }
}

/// A watcher of `prefix` that knows `kvs` as of `revision` and reports every change after it.
pub(super) fn start(conn: Conn, prefix: String, kvs: &[KeyValue], revision: i64) -> Watcher {
    let mut watch = WatchLoop {
        conn,
        prefix,
        known: BTreeMap::new(),
        revision,
    };
    for kv in kvs {
        watch.remember(kv);
    }
    let (sender, receiver) = mpsc::channel(256);
    let guard = AbortOnDrop(tokio::spawn(watch.run(sender)));
    let stream = futures::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
        receiver.recv().await.map(|item| (item, (receiver, guard)))
    });
    stream.boxed()
}

/// The task behind one watcher.
struct WatchLoop {
    conn: Conn,
    prefix: String,
    /// What was last seen under each key.
    known: BTreeMap<String, Seen>,
    /// The last revision seen.
    revision: i64,
}

/// What a watch keeps of a key: enough to tell a put that changes nothing, and to name the node
/// a delete removes when etcd cannot say (after a resync) — not the record itself, which a
/// whole-registry watch would hold for every node of the organisation (~5.7 KB each).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// A hash of the stored value.
    digest: u64,
    /// The version the record registered.
    version: String,
}

impl Seen {
    fn of(kv: &KeyValue) -> Self {
        /// Just the version of a record; the rest is skipped, not built.
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(default)]
            version: String,
        }
        let mut hasher = DefaultHasher::new();
        kv.value().hash(&mut hasher);
        let version = serde_json::from_slice::<Version>(kv.value())
            .map(|v| v.version)
            .unwrap_or_default();
        Seen {
            digest: hasher.finish(),
            version,
        }
    }
}

impl WatchLoop {
    fn remember(&mut self, kv: &KeyValue) {
        if let Ok(key) = kv.key_str() {
            self.known.insert(key.to_string(), Seen::of(kv));
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
            EventType::Put => {
                let seen = Seen::of(kv);
                let previous = self.known.insert(key, seen.clone());
                if previous.as_ref().is_some_and(|p| p.digest == seen.digest) {
                    return true;
                }
                let kind = match previous {
                    Some(_) => EventKind::Update,
                    None => EventKind::Create,
                };
                decode(kv).map(|service| Event { kind, service })
            }
            EventType::Delete => {
                let previous = self.known.remove(&key);
                let service = event
                    .prev_kv()
                    .and_then(|kv| decode(kv).ok())
                    .or_else(|| service_from_key(&key, previous.map(|p| p.version)));
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

    /// Lists the prefix afresh after a compaction and emits the difference, in the order of
    /// [`diff_nodes`] (after an error for each key that does not decode); false when the watcher
    /// is gone.
    async fn resync(&mut self, sender: &mpsc::Sender<Result<Event>>) -> bool {
        let (listed, revision) = loop {
            match range::list(&self.conn.client, &self.prefix).await {
                Ok(listed) => break listed,
                Err(e) => {
                    warn!(prefix = %self.prefix, error = %e, "registry resync failed; retrying");
                    tokio::select! {
                        _ = sender.closed() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        // The watch goes on from the listing's revision + 1.
        self.revision = revision;
        let mut now = BTreeMap::new();
        let (mut created, mut updated, mut items) = (Vec::new(), Vec::new(), Vec::new());
        for kv in &listed {
            let Ok(key) = kv.key_str() else { continue };
            let seen = Seen::of(kv);
            let kind = match self.known.get(key) {
                None => Some(EventKind::Create),
                Some(before) if before.digest != seen.digest => Some(EventKind::Update),
                Some(_) => None,
            };
            now.insert(key.to_string(), seen);
            let Some(kind) = kind else { continue };
            match decode(kv) {
                Ok(service) if kind == EventKind::Create => created.push(Event { kind, service }),
                Ok(service) => updated.push(Event { kind, service }),
                Err(e) => items.push(Err(e)),
            }
        }
        let deleted = self
            .known
            .iter()
            .filter(|(key, _)| !now.contains_key(*key))
            .filter_map(|(key, before)| service_from_key(key, Some(before.version.clone())))
            .map(|service| Event {
                kind: EventKind::Delete,
                service,
            });
        // `diff_nodes`' order: creates, updates, deletes (each in key order).
        let changes: Vec<Event> = created.into_iter().chain(updated).chain(deleted).collect();
        items.extend(changes.into_iter().map(Ok));
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

/// A service with just the node a key names (and its version, when known), for deletes whose
/// record etcd does not send.
fn service_from_key(key: &str, version: Option<String>) -> Option<Service> {
    let (name, id) = parse_key(key)?;
    let node = Node {
        id: id.to_string(),
        ..Default::default()
    };
    Some(Service {
        name: name.to_string(),
        version: version.unwrap_or_default(),
        nodes: vec![node],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_of_unseen_keys_name_the_node() {
        let service = service_from_key("/micro/registry/greeter/g-1", Some("2".into())).unwrap();
        assert_eq!(
            (
                service.name.as_str(),
                service.version.as_str(),
                service.nodes[0].id.as_str()
            ),
            ("greeter", "2", "g-1")
        );
        assert!(service_from_key("/micro/registry/greeter/", None).is_none());
        assert_eq!(watch_prefix(Some("greeter")), "/micro/registry/greeter/");
        assert_eq!(watch_prefix(None), PREFIX);
    }
}
