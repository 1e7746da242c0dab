//! The lease keeper: one lease per node this process registered, kept alive while the node is
//! refreshed within its TTL, and granted again (the node put again) when etcd loses it.
//!
//! A keeper task sends keep-alives every TTL/3 for as long as the node is registered again
//! within its TTL, so a node whose process stops refreshing lapses like in every registry. When
//! etcd reports the lease gone (TTL 0: etcd restarted without its data, a long partition, a
//! revoke) the keeper grants a new lease and puts the node again by itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use micro_core::Result;
use tracing::{debug, info, warn};

use super::COMPONENT;
use crate::{AbortOnDrop, Conn};

/// The nodes this process registered, by key. Dropping it drops their keepers, which aborts
/// them; the leases then lapse after their TTL.
#[derive(Default)]
pub(super) struct Leases {
    nodes: Mutex<HashMap<String, Arc<NodeEntry>>>,
}

/// What this process registered under one key.
struct NodeEntry {
    state: tokio::sync::Mutex<NodeState>,
}

#[derive(Default)]
struct NodeState {
    /// The JSON stored under the key.
    value: String,
    /// The lease the key is attached to; 0 when none is held.
    lease: i64,
    /// The TTL asked for.
    ttl: Duration,
    /// When the node was last registered.
    refreshed: Option<Instant>,
    /// Set by deregister: the keeper must stop.
    removed: bool,
    /// The keeper's last failure to reach etcd, cleared once it gets through.
    failure: Option<String>,
    keeper: Option<AbortOnDrop>,
}

impl Leases {
    fn entry(&self, key: &str) -> Arc<NodeEntry> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(NodeEntry {
                    state: Default::default(),
                })
            })
            .clone()
    }

    /// Puts `value` under `key` on a lease of `ttl` and keeps it alive; an unchanged value with
    /// the same TTL only refreshes the node (no put, so watchers see nothing).
    pub(super) async fn register(
        &self,
        conn: &Conn,
        key: String,
        value: String,
        ttl: Duration,
    ) -> Result<()> {
        let entry = self.entry(&key);
        let mut state = entry.state.lock().await;
        state.refreshed = Some(Instant::now());
        state.removed = false;
        let same_ttl = state.ttl == ttl;
        if state.lease != 0 && same_ttl && state.value == value && state.failure.is_none() {
            // Unchanged: the keeper keeps the lease alive; no put, so watchers see nothing.
            // (While the keeper cannot reach etcd, the node is put again below instead, so the
            // caller learns of the failure.)
            ensure_keeper(conn, &key, &entry, &mut state);
            return Ok(());
        }
        let mut client = conn.client.clone();
        let mut put_done = false;
        if state.lease != 0 && same_ttl {
            // Changed content, same TTL: put on the lease we hold (an Update for watchers).
            let options = PutOptions::new().with_lease(state.lease);
            match client
                .put(key.as_str(), value.as_str(), Some(options))
                .await
            {
                Ok(_) => put_done = true,
                Err(e) => {
                    debug!(%key, error = %e, "put on the held lease failed; granting a new one")
                }
            }
        }
        if !put_done {
            let lease = grant_and_put(conn, &key, &value, ttl).await?;
            let old = std::mem::replace(&mut state.lease, lease);
            if old != 0 && old != lease {
                // The key now hangs on the new lease: revoking the old one leaves it be.
                let _ = client.lease_revoke(old).await;
            }
        }
        state.value = value;
        state.ttl = ttl;
        state.failure = None;
        ensure_keeper(conn, &key, &entry, &mut state);
        Ok(())
    }

    /// Stops keeping `key` alive, deletes it and revokes its lease. Deleting a key this process
    /// never registered is fine.
    pub(super) async fn remove(&self, conn: &Conn, key: &str) -> Result<()> {
        let entry = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let mut lease = 0;
        // Held until the key is deleted, so the keeper cannot put it again meanwhile.
        let _guard = match &entry {
            Some(entry) => {
                let mut state = entry.state.lock().await;
                state.removed = true;
                lease = std::mem::take(&mut state.lease);
                state.keeper = None;
                Some(state)
            }
            None => None,
        };
        let mut client = conn.client.clone();
        client
            .delete(key, None)
            .await
            .map_err(|e| conn.err(COMPONENT, format!("delete {key}"), e))?;
        if lease != 0 {
            let _ = client.lease_revoke(lease).await;
        }
        Ok(())
    }
}

/// The lease TTL in whole seconds (etcd raises very short TTLs to its minimum, about 2 s).
fn ttl_secs(ttl: Duration) -> i64 {
    (ttl.as_millis().div_ceil(1000) as i64).max(1)
}

/// Grants a lease of `ttl` and puts `key` on it; returns the lease.
async fn grant_and_put(conn: &Conn, key: &str, value: &str, ttl: Duration) -> Result<i64> {
    let mut client = conn.client.clone();
    let lease = client
        .lease_grant(ttl_secs(ttl), None)
        .await
        .map_err(|e| conn.err(COMPONENT, format!("grant a lease for {key}"), e))?
        .id();
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        let _ = client.lease_revoke(lease).await;
        return Err(conn.err(COMPONENT, format!("put {key}"), e));
    }
    Ok(lease)
}

fn ensure_keeper(conn: &Conn, key: &str, entry: &Arc<NodeEntry>, state: &mut NodeState) {
    if state.keeper.as_ref().is_some_and(|k| !k.0.is_finished()) {
        return;
    }
    let task = tokio::spawn(keep_alive(
        conn.clone(),
        key.to_string(),
        Arc::downgrade(entry),
    ));
    state.keeper = Some(AbortOnDrop(task));
}

/// An open keep-alive stream for one lease.
struct Keeper {
    lease: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

enum Beat {
    /// etcd extended the lease.
    Alive,
    /// etcd says the lease no longer exists.
    Lost,
    /// etcd could not be asked (down, partitioned): try again next time.
    Failed(String),
}

/// Keeps the lease of one node alive while the node is refreshed within its TTL; puts it again
/// on a fresh lease when the lease is lost. Ends when the node is deregistered, lapses, or the
/// registry is dropped.
async fn keep_alive(conn: Conn, key: String, entry: Weak<NodeEntry>) {
    let mut open: Option<Keeper> = None;
    loop {
        let interval = {
            let Some(entry) = entry.upgrade() else { return };
            let state = entry.state.lock().await;
            (state.ttl / 3).max(Duration::from_millis(500))
        };
        tokio::time::sleep(interval).await;
        let Some(entry) = entry.upgrade() else { return };
        let mut state = entry.state.lock().await;
        if state.removed {
            return;
        }
        if state.refreshed.is_none_or(|at| at.elapsed() > state.ttl) {
            debug!(%key, "not refreshed within its TTL: letting its lease lapse");
            state.lease = 0;
            state.value.clear();
            return;
        }
        let beat = if state.lease == 0 {
            Beat::Lost
        } else {
            beat(&conn, state.lease, &mut open, interval).await
        };
        match beat {
            Beat::Alive => {
                if state.failure.take().is_some() {
                    info!(%key, "lease keep-alive works again");
                }
            }
            Beat::Lost => {
                warn!(%key, lease = state.lease, "registry lease lost; registering the node again");
                open = None;
                match grant_and_put(&conn, &key, &state.value, state.ttl).await {
                    Ok(lease) => {
                        info!(%key, lease, "node registered again on a new lease");
                        state.lease = lease;
                        state.failure = None;
                    }
                    Err(e) => {
                        warn!(%key, error = %e, "registering the node again failed; retrying");
                        state.lease = 0;
                        state.failure = Some(e.to_string());
                    }
                }
            }
            Beat::Failed(e) => {
                warn!(%key, endpoints = %conn.endpoints, error = %e, "lease keep-alive failed; retrying");
                open = None;
                state.failure = Some(e);
            }
        }
    }
}

/// Sends one keep-alive for `lease` and reads its answer.
async fn beat(conn: &Conn, lease: i64, open: &mut Option<Keeper>, wait: Duration) -> Beat {
    if open.as_ref().is_none_or(|k| k.lease != lease) {
        *open = None;
        let mut client = conn.client.clone();
        match tokio::time::timeout(wait, client.lease_keep_alive(lease)).await {
            // The first answer came with the stream: the lease is alive.
            Ok(Ok((keeper, stream))) => {
                *open = Some(Keeper {
                    lease,
                    keeper,
                    stream,
                });
                return Beat::Alive;
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                return Beat::Lost;
            }
            Ok(Err(e)) => return Beat::Failed(e.to_string()),
            Err(_) => return Beat::Failed(format!("no keep-alive answer within {wait:?}")),
        }
    }
    let Some(k) = open.as_mut() else {
        return Beat::Failed("no keep-alive stream".into());
    };
    if let Err(e) = k.keeper.keep_alive().await {
        *open = None;
        return Beat::Failed(e.to_string());
    }
    match tokio::time::timeout(wait, k.stream.message()).await {
        Ok(Ok(Some(response))) if response.ttl() > 0 => Beat::Alive,
        Ok(Ok(Some(_))) => Beat::Lost,
        Ok(Ok(None)) => {
            *open = None;
            Beat::Failed("keep-alive stream closed".into())
        }
        Ok(Err(e)) => {
            *open = None;
            Beat::Failed(e.to_string())
        }
        Err(_) => {
            *open = None;
            Beat::Failed(format!("no keep-alive answer within {wait:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_ttls_up() {
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_secs(90)), 90);
    }
}
