//! [`Config`] on Consul KV: one key per leaf under `micro/config/`.
//!
//! ## Layout
//!
//! The path `db.pool.max` is the key `micro/config/db/pool/max`, its value the leaf as JSON text
//! (`10`, `"orders"`, `[1,2]`, or `{}` for an empty object). A segment's `%` and `/` are written
//! `%25` and `%2F`. Parents have no key of their own, so deleting the last leaf under a parent
//! prunes it, as the contract asks. Setting a subtree writes its leaves, then deletes the keys
//! it replaced; it is not atomic, so a watcher may see the steps.
//!
//! Watches follow the whole prefix with one recursive blocking query (kv API docs, `recurse`;
//! features/blocking) per config client and fan the tree out to path watchers with
//! [`WatchHub`]. A value that is not JSON is an error naming its key; watchers get that error
//! and keep the last good tree.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use micro_core::config::{
    Config, ConfigWatcher, WatchHub, assemble, flatten, get_path, split_path,
};
use micro_core::{Error, Result};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::NAME;
use crate::http::ConsulHttp;
use crate::kv::{self, KvEntry};

/// The KV prefix of the tree unless set with [`ConsulConfig::with_prefix`].
pub(crate) const DEFAULT_PREFIX: &str = "micro/config/";
const WAIT: Duration = Duration::from_secs(60);
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);

/// A [`Config`] on Consul KV.
pub struct ConsulConfig {
    http: ConsulHttp,
    prefix: String,
    hub: Arc<WatchHub>,
    /// The tree as the watch task last saw it, and the task.
    follower: Mutex<Option<Follower>>,
}

/// The tree the watch task last saw, and the task.
type Follower = (Arc<Mutex<Value>>, JoinHandle<()>);

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("http", &self.http)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ConsulConfig {
    /// A config on the agent at `address` (`host:port`; blank is [`DEFAULT_ADDRESS`]) with the
    /// token from [`TOKEN_ENV`], if set. Connects on first use: only a malformed address is an
    /// error here.
    ///
    /// [`DEFAULT_ADDRESS`]: crate::DEFAULT_ADDRESS
    /// [`TOKEN_ENV`]: crate::TOKEN_ENV
    pub fn new(address: &str) -> Result<Self> {
        Ok(ConsulConfig {
            http: ConsulHttp::new("config", address)?,
            prefix: DEFAULT_PREFIX.into(),
            hub: Arc::new(WatchHub::default()),
            follower: Mutex::new(None),
        })
    }

    /// Sends the ACL token `token` instead of the one from `CONSUL_HTTP_TOKEN`; `None` sends
    /// none.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.http.set_token(token);
        self
    }

    /// Keeps the tree under `prefix` instead of `micro/config/`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.prefix = prefix;
        self
    }

    fn key_of(&self, segments: &[&str]) -> String {
        let encoded: Vec<String> = segments.iter().map(|s| encode_segment(s)).collect();
        format!("{}{}", self.prefix, encoded.join("/"))
    }

    async fn keys_under(&self, key: &str) -> Result<Vec<String>> {
        let (entries, _) = kv::list(&self.http, key, 0, Duration::ZERO).await?;
        Ok(entries.into_iter().map(|e| e.key).collect())
    }

    fn lock_follower(&self) -> std::sync::MutexGuard<'_, Option<Follower>> {
        self.follower
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ConsulConfig {
    fn drop(&mut self) {
        if let Some((_, task)) = self.lock_follower().take() {
            task.abort();
        }
    }
}

fn encode_segment(segment: &str) -> String {
    segment.replace('%', "%25").replace('/', "%2F")
}

fn decode_segment(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%25", "%")
}

/// The tree of `entries` (keys under `prefix`); an error naming the first key whose value is
/// not JSON.
fn tree_of(http: &ConsulHttp, prefix: &str, entries: &[KvEntry]) -> Result<Value> {
    let mut leaves = Vec::new();
    for entry in entries {
        let Some(relative) = entry.key.strip_prefix(prefix) else {
            continue;
        };
        if relative.is_empty() || relative.ends_with('/') {
            continue;
        }
        let raw = entry.bytes(http)?;
        let value: Value = serde_json::from_slice(&raw).map_err(|e| {
            http.fail_with(
                format!("the value of config key `{}` is not JSON", entry.key),
                e,
            )
        })?;
        let segments: Vec<String> = relative.split('/').map(decode_segment).collect();
        leaves.push((segments, value));
    }
    Ok(assemble(leaves))
}

#[async_trait]
impl Config for ConsulConfig {
    fn name(&self) -> &str {
        NAME
    }

    async fn get(&self, path: &str) -> Result<Option<Value>> {
        let segments = split_path(path)?;
        let key = self.key_of(&segments);
        let (entries, _) = kv::list(&self.http, &key, 0, Duration::ZERO).await?;
        let tree = tree_of(&self.http, &self.prefix, &entries)?;
        Ok(get_path(&tree, &segments).cloned())
    }

    async fn set(&self, path: &str, value: Value) -> Result<()> {
        let segments = split_path(path)?;
        if segments.is_empty() && !value.is_object() {
            return Err(Error::invalid(
                "config path",
                "the root (``) can only be set to an object",
            ));
        }
        let key = self.key_of(&segments);
        let new_leaves = flatten(&segments, value);
        let new_keys: Vec<String> = new_leaves
            .iter()
            .map(|(s, _)| self.key_of(&s.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        // What the new value replaces: the subtree at `path`, and leaves on its ancestors.
        let mut stale: Vec<String> = self
            .keys_under(&key)
            .await?
            .into_iter()
            .filter(|k| k == &key || k.starts_with(&format!("{key}/")) || segments.is_empty())
            .collect();
        for depth in 1..segments.len() {
            let ancestor = self.key_of(&segments[..depth]);
            if kv::get(&self.http, &ancestor).await?.is_some() {
                stale.push(ancestor);
            }
        }
        for ((_, leaf), leaf_key) in new_leaves.iter().zip(&new_keys) {
            kv::put(&self.http, leaf_key, leaf.to_string().into_bytes()).await?;
        }
        for old in stale.iter().filter(|k| !new_keys.contains(k)) {
            kv::delete(&self.http, old, false, None).await?;
        }
        Ok(())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let segments = split_path(path)?;
        if segments.is_empty() {
            kv::delete(&self.http, &self.prefix, true, None).await?;
            return Ok(());
        }
        let key = self.key_of(&segments);
        kv::delete(&self.http, &key, false, None).await?;
        kv::delete(&self.http, &format!("{key}/"), true, None).await?;
        Ok(())
    }

    async fn watch(&self, path: &str) -> Result<ConfigWatcher> {
        split_path(path)?;
        let shared = self.lock_follower().as_ref().map(|(tree, _)| tree.clone());
        if let Some(tree) = shared {
            let current = tree.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return self.hub.watch(path, &current);
        }
        let (entries, index) = kv::list(&self.http, &self.prefix, 0, Duration::ZERO).await?;
        let tree = tree_of(&self.http, &self.prefix, &entries)?;
        let watcher = self.hub.watch(path, &tree)?;
        let mut follower = self.lock_follower();
        if follower.is_none() {
            let shared = Arc::new(Mutex::new(tree));
            let task = tokio::spawn(follow(
                self.http.clone(),
                self.prefix.clone(),
                self.hub.clone(),
                shared.clone(),
                index,
            ));
            *follower = Some((shared, task));
        }
        Ok(watcher)
    }
}

/// Follows the prefix with recursive blocking queries and publishes each new tree.
async fn follow(
    http: ConsulHttp,
    prefix: String,
    hub: Arc<WatchHub>,
    shared: Arc<Mutex<Value>>,
    mut index: u64,
) {
    let mut last_query: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        if let Some(at) = last_query {
            tokio::time::sleep_until(at + MIN_QUERY_INTERVAL).await;
        }
        last_query = Some(Instant::now());
        let result = kv::list(&http, &prefix, index, WAIT)
            .await
            .map(|(entries, next)| (tree_of(&http, &prefix, &entries), next));
        match result {
            Ok((Ok(tree), next)) => {
                failures = 0;
                index = next;
                *shared.lock().unwrap_or_else(|p| p.into_inner()) = tree.clone();
                hub.publish(&tree);
            }
            Ok((Err(malformed), next)) => {
                // A bad value: report it, keep the last good tree, wait for the next change.
                index = next;
                let message = malformed.to_string();
                hub.publish_error(|| Error::backend_msg("config", NAME, message.clone()));
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(
                    failures,
                    "consul config watch of `{prefix}`: {error}; retrying"
                );
                if failures > 1 {
                    let message = error.to_string();
                    hub.publish_error(|| Error::backend_msg("config", NAME, message.clone()));
                }
                let backoff = Duration::from_millis(250)
                    .saturating_mul(1 << failures.min(5))
                    .min(Duration::from_secs(5));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip() {
        assert_eq!(encode_segment("x/%y"), "x%2F%25y");
        assert_eq!(decode_segment(&encode_segment("x/%y")), "x/%y");
        assert_eq!(decode_segment(&encode_segment("%2F")), "%2F");
    }
}
