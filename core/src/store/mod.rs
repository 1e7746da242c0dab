//! Key-value records with TTL, in database/table namespaces.
//!
//! Reads by exact key, or by prefix and/or suffix with limit and offset, in key order. An expired
//! record is never returned: [`Record::expiry`] on a read is the time it has left.

pub mod cache;
#[cfg(feature = "conformance")]
pub mod conformance;

pub use cache::{Cache, CacheStats, Eviction};

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Error, Result};

/// Database used when none is given.
pub const DEFAULT_DATABASE: &str = "micro";
/// Table used when none is given.
pub const DEFAULT_TABLE: &str = "micro";

/// One stored record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// Free-form metadata stored with the record.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// On write: the TTL (`None` keeps the record until deleted). On read: the time left.
    pub expiry: Option<Duration>,
}

impl Record {
    /// A record without metadata or expiry.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Record {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    /// The same record expiring after `ttl`.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.expiry = Some(ttl);
        self
    }
}

/// Where a record lives: a database and a table in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    /// Database name; [`DEFAULT_DATABASE`] when empty.
    pub database: String,
    /// Table name; [`DEFAULT_TABLE`] when empty.
    pub table: String,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            database: DEFAULT_DATABASE.into(),
            table: DEFAULT_TABLE.into(),
        }
    }
}

impl Namespace {
    /// The namespace `database`/`table`.
    pub fn new(database: impl Into<String>, table: impl Into<String>) -> Self {
        Namespace {
            database: database.into(),
            table: table.into(),
        }
    }

    /// Checks both names are usable as key segments (non-empty, no `/`).
    pub fn validate(&self) -> Result<()> {
        for (what, name) in [("database", &self.database), ("table", &self.table)] {
            if name.is_empty() || name.contains('/') {
                return Err(Error::invalid(
                    "namespace",
                    format!("{what} name `{name}` is empty or has `/`"),
                ));
            }
        }
        Ok(())
    }
}

/// How to read or list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Where to read.
    pub namespace: Namespace,
    /// Treat the key as a prefix.
    pub prefix: bool,
    /// Treat the key (or `suffix_of`) as a suffix too.
    pub suffix: Option<String>,
    /// At most this many results (0: no limit).
    pub limit: usize,
    /// Skip this many results first.
    pub offset: usize,
}

impl Query {
    /// Keys starting with the key given to `read`/`list`.
    pub fn prefix() -> Self {
        Query {
            prefix: true,
            ..Default::default()
        }
    }

    /// In namespace `ns`.
    pub fn in_namespace(mut self, ns: Namespace) -> Self {
        self.namespace = ns;
        self
    }

    /// Keys ending with `suffix` too.
    pub fn suffix(mut self, suffix: impl Into<String>) -> Self {
        self.suffix = Some(suffix.into());
        self
    }

    /// At most `limit` results, after skipping `offset`.
    pub fn page(mut self, limit: usize, offset: usize) -> Self {
        self.limit = limit;
        self.offset = offset;
        self
    }

    /// Whether `candidate` matches `key` under this query.
    pub fn matches(&self, key: &str, candidate: &str) -> bool {
        let head = if self.prefix || self.suffix.is_some() {
            candidate.starts_with(key)
        } else {
            candidate == key
        };
        head && self
            .suffix
            .as_deref()
            .is_none_or(|s| candidate.ends_with(s))
    }

    /// Applies offset and limit to results already in key order.
    pub fn paginate<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        let limit = if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        };
        items.into_iter().skip(self.offset).take(limit).collect()
    }
}

/// A key-value store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The plugin's name.
    fn name(&self) -> &str;
    /// Records matching `key` under `query`, in key order. An exact read of a missing key is
    /// [`Error::NotFound`]; a prefix or suffix read with no match is empty.
    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>>;
    /// Writes (or overwrites) `record` in `namespace`.
    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()>;
    /// Deletes `key`; deleting a missing key is not an error.
    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()>;
    /// Keys matching `prefix` (empty: all) under `query`, in key order.
    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>>;
}

/// Checks a key is usable: non-empty, at most 1 024 bytes.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("key", "the key is empty"));
    }
    if key.len() > 1024 {
        return Err(Error::invalid(
            "key",
            format!("the key is {} bytes, more than 1024", key.len()),
        ));
    }
    Ok(())
}
