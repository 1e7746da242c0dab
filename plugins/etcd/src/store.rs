//! The etcd [`Store`]: one key per record, TTLs through leases.
//!
//! A record lives at `/micro/store/<database>/<table>/<key>` holding a JSON envelope:
//! `{"value": "<base64 bytes>", "metadata": {...}, "expires_at": <unix ms>}` (`expires_at` only
//! with a TTL). A record with a TTL is attached to a lease of that TTL (rounded up to whole
//! seconds; etcd raises very short ones to its minimum, about 2 s), so etcd deletes it; the
//! deadline in the envelope gives the time left on reads without asking etcd about each lease,
//! and reads never return a record past it even before etcd has deleted it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use etcd_client::{KeyValue, PutOptions};
use micro_core::store::{Namespace, Query, Record, Store, validate_key};
use micro_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::{Conn, EtcdTls, NAME, range};

/// Where the store keys live.
pub const PREFIX: &str = "/micro/store/";

const COMPONENT: &str = "store";

/// Key-value records on etcd.
#[derive(Debug)]
pub struct EtcdStore {
    conn: Conn,
}

/// What one etcd value holds.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The record's bytes, base64.
    value: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, serde_json::Value>,
    /// When the record expires, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

impl EtcdStore {
    /// Connects to etcd at `address` (endpoints comma-separated), failing with an error naming
    /// them when etcd does not answer. `https://` endpoints are verified against the system's
    /// roots; see [`connect_tls`](Self::connect_tls).
    pub async fn connect(address: &str) -> Result<Self> {
        Self::connect_tls(address, &EtcdTls::default()).await
    }

    /// Like [`connect`](Self::connect), dialing `https://` endpoints with `tls`.
    pub async fn connect_tls(address: &str, tls: &EtcdTls) -> Result<Self> {
        Ok(EtcdStore {
            conn: crate::connect(COMPONENT, address, tls).await?,
        })
    }

    /// The store on an already connected client; `endpoints` names it in errors.
    pub fn from_client(client: etcd_client::Client, endpoints: impl Into<String>) -> Self {
        EtcdStore {
            conn: Conn {
                client,
                endpoints: endpoints.into(),
            },
        }
    }

    /// Live records whose key starts with `start` in `namespace`, in key order, read in pages
    /// ([`range`]).
    async fn scan(&self, namespace: &Namespace, start: &str) -> Result<Vec<Record>> {
        let base = table_prefix(namespace)?;
        let from = format!("{base}{start}");
        let (kvs, _) = range::list(&self.conn.client, &from)
            .await
            .map_err(|e| self.conn.err(COMPONENT, format!("read {from}"), e))?;
        let now = now_ms();
        let mut records = Vec::new();
        for kv in &kvs {
            if let Some(record) = decode(kv, &base, now)? {
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// `/micro/store/<database>/<table>/`, after checking the names.
fn table_prefix(namespace: &Namespace) -> Result<String> {
    namespace.validate()?;
    Ok(format!(
        "{PREFIX}{}/{}/",
        namespace.database, namespace.table
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The record one key holds, `None` when past its deadline; an error naming the key when the
/// value is not an envelope.
fn decode(kv: &KeyValue, base: &str, now: u64) -> Result<Option<Record>> {
    let full = String::from_utf8_lossy(kv.key());
    let bad = |message: String| Error::Decode {
        what: format!("etcd store key `{full}`"),
        message,
    };
    let envelope: Envelope = serde_json::from_slice(kv.value()).map_err(|e| bad(e.to_string()))?;
    let value = BASE64
        .decode(envelope.value.as_bytes())
        .map_err(|e| bad(format!("value: {e}")))?;
    let expiry = match envelope.expires_at {
        Some(at) if at <= now => return Ok(None),
        Some(at) => Some(Duration::from_millis(at - now)),
        None => None,
    };
    let key = full.strip_prefix(base).unwrap_or(&full).to_string();
    Ok(Some(Record {
        key,
        value: Bytes::from(value),
        metadata: envelope.metadata,
        expiry,
    }))
}

#[async_trait]
impl Store for EtcdStore {
    fn name(&self) -> &str {
        NAME
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        let exact = !query.prefix && query.suffix.is_none();
        if exact {
            validate_key(key)?;
            let base = table_prefix(&query.namespace)?;
            let full = format!("{base}{key}");
            let mut client = self.conn.client.clone();
            let response = client
                .get(full.as_str(), None)
                .await
                .map_err(|e| self.conn.err(COMPONENT, format!("read {full}"), e))?;
            let record = match response.kvs().first() {
                Some(kv) => decode(kv, &base, now_ms())?,
                None => None,
            };
            return match record {
                Some(record) => Ok(vec![record]),
                None => Err(Error::NotFound(format!(
                    "key `{key}` in {}/{}",
                    query.namespace.database, query.namespace.table
                ))),
            };
        }
        let records = self.scan(&query.namespace, key).await?;
        Ok(query.paginate(records.into_iter().filter(|r| query.matches(key, &r.key))))
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        validate_key(&record.key)?;
        let full = format!("{}{}", table_prefix(namespace)?, record.key);
        let envelope = Envelope {
            value: BASE64.encode(&record.value),
            metadata: record.metadata,
            expires_at: record.expiry.map(|ttl| now_ms() + ttl.as_millis() as u64),
        };
        let value = serde_json::to_vec(&envelope).map_err(|e| Error::Decode {
            what: format!("record `{}`", record.key),
            message: e.to_string(),
        })?;
        let mut client = self.conn.client.clone();
        let mut options = None;
        if let Some(ttl) = record.expiry {
            let secs = (ttl.as_millis().div_ceil(1000) as i64).max(1);
            let lease = client.lease_grant(secs, None).await.map_err(|e| {
                self.conn
                    .err(COMPONENT, format!("grant a lease for {full}"), e)
            })?;
            options = Some(PutOptions::new().with_lease(lease.id()));
        }
        client
            .put(full.as_str(), value, options)
            .await
            .map_err(|e| self.conn.err(COMPONENT, format!("write {full}"), e))?;
        Ok(())
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        validate_key(key)?;
        let full = format!("{}{key}", table_prefix(namespace)?);
        let mut client = self.conn.client.clone();
        client
            .delete(full.as_str(), None)
            .await
            .map_err(|e| self.conn.err(COMPONENT, format!("delete {full}"), e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        let records = self.scan(&query.namespace, prefix).await?;
        let matching = records.into_iter().filter(|r| {
            r.key.starts_with(prefix) && query.suffix.as_deref().is_none_or(|s| r.key.ends_with(s))
        });
        Ok(query.paginate(matching.map(|r| r.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_omits_empty_fields() {
        let envelope = Envelope {
            value: BASE64.encode(b"hi"),
            metadata: BTreeMap::new(),
            expires_at: None,
        };
        assert_eq!(
            serde_json::to_string(&envelope).unwrap(),
            r#"{"value":"aGk="}"#
        );
    }
}
