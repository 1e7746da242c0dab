//! The local copy of a tree kept one key per leaf, for the Config plugins that follow such keys.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use tracing::warn;

use super::{ConfigWatcher, WatchHub, assemble, set_path, split_path};
use crate::{Error, Result};

/// What a key-per-leaf [`Config`](super::Config) keeps of its backend: the last good value of
/// each leaf (by path segments), the tree they assemble into, and the watchers it feeds. The
/// plugin's follow task [`load`](Self::load)s, [`put`](Self::put)s, [`remove`](Self::remove)s
/// what the backend reports and [`publish`](Self::publish)es; `Config::watch` is
/// [`watch`](Self::watch).
#[derive(Debug, Default)]
pub struct LeafTree {
    hub: WatchHub,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    leaves: BTreeMap<Vec<String>, Value>,
    /// The assembled tree; `None` after a leaf changed.
    root: Option<Value>,
    /// Whether a leaf changed since the tree was last published.
    unpublished: bool,
}

impl State {
    fn root(&mut self) -> &Value {
        let leaves = &self.leaves;
        self.root
            .get_or_insert_with(|| assemble(leaves.iter().map(|(s, v)| (s.clone(), v.clone()))))
    }

    fn changed(&mut self) {
        self.root = None;
        self.unpublished = true;
    }
}

impl LeafTree {
    /// Replaces every leaf with what the backend holds: each a value, or the error of a
    /// malformed one, which keeps its last good value (none at start) and goes to the watchers.
    pub fn load(&self, leaves: impl IntoIterator<Item = (Vec<String>, Result<Value>)>) {
        let mut state = self.lock();
        let mut loaded = BTreeMap::new();
        for (segments, value) in leaves {
            match value {
                Ok(value) => {
                    loaded.insert(segments, value);
                }
                Err(e) => {
                    self.malformed(&e);
                    if let Some(last) = state.leaves.get(&segments) {
                        loaded.insert(segments, last.clone());
                    }
                }
            }
        }
        state.leaves = loaded;
        state.changed();
    }

    /// Sets a leaf the backend reports written; a malformed value keeps the last good one, and
    /// its error goes to the watchers.
    pub fn put(&self, segments: Vec<String>, value: Result<Value>) {
        match value {
            Ok(value) => {
                let mut state = self.lock();
                if state.leaves.insert(segments, value.clone()) != Some(value) {
                    state.changed();
                }
            }
            Err(e) => self.malformed(&e),
        }
    }

    /// Removes a leaf the backend reports deleted.
    pub fn remove(&self, segments: &[String]) {
        let mut state = self.lock();
        if state.leaves.remove(segments).is_some() {
            state.changed();
        }
    }

    /// Tells the watchers the tree, when a leaf changed since it was last told.
    pub fn publish(&self) {
        let mut state = self.lock();
        if std::mem::take(&mut state.unpublished) {
            self.hub.publish(state.root());
        }
    }

    /// A watcher of `path`, starting from `now`: the value the backend holds there, as
    /// `Config::get` reads it (the local tree may lag behind a write just made, and the watcher
    /// would report that write), or, when that read failed, the local tree.
    pub fn watch(&self, path: &str, now: Result<Option<Value>>) -> Result<ConfigWatcher> {
        let segments = split_path(path)?;
        let baseline = match now {
            Ok(now) => {
                let mut baseline = Value::Object(Default::default());
                if let Some(value) = now {
                    set_path(&mut baseline, &segments, value);
                }
                baseline
            }
            Err(_) => self.lock().root().clone(),
        };
        self.hub.watch(path, &baseline)
    }

    /// Logs a malformed value (its error names its key) and tells every watcher.
    fn malformed(&self, error: &Error) {
        warn!(error = %error, "malformed config value; keeping the last good one");
        let (what, message) = match error {
            Error::Decode { what, message } => (what.clone(), message.clone()),
            other => ("config value".to_string(), other.to_string()),
        };
        self.hub.publish_error(|| Error::Decode {
            what: what.clone(),
            message: message.clone(),
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change leaves the state whole: a panic while holding the lock cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
