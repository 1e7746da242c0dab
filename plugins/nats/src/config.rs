//! The [`Config`] on a JetStream key-value bucket: one key per leaf, followed into a local tree.
//!
//! The path `db.pool.max` is the KV key `db.pool.max` of the bucket `micro-config`, holding the
//! JSON of its value (`10`); each segment is in the form of [`encode_key`](crate::encode_key),
//! so an object key with a `.` or a space is still one segment (`a.b` is `a=2Eb`). Objects are
//! not stored as such: each leaf (scalar, array, `null` or empty object) has its own key, as
//! core's [`flatten`] and [`assemble`] cut a tree, so deleting a leaf prunes the parents it
//! empties by itself, and a tree can be edited with `nats kv put micro-config greeter.greeting
//! '"Hi"'`.
//!
//! `get` reads the bucket, so a write is seen by the next `get`. A task follows the bucket
//! (an ordered consumer, resumed by the client after reconnections) into a local tree and feeds
//! [`WatchHub`]; it tells watchers once it has applied every change the server had pending, so
//! the leaves of one `set` usually reach watchers together. A `set` of several leaves is several
//! writes, not one transaction: the new leaves are written first, then the old ones deleted, so
//! a reader never sees the subtree missing. A value that is not JSON is an error naming its key:
//! `get` fails with it, watchers receive it, and the local tree keeps the last good value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use micro_core::config::{
    Config, ConfigWatcher, LeafTree, assemble, get_path, set_leaves, split_path,
};
use micro_core::{Error, Result};
use serde_json::Value;
use tracing::{info, warn};

use crate::NAME;
use crate::conn::{AbortOnDrop, Conn};
use crate::kv::{Bucket, Follow, Item, Op, decode_key, encode_key};

/// The bucket holding the tree unless told otherwise.
pub const DEFAULT_BUCKET: &str = "micro-config";

const COMPONENT: &str = "config";

/// Dynamic configuration in a JetStream key-value bucket.
pub struct NatsConfig {
    bucket: Bucket,
    tree: Arc<LeafTree>,
    _follow: AbortOnDrop,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("bucket", &self.bucket.name())
            .field("address", &self.bucket.conn.address)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// Connects to the NATS servers at `address` (comma-separated; blank:
    /// [`DEFAULT_ADDRESS`](crate::DEFAULT_ADDRESS)) with the tree in the bucket
    /// [`DEFAULT_BUCKET`], created when missing. Fails with an error naming the address when no
    /// server answers or JetStream is off.
    pub async fn connect(address: &str) -> Result<Self> {
        Self::connect_with_bucket(address, DEFAULT_BUCKET).await
    }

    /// Like [`connect`](Self::connect), with the tree in the bucket `bucket` (letters, digits,
    /// `-` and `_`).
    pub async fn connect_with_bucket(address: &str, bucket: &str) -> Result<Self> {
        let conn = Conn::connect(COMPONENT, address).await?;
        Self::start(conn, bucket).await
    }

    /// The config on a client the caller already has, in the bucket `bucket`; `address` names
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
        let tree = Arc::new(LeafTree::default());
        let mut follow = FollowLoop {
            bucket: bucket.clone(),
            tree: tree.clone(),
        };
        let stream = follow.load().await?;
        let task = tokio::spawn(follow.run(stream));
        Ok(NatsConfig {
            bucket,
            tree,
            _follow: AbortOnDrop(task),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// The leaves that can hold `segments` (its ancestors, itself, and the keys under it), or
    /// only itself and under it with `ancestors` false, in key order.
    async fn read(&self, segments: &[&str], ancestors: bool) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let from = if ancestors { 1 } else { segments.len().max(1) };
        for depth in from..=segments.len() {
            if let Some(item) = self.bucket.get(&key_of(&segments[..depth])).await? {
                items.push(item);
            }
        }
        let filter = if segments.is_empty() {
            ">".to_string()
        } else {
            format!("{}.>", key_of(segments))
        };
        items.extend(self.bucket.scan(&filter).await?);
        items.retain(|item| item.op == Op::Put);
        Ok(items)
    }
}

/// The KV key of a path's segments.
fn key_of<S: AsRef<str>>(segments: &[S]) -> String {
    segments
        .iter()
        .map(|s| encode_key(s.as_ref()))
        .collect::<Vec<_>>()
        .join(".")
}

/// The path segments a KV key stands for; `None` for a key this config did not write.
fn segments_of(key: &str) -> Option<Vec<String>> {
    key.split('.').map(decode_key).collect()
}

/// The value a key holds, or an error naming the key.
fn decode(bucket: &Bucket, key: &str, value: &Bytes) -> Result<Value> {
    serde_json::from_slice(value).map_err(|e| Error::Decode {
        what: format!("nats config key `{key}` in bucket `{}`", bucket.name()),
        message: e.to_string(),
    })
}

#[async_trait]
impl Config for NatsConfig {
    fn name(&self) -> &str {
        NAME
    }

    async fn get(&self, path: &str) -> Result<Option<Value>> {
        let segments = split_path(path)?;
        let mut leaves = Vec::new();
        for item in self.read(&segments, true).await? {
            if let Some(leaf) = segments_of(&item.key) {
                leaves.push((leaf, decode(&self.bucket, &item.key, &item.value)?));
            }
        }
        // Ancestors before descendants, as the local tree orders them.
        leaves.sort_by(|a, b| a.0.cmp(&b.0));
        let root = assemble(leaves);
        if segments.is_empty() {
            return Ok(Some(root));
        }
        Ok(get_path(&root, &segments).cloned())
    }

    async fn set(&self, path: &str, value: Value) -> Result<()> {
        let segments = split_path(path)?;
        let mut puts = BTreeMap::new();
        for (leaf, value) in set_leaves(path, &segments, value)? {
            puts.insert(key_of(&leaf), Bytes::from(value.to_string()));
        }
        let existing = self.read(&segments, true).await?;
        for (key, value) in &puts {
            self.bucket
                .kv
                .put(key.as_str(), value.clone())
                .await
                .map_err(|e| self.bucket.err(&format!("set `{path}`: write"), key, e))?;
        }
        for item in existing {
            if !puts.contains_key(&item.key) {
                self.bucket.delete(&item.key, None).await?;
            }
        }
        Ok(())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let segments = split_path(path)?;
        for item in self.read(&segments, false).await? {
            self.bucket.delete(&item.key, None).await?;
        }
        Ok(())
    }

    async fn watch(&self, path: &str) -> Result<ConfigWatcher> {
        split_path(path)?;
        self.tree.watch(path, self.get(path).await)
    }
}

/// The task keeping the local tree.
struct FollowLoop {
    bucket: Bucket,
    tree: Arc<LeafTree>,
}

impl FollowLoop {
    /// Follows the bucket and loads its snapshot into the tree; malformed keys keep their last
    /// good value (none at start) and are reported to watchers.
    async fn load(&mut self) -> Result<Follow> {
        let mut follow = self.bucket.follow(">").await?;
        let items = follow
            .snapshot()
            .await
            .map_err(|e| self.bucket.err("read", ">", e))?;
        self.tree.load(
            items
                .iter()
                .filter(|item| item.op == Op::Put)
                .filter_map(|item| {
                    let value = decode(&self.bucket, &item.key, &item.value);
                    Some((segments_of(&item.key)?, value))
                }),
        );
        Ok(follow)
    }

    async fn run(mut self, mut follow: Follow) {
        loop {
            match follow.next().await {
                Some(Ok(item)) => {
                    self.apply(&item);
                    if item.pending == 0 {
                        self.tree.publish();
                    }
                }
                Some(Err(e)) if e.is_transient() => {
                    warn!(bucket = %self.bucket.name(), error = %e, "config follow interrupted; it resumes when the connection is back");
                }
                Some(Err(e)) => {
                    warn!(bucket = %self.bucket.name(), error = %e, "config follow failed; reloading the tree");
                    follow = self.reload().await;
                }
                None => {
                    info!(bucket = %self.bucket.name(), "connection closed; config follow ends");
                    return;
                }
            }
        }
    }

    /// Reloads the whole tree (retrying until it can), tells watchers, and follows on.
    async fn reload(&mut self) -> Follow {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.load().await {
                Ok(follow) => {
                    info!(bucket = %self.bucket.name(), "config tree reloaded");
                    self.tree.publish();
                    return follow;
                }
                Err(e) => {
                    warn!(bucket = %self.bucket.name(), error = %e, "config reload failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Applies one change to the tree.
    fn apply(&mut self, item: &Item) {
        let Some(segments) = segments_of(&item.key) else {
            return;
        };
        match item.op {
            Op::Put => self
                .tree
                .put(segments, decode(&self.bucket, &item.key, &item.value)),
            Op::Delete => self.tree.remove(&segments),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_segments_round_trip() {
        let segments = ["greeter", "a.b", "x y"];
        let key = key_of(&segments);
        assert_eq!(key, "greeter.a=2Eb.x=20y");
        assert_eq!(segments_of(&key), Some(segments.map(String::from).to_vec()));
        assert_eq!(segments_of("bad.=zz"), None);
    }
}
