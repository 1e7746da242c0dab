//! The etcd [`Config`]: one key per leaf under a prefix, watched into a local tree.
//!
//! The path `db.pool.max` is the key `/micro/config/db/pool/max`, holding the JSON of its value
//! (`10`). Objects are not stored as such: each leaf (scalar, array, `null` or empty object) has
//! its own key, so deleting a leaf prunes the parents it empties by itself, and a tree can be
//! edited with `etcdctl put /micro/config/greeter/greeting '"Hi"'`. A key holding a non-empty
//! object (a whole document put by hand) is read as that subtree.
//!
//! `set` replaces a subtree in one transaction (the old leaves deleted, the new ones put),
//! guarded by the revision it read so concurrent writers cannot interleave. `get` reads etcd
//! directly. A watch task keeps a local copy of the tree and feeds [`WatchHub`]. A value that is
//! not JSON is an error naming its key: `get` fails with it, watchers receive it, and the local
//! tree keeps the last good value of that key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use micro_core::config::{
    Config, ConfigWatcher, LeafTree, assemble, get_path, set_leaves, split_path,
};
use micro_core::{Error, Result};
use serde_json::Value;
use tracing::{info, warn};

use crate::{AbortOnDrop, Conn, EtcdTls, NAME, range};

/// Where the config tree lives unless told otherwise.
pub const PREFIX: &str = "/micro/config/";

const COMPONENT: &str = "config";

/// How often `set` retries when another writer changed the subtree between its read and write.
const SET_ATTEMPTS: usize = 16;

/// Dynamic configuration on etcd.
pub struct EtcdConfig {
    conn: Conn,
    prefix: String,
    tree: Arc<LeafTree>,
    _watch: AbortOnDrop,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.conn.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// Connects to etcd at `address` (endpoints comma-separated) with the tree under
    /// [`PREFIX`]. `https://` endpoints are verified against the system's roots; see
    /// [`connect_tls`](Self::connect_tls).
    pub async fn connect(address: &str) -> Result<Self> {
        Self::connect_tls_with_prefix(address, &EtcdTls::default(), PREFIX).await
    }

    /// Like [`connect`](Self::connect), dialing `https://` endpoints with `tls`.
    pub async fn connect_tls(address: &str, tls: &EtcdTls) -> Result<Self> {
        Self::connect_tls_with_prefix(address, tls, PREFIX).await
    }

    /// Connects to etcd at `address` with the tree under `prefix` (a `/` is added at its end
    /// when missing).
    pub async fn connect_with_prefix(address: &str, prefix: &str) -> Result<Self> {
        Self::connect_tls_with_prefix(address, &EtcdTls::default(), prefix).await
    }

    /// [`connect_with_prefix`](Self::connect_with_prefix) dialing `https://` endpoints with
    /// `tls`.
    pub async fn connect_tls_with_prefix(
        address: &str,
        tls: &EtcdTls,
        prefix: &str,
    ) -> Result<Self> {
        let conn = crate::connect(COMPONENT, address, tls).await?;
        Self::start(conn, prefix).await
    }

    /// The config on an already connected client, with the tree under `prefix`; `endpoints`
    /// names it in errors.
    pub async fn from_client(
        client: etcd_client::Client,
        endpoints: impl Into<String>,
        prefix: &str,
    ) -> Result<Self> {
        Self::start(
            Conn {
                client,
                endpoints: endpoints.into(),
            },
            prefix,
        )
        .await
    }

    async fn start(conn: Conn, prefix: &str) -> Result<Self> {
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let tree = Arc::new(LeafTree::default());
        let mut watch = WatchLoop {
            conn: conn.clone(),
            prefix: prefix.clone(),
            tree: tree.clone(),
            revision: 0,
        };
        watch
            .load()
            .await
            .map_err(|e| conn.err(COMPONENT, format!("read {prefix}"), e))?;
        let task = tokio::spawn(watch.run());
        Ok(EtcdConfig {
            conn,
            prefix,
            tree,
            _watch: AbortOnDrop(task),
        })
    }

    /// The key of a path's segments.
    fn key(&self, segments: &[&str]) -> String {
        format!("{}{}", self.prefix, segments.join("/"))
    }

    /// The keys that can hold `segments`: its ancestors, itself and the keys under it.
    fn reads(&self, segments: &[&str], keys_only: bool) -> Vec<TxnOp> {
        let mut ops = Vec::new();
        for depth in 1..segments.len() {
            ops.push(TxnOp::get(self.key(&segments[..depth]), None));
        }
        let mut under = GetOptions::new().with_prefix();
        if keys_only {
            under = under.with_keys_only();
        }
        if segments.is_empty() {
            ops.push(TxnOp::get(self.prefix.as_str(), Some(under)));
        } else {
            ops.push(TxnOp::get(self.key(segments), None));
            ops.push(TxnOp::get(format!("{}/", self.key(segments)), Some(under)));
        }
        ops
    }

    /// The key-values the reads of [`EtcdConfig::reads`] found, and the revision they saw.
    async fn read(
        &self,
        segments: &[&str],
        keys_only: bool,
        path: &str,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut client = self.conn.client.clone();
        let response = client
            .txn(Txn::new().and_then(self.reads(segments, keys_only)))
            .await
            .map_err(|e| {
                self.conn
                    .err(COMPONENT, format!("read `{path}` under {}", self.prefix), e)
            })?;
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        let mut kvs = Vec::new();
        for op in response.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                kvs.extend(get.kvs().iter().cloned());
            }
        }
        kvs.sort_by(|a, b| a.key().cmp(b.key()));
        Ok((kvs, revision))
    }
}

/// The path segments of `path`, each usable as one key segment.
fn segments(path: &str) -> Result<Vec<&str>> {
    let segments = split_path(path)?;
    if segments.iter().any(|s| s.contains('/')) {
        return Err(Error::invalid(
            "config path",
            format!("`{path}` has a `/` in a segment"),
        ));
    }
    Ok(segments)
}

/// The value a key holds, or an error naming the key.
fn decode(kv: &KeyValue) -> Result<Value> {
    serde_json::from_slice(kv.value()).map_err(|e| Error::Decode {
        what: format!("etcd config key `{}`", String::from_utf8_lossy(kv.key())),
        message: e.to_string(),
    })
}

/// The path segments of a key under `prefix`; `None` for keys that name no path (`a//b`).
fn key_segments<'a>(prefix: &str, key: &'a str) -> Option<Vec<&'a str>> {
    let rest = key.strip_prefix(prefix)?;
    let segments: Vec<&str> = rest.split('/').collect();
    (!segments.iter().any(|s| s.is_empty())).then_some(segments)
}

/// The tree of `leaves` (keys under `prefix`, in key order); keys that name no path are skipped.
fn tree_of<'a>(prefix: &str, leaves: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    assemble(
        leaves
            .into_iter()
            .filter_map(|(key, value)| Some((key_segments(prefix, key)?, value))),
    )
}

#[async_trait]
impl Config for EtcdConfig {
    fn name(&self) -> &str {
        NAME
    }

    async fn get(&self, path: &str) -> Result<Option<Value>> {
        let segments = segments(path)?;
        let (kvs, _) = self.read(&segments, false, path).await?;
        let mut leaves = Vec::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            leaves.push((key, decode(kv)?));
        }
        let root = tree_of(
            &self.prefix,
            leaves.iter().map(|(k, v)| (k.as_str(), v.clone())),
        );
        if segments.is_empty() {
            return Ok(Some(root));
        }
        Ok(get_path(&root, &segments).cloned())
    }

    async fn set(&self, path: &str, value: Value) -> Result<()> {
        let segments = segments(path)?;
        let mut puts = BTreeMap::new();
        for (leaf, value) in set_leaves(path, &segments, value)? {
            if let Some(bad) = leaf.iter().find(|s| s.contains('/')) {
                return Err(Error::invalid(
                    "config value",
                    format!("object key `{bad}` under `{path}` has a `/`"),
                ));
            }
            let refs: Vec<&str> = leaf.iter().map(String::as_str).collect();
            puts.insert(self.key(&refs), value.to_string());
        }
        for _ in 0..SET_ATTEMPTS {
            let (existing, revision) = self.read(&segments, true, path).await?;
            // Guard: nothing that can hold this path changed since the read.
            let mut guards = Vec::new();
            for depth in 1..segments.len() {
                guards.push(Compare::mod_revision(
                    self.key(&segments[..depth]),
                    CompareOp::Less,
                    revision + 1,
                ));
            }
            let under = if segments.is_empty() {
                self.prefix.clone()
            } else {
                guards.push(Compare::mod_revision(
                    self.key(&segments),
                    CompareOp::Less,
                    revision + 1,
                ));
                format!("{}/", self.key(&segments))
            };
            guards.push(Compare::mod_revision(under, CompareOp::Less, revision + 1).with_prefix());
            let mut ops = Vec::new();
            for kv in &existing {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                if !puts.contains_key(&key) {
                    ops.push(TxnOp::delete(key, None));
                }
            }
            for (key, value) in &puts {
                ops.push(TxnOp::put(key.as_str(), value.as_str(), None));
            }
            let mut client = self.conn.client.clone();
            let response = client
                .txn(Txn::new().when(guards).and_then(ops))
                .await
                .map_err(|e| {
                    self.conn
                        .err(COMPONENT, format!("set `{path}` under {}", self.prefix), e)
                })?;
            if response.succeeded() {
                return Ok(());
            }
        }
        Err(Error::backend_msg(
            COMPONENT,
            NAME,
            format!("set `{path}`: other writers kept changing it ({SET_ATTEMPTS} attempts)"),
        ))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let segments = segments(path)?;
        let under = DeleteOptions::new().with_prefix();
        let ops = if segments.is_empty() {
            vec![TxnOp::delete(self.prefix.as_str(), Some(under))]
        } else {
            vec![
                TxnOp::delete(self.key(&segments), None),
                TxnOp::delete(format!("{}/", self.key(&segments)), Some(under)),
            ]
        };
        let mut client = self.conn.client.clone();
        client.txn(Txn::new().and_then(ops)).await.map_err(|e| {
            self.conn.err(
                COMPONENT,
                format!("delete `{path}` under {}", self.prefix),
                e,
            )
        })?;
        Ok(())
    }

    async fn watch(&self, path: &str) -> Result<ConfigWatcher> {
        segments(path)?;
        self.tree.watch(path, self.get(path).await)
    }
}

/// The task keeping the local tree.
struct WatchLoop {
    conn: Conn,
    prefix: String,
    tree: Arc<LeafTree>,
    revision: i64,
}

impl WatchLoop {
    /// Reads the whole tree in pages ([`range`]), and watches on from there; malformed keys
    /// keep their last good value (none at start).
    async fn load(&mut self) -> std::result::Result<(), etcd_client::Error> {
        let (kvs, revision) = range::list(&self.conn.client, &self.prefix).await?;
        self.revision = revision;
        self.tree.load(
            kvs.iter()
                .filter_map(|kv| Some((self.leaf(kv)?, decode(kv)))),
        );
        Ok(())
    }

    async fn run(mut self) {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut client = self.conn.client.clone();
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(self.revision + 1);
            let mut stream = match client.watch(self.prefix.as_str(), Some(options)).await {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(prefix = %self.prefix, endpoints = %self.conn.endpoints, error = %e, "config watch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        delay = Duration::from_millis(100);
                        if crate::went_back(&response, self.revision) {
                            warn!(prefix = %self.prefix, "etcd's revision went back (restarted without its data?); reloading the tree");
                            self.reload().await;
                            break;
                        }
                        if response.compact_revision() > 0 {
                            warn!(prefix = %self.prefix, compacted = response.compact_revision(), "config watch compacted; reloading the tree");
                            self.reload().await;
                            break;
                        }
                        if response.canceled() {
                            warn!(prefix = %self.prefix, reason = response.cancel_reason(), "config watch cancelled; watching again");
                            break;
                        }
                        self.apply(response.events());
                    }
                    Ok(None) | Err(_) => {
                        warn!(prefix = %self.prefix, endpoints = %self.conn.endpoints, "config watch interrupted; resuming");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        break;
                    }
                }
            }
        }
    }

    /// Reloads the whole tree after a compaction and tells watchers what changed.
    async fn reload(&mut self) {
        loop {
            match self.load().await {
                Ok(()) => {
                    info!(prefix = %self.prefix, revision = self.revision, "config tree reloaded");
                    self.tree.publish();
                    return;
                }
                Err(e) => {
                    warn!(prefix = %self.prefix, error = %e, "config reload failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The path segments of a key, `None` for keys that name no path.
    fn leaf(&self, kv: &KeyValue) -> Option<Vec<String>> {
        let key = String::from_utf8_lossy(kv.key());
        let segments = key_segments(&self.prefix, &key)?;
        Some(segments.into_iter().map(String::from).collect())
    }

    /// Applies the events of one watch response, then tells watchers.
    fn apply(&mut self, events: &[etcd_client::Event]) {
        for event in events {
            let Some(kv) = event.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            let Some(leaf) = self.leaf(kv) else { continue };
            match event.event_type() {
                EventType::Put => self.tree.put(leaf, decode(kv)),
                EventType::Delete => self.tree.remove(&leaf),
            }
        }
        self.tree.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assembles_the_keys_under_the_prefix() {
        let tree = tree_of(
            "/p/",
            [
                ("/p/a/b", json!(1)),
                ("/p/a/c", json!("x")),
                ("/p/bad//k", json!(0)),
            ],
        );
        assert_eq!(tree, json!({"a": {"b": 1, "c": "x"}}));
    }

    #[test]
    fn refuses_slashes_in_paths() {
        assert!(segments("a/b.c").unwrap_err().to_string().contains("a/b.c"));
    }
}
