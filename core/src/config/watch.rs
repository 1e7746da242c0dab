//! Fan-out of tree changes to path watchers, shared by Config plugins.

use std::sync::Mutex;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{ConfigWatcher, get_path, split_path};
use crate::Result;

struct PathWatcher {
    segments: Vec<String>,
    last: Option<Value>,
    sender: mpsc::UnboundedSender<Result<Option<Value>>>,
}

/// Keeps the watchers of one config tree. A plugin calls [`WatchHub::publish`] with the new tree
/// after every change; each watcher whose path changed gets its new value. Watchers whose stream
/// was dropped are forgotten at the next publish.
#[derive(Default)]
pub struct WatchHub {
    watchers: Mutex<Vec<PathWatcher>>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watchers = self.watchers.lock().map(|w| w.len()).unwrap_or_default();
        f.debug_struct("WatchHub")
            .field("watchers", &watchers)
            .finish()
    }
}

impl WatchHub {
    /// A watcher of `path`, given the tree as it is now.
    pub fn watch(&self, path: &str, current: &Value) -> Result<ConfigWatcher> {
        let segments: Vec<String> = split_path(path)?.into_iter().map(String::from).collect();
        let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let last = get_path(current, &refs).cloned();
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().push(PathWatcher {
            segments,
            last,
            sender,
        });
        Ok(UnboundedReceiverStream::new(receiver).boxed())
    }

    /// Tells every watcher whose value differs in `tree` from what it last saw.
    pub fn publish(&self, tree: &Value) {
        self.lock().retain_mut(|watcher| {
            let refs: Vec<&str> = watcher.segments.iter().map(String::as_str).collect();
            let now = get_path(tree, &refs);
            if now == watcher.last.as_ref() {
                return !watcher.sender.is_closed();
            }
            watcher.last = now.cloned();
            watcher.sender.send(Ok(watcher.last.clone())).is_ok()
        });
    }

    /// Tells every watcher of a failure (a malformed value in the backend, a lost connection).
    pub fn publish_error(&self, error: impl Fn() -> crate::Error) {
        self.lock()
            .retain(|watcher| watcher.sender.send(Err(error())).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PathWatcher>> {
        // A panic while holding this lock cannot leave the list half-updated.
        self.watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
