//! Watching: blocking-query loops over one service's instances or over the service names, each
//! turning successive snapshots into per-node events with `diff_nodes`, paced and backed off.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use micro_core::registry::{Event, Service, diff_nodes};
use micro_core::{Error, Result};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::read::{instances, micro_names};
use crate::http::ConsulHttp;

/// At most one blocking query per this interval per watched resource (features/blocking:
/// "rate limit the loop").
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);
/// The longest pause between failed attempts of a watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A watcher's events; dropping it aborts the task (and the tasks it spawned) feeding it.
pub(super) struct WatchStream {
    pub(super) receiver: mpsc::Receiver<Result<Event>>,
    pub(super) task: JoinHandle<()>,
}

impl Stream for WatchStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Paces a blocking-query loop: at most one query per [`MIN_QUERY_INTERVAL`], and exponential
/// backoff after failures. The first failure of a streak is only logged (a cut connection, an
/// agent restart); later ones are also reported to the watcher, which keeps going.
struct Pace {
    last: Option<Instant>,
    failures: u32,
}

impl Pace {
    fn new() -> Self {
        Pace {
            last: None,
            failures: 0,
        }
    }

    async fn before_query(&mut self) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + MIN_QUERY_INTERVAL).await;
        }
        self.last = Some(Instant::now());
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Records a failure; returns whether to report it, after pausing.
    async fn failed(&mut self, what: &str, error: &Error) -> bool {
        self.failures += 1;
        tracing::warn!(
            failures = self.failures,
            "consul watch of {what}: {error}; retrying"
        );
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << self.failures.min(5))
            .min(MAX_BACKOFF);
        tokio::time::sleep(backoff).await;
        self.failures > 1
    }
}

/// Follows `/v1/health/service/<name>?passing` with blocking queries, sending one event per
/// node that appeared, changed or went away. Ends when the watcher is dropped.
pub(super) async fn watch_service(
    http: ConsulHttp,
    wait: Duration,
    name: String,
    mut known: BTreeMap<String, Service>,
    mut index: u64,
    sender: mpsc::Sender<Result<Event>>,
) {
    let mut pace = Pace::new();
    loop {
        pace.before_query().await;
        match instances(&http, &name, index, wait).await {
            Ok((now, next)) => {
                pace.succeeded();
                for event in diff_nodes(&known, &now) {
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                known = now;
                index = next;
            }
            Err(error) => {
                if pace.failed(&name, &error).await && sender.send(Err(error)).await.is_err() {
                    return;
                }
                if sender.is_closed() {
                    return;
                }
            }
        }
    }
}

/// Follows `/v1/catalog/services` with blocking queries and runs a [`watch_service`] for every
/// micro service seen: go-micro could not watch everything; this can.
pub(super) async fn watch_all(
    http: ConsulHttp,
    wait: Duration,
    initial: Vec<(String, BTreeMap<String, Service>, u64)>,
    mut index: u64,
    sender: mpsc::Sender<Result<Event>>,
) {
    let mut watched = JoinSet::new();
    let mut names = std::collections::BTreeSet::new();
    for (name, known, service_index) in initial {
        names.insert(name.clone());
        let task = watch_service(
            http.clone(),
            wait,
            name,
            known,
            service_index,
            sender.clone(),
        );
        watched.spawn(task);
    }
    let mut pace = Pace::new();
    loop {
        pace.before_query().await;
        match micro_names(&http, index, wait).await {
            Ok((now, next)) => {
                pace.succeeded();
                for name in now {
                    if names.insert(name.clone()) {
                        // A service first seen now: every node it has is new to the watcher.
                        let task = watch_service(
                            http.clone(),
                            wait,
                            name,
                            BTreeMap::new(),
                            0,
                            sender.clone(),
                        );
                        watched.spawn(task);
                    }
                }
                index = next;
            }
            Err(error) => {
                if pace.failed("all services", &error).await
                    && sender.send(Err(error)).await.is_err()
                {
                    return;
                }
            }
        }
        if sender.is_closed() {
            return;
        }
    }
}
