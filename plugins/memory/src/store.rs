//! The in-process store: an ordered map per namespace, expired records dropped on access.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use micro_core::store::{Namespace, Query, Record, Store, validate_key};
use micro_core::{Error, Result};
use tokio::time::Instant;

/// One table: records by key, each with its deadline.
type Table = BTreeMap<String, (Record, Option<Instant>)>;

/// In-process [`Store`]. Clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    tables: Arc<Mutex<HashMap<Namespace, Table>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live records of `namespace` matching `key` under `query`, in key order, expiry set to the
    /// time left.
    fn matching(&self, key: &str, query: &Query) -> Vec<Record> {
        let now = Instant::now();
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let Some(table) = tables.get_mut(&query.namespace) else {
            return Vec::new();
        };
        table.retain(|_, (_, deadline)| deadline.is_none_or(|d| d > now));
        let found = table
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .filter(|(k, _)| query.matches(key, k))
            .map(|(_, (record, deadline))| Record {
                expiry: deadline.map(|d| d - now),
                ..record.clone()
            });
        query.paginate(found)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &str {
        crate::NAME
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        query.namespace.validate()?;
        let found = self.matching(key, query);
        if found.is_empty() && !query.prefix && query.suffix.is_none() {
            return Err(Error::NotFound(format!(
                "key `{key}` in {}/{}",
                query.namespace.database, query.namespace.table
            )));
        }
        Ok(found)
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        validate_key(&record.key)?;
        namespace.validate()?;
        let deadline = record.expiry.map(|ttl| Instant::now() + ttl);
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables.entry(namespace.clone()).or_default().insert(
            record.key.clone(),
            (
                Record {
                    expiry: None,
                    ..record
                },
                deadline,
            ),
        );
        Ok(())
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        namespace.validate()?;
        if let Some(table) = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(namespace)
        {
            table.remove(key);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        query.namespace.validate()?;
        let query = Query {
            prefix: true,
            ..query.clone()
        };
        Ok(self
            .matching(prefix, &query)
            .into_iter()
            .map(|r| r.key)
            .collect())
    }
}
