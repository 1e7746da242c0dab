//! [`Store`] on Consul KV: one key per record at `micro/store/<database>/<table>/<key>`, the
//! value a JSON envelope `{"value": <base64>, "metadata": {...}, "expires_at_ms": <unix ms>}`.
//!
//! ## TTL: expiry enforced on read
//!
//! Consul's own KV expiry goes through sessions, whose TTL is at least 10 s and which Consul may
//! take up to twice the TTL to invalidate. Records here carry their expiry time in the envelope
//! instead: a read or list never returns a record past it (and deletes it, only if unchanged,
//! with `?cas=<ModifyIndex>`), and reports the time left as [`Record::expiry`]. Any TTL works,
//! to the millisecond; clients' clocks must agree. An expired record nobody reads stays in KV
//! until the next read or list of it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use micro_core::store::{Namespace, Query, Record, Store, validate_key};
use micro_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::NAME;
use crate::http::ConsulHttp;
use crate::kv::{self, KvEntry};

/// The KV prefix of every record unless set with [`ConsulStore::with_prefix`].
pub(crate) const DEFAULT_PREFIX: &str = "micro/store/";

/// A [`Store`] on Consul KV.
#[derive(Debug)]
pub struct ConsulStore {
    http: ConsulHttp,
    prefix: String,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    value: String,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ConsulStore {
    /// A store on the agent at `address` (`host:port`; blank is [`DEFAULT_ADDRESS`]) with the
    /// token from [`TOKEN_ENV`], if set. Connects on first use: only a malformed address is an
    /// error here.
    ///
    /// [`DEFAULT_ADDRESS`]: crate::DEFAULT_ADDRESS
    /// [`TOKEN_ENV`]: crate::TOKEN_ENV
    pub fn new(address: &str) -> Result<Self> {
        Ok(ConsulStore {
            http: ConsulHttp::new("store", address)?,
            prefix: DEFAULT_PREFIX.into(),
        })
    }

    /// Sends the ACL token `token` instead of the one from `CONSUL_HTTP_TOKEN`; `None` sends
    /// none.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.http.set_token(token);
        self
    }

    /// Keeps records under `prefix` instead of `micro/store/`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.prefix = prefix;
        self
    }

    fn table(&self, namespace: &Namespace) -> Result<String> {
        namespace.validate()?;
        Ok(format!(
            "{}{}/{}/",
            self.prefix, namespace.database, namespace.table
        ))
    }

    /// The record of one entry, `None` when expired (then deleted if still unchanged).
    async fn record(&self, table: &str, entry: &KvEntry, now: u64) -> Result<Option<Record>> {
        let raw = entry.bytes(&self.http)?;
        let envelope: Envelope = serde_json::from_slice(&raw).map_err(|e| {
            self.http.fail_with(
                format!(
                    "the record at key `{}` is not a micro store record",
                    entry.key
                ),
                e,
            )
        })?;
        if let Some(at) = envelope.expires_at_ms
            && at <= now
        {
            if let Err(e) =
                kv::delete(&self.http, &entry.key, false, Some(entry.modify_index)).await
            {
                tracing::debug!(key = %entry.key, "consul store: could not delete an expired record: {e}");
            }
            return Ok(None);
        }
        let value = STANDARD.decode(&envelope.value).map_err(|e| {
            self.http.fail_with(
                format!("the value of record `{}` is not base64", entry.key),
                e,
            )
        })?;
        Ok(Some(Record {
            key: entry.key[table.len()..].to_string(),
            value: value.into(),
            metadata: envelope.metadata,
            expiry: envelope
                .expires_at_ms
                .map(|at| Duration::from_millis(at.saturating_sub(now))),
        }))
    }

    /// Live records of `table` whose key starts with `head`, matching `query`, in key order.
    async fn scan(&self, table: &str, head: &str, key: &str, query: &Query) -> Result<Vec<Record>> {
        let (entries, _) =
            kv::list(&self.http, &format!("{table}{head}"), 0, Duration::ZERO).await?;
        let now = now_ms();
        let mut records = Vec::new();
        for entry in entries.iter().filter(|e| e.key.starts_with(table)) {
            if !query.matches(key, &entry.key[table.len()..]) {
                continue;
            }
            if let Some(record) = self.record(table, entry, now).await? {
                records.push(record);
            }
        }
        Ok(records)
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn name(&self) -> &str {
        NAME
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        let table = self.table(&query.namespace)?;
        if !query.prefix && query.suffix.is_none() {
            validate_key(key)?;
            let full = format!("{table}{key}");
            let missing = || {
                Error::NotFound(format!(
                    "key `{key}` in {}/{}",
                    query.namespace.database, query.namespace.table
                ))
            };
            let Some(entry) = kv::get(&self.http, &full).await? else {
                return Err(missing());
            };
            return match self.record(&table, &entry, now_ms()).await? {
                Some(record) => Ok(vec![record]),
                None => Err(missing()),
            };
        }
        let records = self.scan(&table, key, key, query).await?;
        Ok(query.paginate(records))
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        let table = self.table(namespace)?;
        validate_key(&record.key)?;
        let envelope = Envelope {
            value: STANDARD.encode(&record.value),
            metadata: record.metadata,
            expires_at_ms: record.expiry.map(|ttl| now_ms() + ttl.as_millis() as u64),
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| {
            Error::invalid("record", format!("cannot encode `{}`: {e}", record.key))
        })?;
        kv::put(&self.http, &format!("{table}{}", record.key), body).await
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        let table = self.table(namespace)?;
        validate_key(key)?;
        kv::delete(&self.http, &format!("{table}{key}"), false, None).await?;
        Ok(())
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        let table = self.table(&query.namespace)?;
        let query = Query {
            prefix: true,
            ..query.clone()
        };
        let records = self.scan(&table, prefix, prefix, &query).await?;
        Ok(query.paginate(records.into_iter().map(|r| r.key)))
    }
}
