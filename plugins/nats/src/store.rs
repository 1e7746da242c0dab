//! The [`Store`] on JetStream key-value buckets.
//!
//! - **Namespaces.** Database `d` is the bucket `<prefix><d>` (prefix `micro-store-` by
//!   default; `d` in the form of [`encode_bucket`]), created on the first write to it; table `t`
//!   and key `k` are the KV key `<t>.<k>`, each in the form of [`encode_key`] (`user/1` stays
//!   `user/1`, `a.b` becomes `a=2Eb`). So `nats kv ls micro-store-micro` lists the default
//!   namespace's keys.
//! - **Values** are stored as they are: the KV value is the record's bytes. Metadata travels in
//!   the header `Micro-Metadata` (a JSON object), omitted when empty.
//! - **TTL.** NATS 2.9 has no per-key TTL (bucket max-age is one age for every key), so a record
//!   written with a TTL carries its deadline in the header `Micro-Expires-At` (milliseconds since
//!   the Unix epoch, by the writer's clock). Every read checks it: a record past its deadline is
//!   never returned, whether or not it is still in the bucket, and `expiry` on a read is the time
//!   left. A sweeper task (every [`DEFAULT_SWEEP_INTERVAL`]) deletes expired records from every
//!   bucket of the prefix, each only if it was not rewritten since it was read. Hosts' clocks
//!   should agree (NTP): a skew between writer and reader shortens or lengthens TTLs by as much.
//! - **Reads** by prefix or suffix read the table's last value of every key (an ordered consumer
//!   over `$KV.<bucket>.<table>.>`, as `nats kv ls` does) and filter, sort and page here, in key
//!   order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use futures::StreamExt;
use micro_core::store::{Namespace, Query, Record, Store, validate_key};
use micro_core::{Error, Result};
use tracing::{debug, warn};

use crate::NAME;
use crate::conn::{AbortOnDrop, Conn, deadline_after, now_ms};
use crate::kv::{Bucket, Item, deadline_headers, decode_key, encode_bucket, encode_key};

/// Buckets are named `<this><database>` unless told otherwise.
pub const DEFAULT_BUCKET_PREFIX: &str = "micro-store-";

/// How often expired records are deleted from the buckets, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The header holding a record's metadata (a JSON object).
pub const METADATA_HEADER: &str = "Micro-Metadata";

/// The longest bucket name: JetStream names the stream `KV_<bucket>` and makes it a directory.
const MAX_BUCKET_NAME: usize = 240;

const COMPONENT: &str = "store";

/// Key-value records in JetStream key-value buckets, one bucket per database.
///
/// ```no_run
/// use micro_core::Store;
/// use micro_core::store::{Namespace, Query, Record};
/// # #[tokio::main] async fn main() -> micro_core::Result<()> {
/// let store = micro_nats::NatsStore::connect("nats://127.0.0.1:4222").await?;
/// let sessions = Namespace::new("auth", "sessions");
/// let record = Record::new("alice", "token").with_ttl(std::time::Duration::from_secs(60));
/// store.write(record, &sessions).await?;
/// let found = store.read("alice", &Query::default().in_namespace(sessions)).await?;
/// # let _ = found; Ok(()) }
/// ```
pub struct NatsStore {
    conn: Conn,
    prefix: String,
    /// Buckets opened so far, by database.
    buckets: Mutex<HashMap<String, Bucket>>,
    sweep_interval: Option<Duration>,
    sweeper: Option<AbortOnDrop>,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("address", &self.conn.address)
            .field("bucket_prefix", &self.prefix)
            .field("sweep_interval", &self.sweep_interval)
            .finish_non_exhaustive()
    }
}

impl NatsStore {
    /// Connects to the NATS servers at `address` (comma-separated; blank:
    /// [`DEFAULT_ADDRESS`](crate::DEFAULT_ADDRESS)), failing with an error naming the address
    /// when none answers. JetStream must be enabled on the server (`nats-server -js`). Starts the
    /// sweeper (every [`DEFAULT_SWEEP_INTERVAL`]).
    pub async fn connect(address: &str) -> Result<Self> {
        let conn = Conn::connect(COMPONENT, address).await?;
        Ok(Self::on(conn, DEFAULT_BUCKET_PREFIX.to_string())
            .with_sweep_interval(Some(DEFAULT_SWEEP_INTERVAL)))
    }

    /// The store on a client the caller already has; `address` names it in errors. Starts the
    /// sweeper.
    pub fn from_client(client: async_nats::Client, address: impl Into<String>) -> Self {
        let conn = Conn {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            address: crate::conn::redact(&address.into()),
        };
        Self::on(conn, DEFAULT_BUCKET_PREFIX.to_string())
            .with_sweep_interval(Some(DEFAULT_SWEEP_INTERVAL))
    }

    fn on(conn: Conn, prefix: String) -> Self {
        NatsStore {
            conn,
            prefix,
            buckets: Mutex::default(),
            sweep_interval: None,
            sweeper: None,
        }
    }

    /// Names buckets `<prefix><database>` (letters, digits, `-` and `_` only). The sweeper then
    /// sweeps the buckets of this prefix.
    pub fn with_bucket_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self.buckets_lock().clear();
        let interval = self.sweep_interval;
        self.with_sweep_interval(interval)
    }

    /// Sweeps expired records every `interval`; `None` stops sweeping (reads still never return
    /// an expired record, but it stays in the bucket until overwritten or deleted).
    pub fn with_sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweeper = None;
        self.sweep_interval = interval;
        if let Some(interval) = interval {
            self.start_sweeper(interval);
        }
        self
    }

    /// The bucket holding `database`.
    pub fn bucket_name(&self, database: &str) -> String {
        format!("{}{}", self.prefix, encode_bucket(database))
    }

    /// Deletes every expired record of every bucket of this store's prefix now; returns how
    /// many went. What the sweeper does on each tick.
    pub async fn sweep(&self) -> Result<usize> {
        sweep(&self.conn, &self.prefix).await
    }

    fn start_sweeper(&mut self, interval: Duration) {
        let (conn, prefix) = (self.conn.clone(), self.prefix.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match sweep(&conn, &prefix).await {
                    Ok(0) => {}
                    Ok(swept) => debug!(swept, prefix = %prefix, "swept expired store records"),
                    Err(e) => {
                        warn!(prefix = %prefix, error = %e, "store sweep failed; trying again later")
                    }
                }
            }
        });
        self.sweeper = Some(AbortOnDrop(task));
    }

    /// Forgets the bucket of `namespace` after an error: it may have been deleted behind our
    /// back, so the next operation opens it afresh.
    fn forget(&self, namespace: &Namespace) {
        self.buckets_lock().remove(&namespace.database);
    }

    fn buckets_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bucket of `namespace`'s database: `None` when it does not exist and `create` is
    /// false.
    async fn bucket(&self, namespace: &Namespace, create: bool) -> Result<Option<Bucket>> {
        namespace.validate()?;
        if let Some(bucket) = self.buckets_lock().get(&namespace.database) {
            return Ok(Some(bucket.clone()));
        }
        let name = self.bucket_name(&namespace.database);
        if name.len() > MAX_BUCKET_NAME {
            return Err(Error::invalid(
                "namespace",
                format!(
                    "database name `{}` is too long for a NATS bucket (`{name}` is over {MAX_BUCKET_NAME} bytes)",
                    namespace.database
                ),
            ));
        }
        let bucket = Bucket::open(&self.conn, COMPONENT, &name, create).await?;
        if let Some(bucket) = &bucket {
            self.buckets_lock()
                .insert(namespace.database.clone(), bucket.clone());
        }
        Ok(bucket)
    }

    /// The live records of `namespace`'s table, in key order.
    async fn scan(&self, namespace: &Namespace) -> Result<Vec<Record>> {
        let Some(bucket) = self.bucket(namespace, false).await? else {
            return Ok(Vec::new());
        };
        let items = bucket
            .scan(&format!("{}.>", encode_key(&namespace.table)))
            .await
            .inspect_err(|_| self.forget(namespace))?;
        let now = now_ms();
        let mut records = Vec::new();
        for item in items.iter().filter(|item| item.live_at(now)) {
            records.push(decode(&bucket, item, now)?);
        }
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(records)
    }
}

/// The KV key of `key` in `table`.
fn kv_key(table: &str, key: &str) -> String {
    format!("{}.{}", encode_key(table), encode_key(key))
}

/// The record a live item holds, its expiry the time left at `now`; an error naming the key
/// when its key or metadata is not what this store writes.
fn decode(bucket: &Bucket, item: &Item, now: u64) -> Result<Record> {
    let bad = |message: String| Error::Decode {
        what: format!(
            "nats store key `{}` in bucket `{}`",
            item.key,
            bucket.name()
        ),
        message,
    };
    let key = item
        .key
        .split_once('.')
        .and_then(|(_, key)| decode_key(key))
        .ok_or_else(|| bad("not a `<table>.<key>` key of micro-nats".into()))?;
    let metadata = match item.headers.get_last(METADATA_HEADER) {
        Some(json) => serde_json::from_str(json.as_str())
            .map_err(|e| bad(format!("header {METADATA_HEADER}: {e}")))?,
        None => BTreeMap::new(),
    };
    Ok(Record {
        key,
        value: item.value.clone(),
        metadata,
        expiry: item
            .expires_at()
            .map(|at| Duration::from_millis(at.saturating_sub(now))),
    })
}

/// Deletes the expired records of every bucket named `<prefix>...`.
async fn sweep(conn: &Conn, prefix: &str) -> Result<usize> {
    let stream_prefix = format!("KV_{prefix}");
    let mut names = conn.jetstream.stream_names();
    let mut buckets = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| conn.err(COMPONENT, "list streams to sweep", e))?;
        if let Some(bucket) = name
            .strip_prefix("KV_")
            .filter(|_| name.starts_with(&stream_prefix))
        {
            buckets.push(bucket.to_string());
        }
    }
    let mut swept = 0;
    for name in buckets {
        if let Some(bucket) = Bucket::open(conn, COMPONENT, &name, false).await? {
            swept += bucket.sweep(">").await?;
        }
    }
    Ok(swept)
}

#[async_trait]
impl Store for NatsStore {
    fn name(&self) -> &str {
        NAME
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        let exact = !query.prefix && query.suffix.is_none();
        if !exact {
            let records = self.scan(&query.namespace).await?;
            return Ok(query.paginate(records.into_iter().filter(|r| query.matches(key, &r.key))));
        }
        validate_key(key)?;
        let namespace = &query.namespace;
        let not_found = || {
            Error::NotFound(format!(
                "key `{key}` in {}/{}",
                namespace.database, namespace.table
            ))
        };
        let Some(bucket) = self.bucket(namespace, false).await? else {
            return Err(not_found());
        };
        let now = now_ms();
        let item = bucket
            .get(&kv_key(&namespace.table, key))
            .await
            .inspect_err(|_| self.forget(namespace))?;
        match item {
            Some(item) if item.live_at(now) => Ok(vec![decode(&bucket, &item, now)?]),
            _ => Err(not_found()),
        }
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        validate_key(&record.key)?;
        let Some(bucket) = self.bucket(namespace, true).await? else {
            return Err(Error::backend_msg(
                COMPONENT,
                NAME,
                format!("bucket for database `{}` missing", namespace.database),
            ));
        };
        let deadline = record.expiry.map(deadline_after);
        let mut headers: HeaderMap = deadline_headers(deadline);
        if !record.metadata.is_empty() {
            let json = serde_json::to_string(&record.metadata).map_err(|e| Error::Decode {
                what: format!("metadata of record `{}`", record.key),
                message: e.to_string(),
            })?;
            headers.insert(METADATA_HEADER, json.as_str());
        }
        let key = kv_key(&namespace.table, &record.key);
        bucket
            .put(&key, headers, record.value)
            .await
            .inspect_err(|_| self.forget(namespace))?;
        Ok(())
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        validate_key(key)?;
        if let Some(bucket) = self.bucket(namespace, false).await? {
            bucket.delete(&kv_key(&namespace.table, key), None).await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        let records = self.scan(&query.namespace).await?;
        let matching = records.into_iter().filter(|r| {
            r.key.starts_with(prefix) && query.suffix.as_deref().is_none_or(|s| r.key.ends_with(s))
        });
        Ok(query.paginate(matching.map(|r| r.key)))
    }
}
