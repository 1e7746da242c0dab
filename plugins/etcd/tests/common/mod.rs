//! What the micro-etcd tests share: the etcd under test, the lock on it, a raw client behind
//! the plugins' backs, and a one-node service.

#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;

use etcd_client::Client;
use micro_core::registry::{Node, Service};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The etcd under test, shared by every module of this test binary, whose tests run side by
/// side. Held for writing ([`alone`]) by the tests that disturb all others: those that compact
/// etcd's history (`watch.rs`: a watch starting from, or catching up to, a compacted revision
/// becomes a resync — correct, but not what the others test) and those that fill the registry
/// with thousands of nodes (`scale.rs`: every watcher of all services and every listing would
/// wade through them, and two fills would skew each other's timings). Held for reading
/// ([`share`]) by every other test of the shared etcd. The tests of `tls.rs` have an etcd of
/// their own and take no part.
static ETCD: RwLock<()> = RwLock::const_new(());

thread_local! {
    /// The running test's share of [`ETCD`]: libtest runs each test on a thread of its own, so
    /// the share is let go when the test's thread ends.
    static SHARE: RefCell<Option<RwLockReadGuard<'static, ()>>> = const { RefCell::new(None) };
}

/// Takes the running test's share of the shared etcd, kept until the test ends: waits while a
/// test has it [`alone`]. Called again in the same test (the conformance suites make a registry
/// and its observer), it takes nothing more: a second read lock could wait forever behind a
/// test queued for [`alone`], itself waiting for the first.
pub async fn share() {
    if SHARE.with(|share| share.borrow().is_some()) {
        return;
    }
    let guard = ETCD.read().await;
    SHARE.with(|share| *share.borrow_mut() = Some(guard));
}

/// The shared etcd for the running test alone, until the guard is dropped: waits until the
/// tests holding a [`share`] have ended, and keeps others from starting. A test that holds it
/// must not call [`share`].
pub async fn alone() -> RwLockWriteGuard<'static, ()> {
    ETCD.write().await
}

/// The etcd under test: `MICRO_ETCD_ADDRESS`, else the one `scripts/setup` starts.
pub fn address() -> String {
    std::env::var("MICRO_ETCD_ADDRESS").unwrap_or_else(|_| micro_etcd::DEFAULT_ADDRESS.into())
}

/// A plain etcd client, acting behind the plugins' backs.
pub async fn raw() -> Client {
    let endpoints: Vec<String> = address().split(',').map(|e| e.trim().to_string()).collect();
    Client::connect(endpoints, None)
        .await
        .expect("raw etcd client (run scripts/setup)")
}

/// Service `name` with one node `node`.
pub fn service(name: &str, node: &str) -> Service {
    Service {
        name: name.into(),
        version: "1.0.0".into(),
        nodes: vec![Node {
            id: node.into(),
            address: "127.0.0.1:50051".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
