//! Dynamic configuration: a JSON key tree read and written by dotted path (`"db.pool.max"`),
//! watched for changes without a restart.
//!
//! Deleting a path also removes parents it leaves empty, so every backend (one key per leaf, or
//! one document) shows the same tree. The empty path `""` is the whole tree.

#[cfg(feature = "conformance")]
pub mod conformance;
mod leaves;
mod path;
mod tree;
mod watch;

pub use leaves::LeafTree;
pub use path::{delete_path, get_path, set_path, split_path};
pub use tree::{assemble, flatten, set_leaves};
pub use watch::WatchHub;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

/// The values a watched path takes: each change, `None` once the path is gone.
pub type ConfigWatcher = BoxStream<'static, Result<Option<Value>>>;

/// Dynamic configuration.
#[async_trait]
pub trait Config: Send + Sync + 'static {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// The value at `path`, `None` when absent.
    async fn get(&self, path: &str) -> Result<Option<Value>>;
    /// Sets `path` to `value`, creating parents; replaces whatever was there.
    async fn set(&self, path: &str, value: Value) -> Result<()>;
    /// Removes `path` (and parents left empty); absent paths are fine.
    async fn delete(&self, path: &str) -> Result<()>;
    /// The value at `path` whenever it changes, starting with the next change.
    async fn watch(&self, path: &str) -> Result<ConfigWatcher>;
}

impl dyn Config {
    /// The value at `path` decoded as `T`; `None` when absent, an error naming the path when it
    /// does not decode.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.get(path).await? {
            None => Ok(None),
            Some(value) => serde_json::from_value(value)
                .map(Some)
                .map_err(|e| Error::Decode {
                    what: format!("config `{path}`"),
                    message: e.to_string(),
                }),
        }
    }
}
