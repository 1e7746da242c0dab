//! A subscription run by a task of its own, as brokers that consume from a backend run one.

use std::future::Future;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Subscription;
use crate::{Error, Result};

/// A [`Subscription`] run by a task: [`unsubscribe`](Subscription::unsubscribe) tells the task
/// to stop, then waits for it to finish (what it had received included). Dropped without
/// unsubscribing, the task runs on.
#[derive(Debug)]
pub struct TaskSubscription {
    plugin: &'static str,
    topic: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TaskSubscription {
    /// Spawns `run` with the receiver that fires on unsubscribe; `plugin` names the broker in
    /// errors.
    pub fn spawn<F>(
        plugin: &'static str,
        topic: &str,
        run: impl FnOnce(oneshot::Receiver<()>) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        TaskSubscription {
            plugin,
            topic: topic.to_string(),
            stop: Some(stop),
            task: Some(tokio::spawn(run(stopped))),
        }
    }
}

#[async_trait]
impl Subscription for TaskSubscription {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn unsubscribe(mut self: Box<Self>) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| {
                Error::backend(
                    "broker",
                    self.plugin,
                    format!("the subscriber of `{}` failed", self.topic),
                    e,
                )
            })?;
        }
        Ok(())
    }
}
