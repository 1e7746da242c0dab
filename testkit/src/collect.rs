//! A broker handler that keeps what it receives, for tests to look at.

use std::sync::{Arc, Mutex};

use micro_core::broker::{Handler, Message, handler};

/// What a [`collecting`] handler received so far, in arrival order. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Collected(Arc<Mutex<Vec<Message>>>);

impl Collected {
    /// The messages received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.0.lock().expect("lock").clone()
    }

    /// How many messages arrived.
    pub fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A handler that keeps every message it gets (and returns `Ok`), and what it kept.
pub fn collecting() -> (Handler, Collected) {
    let collected = Collected::default();
    let sink = collected.0.clone();
    let handler = handler(move |message: Message| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("lock").push(message);
            Ok(())
        }
    });
    (handler, collected)
}
