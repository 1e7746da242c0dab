//! # micro-redis
//!
//! Redis for micro: [`RedisStore`], a [`Store`](micro_core::Store) with Redis's native TTLs.
//!
//! - Records are Redis strings under `<database>:<table>:<key>` (the names escaped so a key
//!   containing `:` cannot collide; see [`key_prefix`]), holding the value and its metadata.
//! - TTLs are Redis's own (`SET ... PX`): Redis deletes the record, and a read reports the time
//!   left (`PTTL`).
//! - Prefix and suffix reads and `list` walk the keys with `SCAN` (never `KEYS`), then sort and
//!   page them.
//! - One multiplexed connection through redis's `ConnectionManager`, which reconnects by itself;
//!   an operation that finds the connection dropped is tried once more on the new one.
//!
//! ```no_run
//! use micro_core::Store;
//! use micro_core::store::{Namespace, Query, Record};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> micro_core::Result<()> {
//! let store = micro_redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let session = Record::new("session/42", "alice").with_ttl(std::time::Duration::from_secs(60));
//! store.write(session, &Namespace::default()).await?;
//! let found = store.read("session/42", &Query::default()).await?;
//! # let _ = found; Ok(()) }
//! ```
//!
//! Through the catalog, [`install`] makes it available as `--store redis`, at
//! `--store-address` ([`DEFAULT_ADDRESS`] when unset).

mod conn;
mod store;

pub use store::{RedisStore, key_prefix};

use std::sync::Arc;

use micro_core::catalog::Catalog;

/// The name this plugin is installed under.
pub const NAME: &str = "redis";

/// The server used when no address is given.
pub const DEFAULT_ADDRESS: &str = "redis://127.0.0.1:6379";

/// Installs the Redis Store under the name `redis`.
///
/// The factory connects to `--store-address` (a `redis://` URL, or `host:port`),
/// [`DEFAULT_ADDRESS`] when unset, and fails naming the address when Redis does not answer.
pub fn install(catalog: &mut Catalog) {
    catalog.add_store(NAME, |opts| async move {
        let address = opts.address.unwrap_or_default();
        Ok(Arc::new(RedisStore::connect(&address).await?) as _)
    });
}
