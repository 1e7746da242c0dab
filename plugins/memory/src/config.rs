//! The in-process config tree.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use micro_core::Result;
use micro_core::config::{
    Config, ConfigWatcher, WatchHub, delete_path, get_path, set_path, split_path,
};
use serde_json::Value;

/// In-process [`Config`]. Clones share the same tree.
#[derive(Clone)]
pub struct MemoryConfig {
    inner: Arc<Inner>,
}

struct Inner {
    tree: Mutex<Value>,
    hub: WatchHub,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self::from_value(Value::Object(Default::default()))
    }
}

impl std::fmt::Debug for MemoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConfig").finish_non_exhaustive()
    }
}

impl MemoryConfig {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree starting as `tree`.
    pub fn from_value(tree: Value) -> Self {
        MemoryConfig {
            inner: Arc::new(Inner {
                tree: Mutex::new(tree),
                hub: WatchHub::default(),
            }),
        }
    }

    fn change(&self, apply: impl FnOnce(&mut Value)) {
        let mut tree = self.inner.tree.lock().unwrap_or_else(|p| p.into_inner());
        apply(&mut tree);
        // Published under the lock, so watchers see changes in the order they were made.
        self.inner.hub.publish(&tree);
    }
}

#[async_trait]
impl Config for MemoryConfig {
    fn name(&self) -> &str {
        crate::NAME
    }

    async fn get(&self, path: &str) -> Result<Option<Value>> {
        let segments = split_path(path)?;
        Ok(get_path(
            &self.inner.tree.lock().unwrap_or_else(|p| p.into_inner()),
            &segments,
        )
        .cloned())
    }

    async fn set(&self, path: &str, value: Value) -> Result<()> {
        let segments = split_path(path)?;
        self.change(|tree| set_path(tree, &segments, value));
        Ok(())
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let segments = split_path(path)?;
        self.change(|tree| {
            delete_path(tree, &segments);
        });
        Ok(())
    }

    async fn watch(&self, path: &str) -> Result<ConfigWatcher> {
        let tree = self.inner.tree.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.hub.watch(path, &tree)
    }
}
