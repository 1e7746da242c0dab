//! The Redis [`Store`]: one Redis string per record, Redis's own TTLs.
//!
//! # Keys
//!
//! A record `key` in database `db`, table `table` lives at the Redis key
//! `<db>:<table>:<key>` ([`key_prefix`] gives the part before the key). In the database and
//! table names `%` is written `%25` and `:` is written `%3A`, so the first two `:` of a Redis key
//! always end the names and everything after them is the record key, stored as is: the record
//! `d` of `a:b`/`c` is `a%3Ab:c:d`, the record `c:d` of `a`/`b` is `a:b:c:d`, the record `d` of
//! `a`/`b:c` is `a:b%3Ac:d`. The Redis database number comes from the address
//! (`redis://host:6379/2`).
//!
//! # Values
//!
//! A Redis string holding one version byte (`1`), the length of the metadata JSON as a 4-byte
//! big-endian number, the metadata JSON (nothing when there is none), then the value's bytes
//! unchanged.
//!
//! # TTL
//!
//! A record with an expiry is written with `SET ... PX <ms>` (rounded up to a whole
//! millisecond), so Redis deletes it; one without is written with a plain `SET`, which also
//! clears an earlier TTL. A read sends `GET` and `PTTL` pipelined (one round trip) and reports
//! the time left as [`Record::expiry`]. The two are not atomic (a script or `MULTI` would be,
//! and costs a third to half of the read rate): a write landing between them can lend the
//! newer record's time left to the value read, never an expired value.
//!
//! # Prefix reads and lists
//!
//! Redis keeps no key order, so a prefix or suffix read and `list` walk the Redis database with
//! `SCAN ... MATCH <prefix>*` (never `KEYS`, which blocks the server), then sort the keys and
//! apply offset and limit; only the records of the page are fetched. The walk costs time in
//! proportion to all the keys of the Redis database, not just the table's: keep large
//! unrelated data sets in another Redis database. `SCAN` skips expired keys.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use micro_core::store::{Namespace, Query, Record, Store, validate_key};
use micro_core::{Error, Result};
use redis::Value;
use redis::aio::ConnectionManager;

use crate::NAME;
use crate::conn::Conn;

const COMPONENT: &str = "store";

/// The first byte of every value this store writes.
const VERSION: u8 = 1;

/// Version byte and metadata length.
const HEADER: usize = 5;

/// How many keys `SCAN` looks at per call.
const SCAN_COUNT: usize = 1000;

/// How many records one pipelined read fetches.
const READ_BATCH: usize = 256;

/// A `SCAN` walk taking longer than this is logged at `info`.
const SLOW_SCAN: Duration = Duration::from_secs(1);

/// Key-value records on Redis, with native TTLs. Clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.conn.address)
            .finish_non_exhaustive()
    }
}

/// The Redis key prefix of `namespace`: `<database>:<table>:` with `%` and `:` in the names
/// escaped (`%25`, `%3A`); a record's Redis key is this followed by its key. An error when the
/// namespace is not valid.
pub fn key_prefix(namespace: &Namespace) -> Result<String> {
    redis_key(namespace, "")
}

/// The Redis key of `key` in `namespace`: [`key_prefix`] then the key.
fn redis_key(namespace: &Namespace, key: &str) -> Result<String> {
    namespace.validate()?;
    let mut out =
        String::with_capacity(namespace.database.len() + namespace.table.len() + key.len() + 2);
    for name in [&namespace.database, &namespace.table] {
        for c in name.chars() {
            match c {
                '%' => out.push_str("%25"),
                ':' => out.push_str("%3A"),
                c => out.push(c),
            }
        }
        out.push(':');
    }
    out.push_str(key);
    Ok(out)
}

/// `text` with the glob characters of `SCAN MATCH` escaped, so it matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A TTL in whole milliseconds, rounded up, at least 1.
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The stored form of `record` (see the module documentation).
fn encode(record: &Record) -> Result<Vec<u8>> {
    let metadata = if record.metadata.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&record.metadata).map_err(|e| Error::Decode {
            what: format!("metadata of record `{}`", record.key),
            message: e.to_string(),
        })?
    };
    let length = u32::try_from(metadata.len())
        .map_err(|_| Error::invalid("metadata", "the metadata JSON is over 4 GiB"))?;
    let mut out = Vec::with_capacity(HEADER + metadata.len() + record.value.len());
    out.push(VERSION);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&metadata);
    out.extend_from_slice(&record.value);
    Ok(out)
}

/// The record `key` from its stored bytes; the error names the Redis key and the address.
fn decode(key: String, stored: Vec<u8>, expiry: Option<Duration>, at: &str) -> Result<Record> {
    let bad = |message: String| Error::Decode {
        what: format!("redis store record `{key}` at {at}"),
        message,
    };
    if stored.len() < HEADER || stored[0] != VERSION {
        return Err(bad(format!(
            "not a micro record: {} bytes starting {:?}",
            stored.len(),
            String::from_utf8_lossy(&stored[..stored.len().min(8)])
        )));
    }
    let length = u32::from_be_bytes([stored[1], stored[2], stored[3], stored[4]]) as usize;
    let Some(metadata) = stored.get(HEADER..HEADER + length) else {
        return Err(bad(format!(
            "metadata of {length} bytes announced, {} present",
            stored.len() - HEADER
        )));
    };
    let metadata = if metadata.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(metadata).map_err(|e| bad(format!("metadata: {e}")))?
    };
    let mut value = stored;
    value.drain(..HEADER + length);
    Ok(Record {
        key,
        value: Bytes::from(value),
        metadata,
        expiry,
    })
}

impl RedisStore {
    /// Connects to Redis at `address` (a `redis://` URL, or `host:port`; blank:
    /// [`DEFAULT_ADDRESS`](crate::DEFAULT_ADDRESS)), failing with an error naming the address
    /// when Redis does not answer.
    pub async fn connect(address: &str) -> Result<Self> {
        Ok(RedisStore {
            conn: Conn::connect(COMPONENT, address).await?,
        })
    }

    /// The store on a connection the caller already has; `address` names it in errors.
    pub fn from_client(client: ConnectionManager, address: impl Into<String>) -> Self {
        RedisStore {
            conn: Conn::new(client, address.into()),
        }
    }

    /// The connection the store uses (a clone: it shares the connection), for commands of your
    /// own.
    pub fn client(&self) -> ConnectionManager {
        self.conn.manager()
    }

    /// Fetches the records at the Redis keys `keys`, `None` where there is none (or it has no
    /// time left): `GET` and `PTTL` of each, pipelined in one round trip.
    async fn fetch(&self, keys: &[String]) -> Result<Vec<Option<(Vec<u8>, Option<Duration>)>>> {
        let reply: Vec<Value> = self
            .conn
            .run(
                COMPONENT,
                || match keys {
                    [one] => format!("read {one}"),
                    _ => format!("read {} keys from {}", keys.len(), keys[0]),
                },
                |mut c: ConnectionManager| {
                    let mut pipe = redis::pipe();
                    for key in keys {
                        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
                    }
                    async move { pipe.query_async(&mut c).await }
                },
            )
            .await?;
        if reply.len() != 2 * keys.len() {
            return Err(Error::Decode {
                what: format!("redis reply to a read at {}", self.conn.address),
                message: format!("{} answers to {} commands", reply.len(), 2 * keys.len()),
            });
        }
        let mut found = Vec::with_capacity(keys.len());
        let mut answers = reply.into_iter();
        while let (Some(value), Some(pttl)) = (answers.next(), answers.next()) {
            found.push(match (value, pttl) {
                (Value::Nil, _) => None,
                (Value::BulkString(stored), Value::Int(-1)) => Some((stored, None)),
                // 0 is under a millisecond left: the key is still there (a SCAN lists it), so
                // it is not reported gone yet.
                (Value::BulkString(stored), Value::Int(left)) if left >= 0 => Some((
                    stored,
                    Some(Duration::from_millis(left.unsigned_abs().max(1))),
                )),
                // Gone (-2) since the GET.
                (Value::BulkString(_), Value::Int(_)) => None,
                other => {
                    return Err(Error::Decode {
                        what: format!("redis reply to a read at {}", self.conn.address),
                        message: format!("unexpected {other:?}"),
                    });
                }
            });
        }
        Ok(found)
    }

    /// The Redis keys starting with `prefix` then `start`, without `prefix`: sorted, each once.
    async fn scan(&self, prefix: &str, start: &str) -> Result<Vec<String>> {
        let pattern = format!("{}*", glob_escape(&format!("{prefix}{start}")));
        let started = Instant::now();
        let (mut cursor, mut calls, mut keys) = (0u64, 0usize, Vec::new());
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .conn
                .run(
                    COMPONENT,
                    || format!("scan {pattern}"),
                    |mut c: ConnectionManager| {
                        let mut command = redis::cmd("SCAN");
                        command
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT);
                        async move { command.query_async(&mut c).await }
                    },
                )
                .await?;
            calls += 1;
            for raw in batch {
                let Some(rest) = raw.strip_prefix(prefix.as_bytes()) else {
                    continue;
                };
                let key = String::from_utf8(rest.to_vec()).map_err(|e| Error::Decode {
                    what: format!(
                        "redis store key `{}` at {}",
                        String::from_utf8_lossy(&raw),
                        self.conn.address
                    ),
                    message: e.to_string(),
                })?;
                keys.push(key);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let elapsed = started.elapsed();
        if elapsed > SLOW_SCAN {
            tracing::info!(%pattern, calls, keys = keys.len(), ?elapsed, address = %self.conn.address,
                "slow redis SCAN: it walks every key of the Redis database");
        } else {
            tracing::debug!(%pattern, calls, keys = keys.len(), ?elapsed, "redis SCAN");
        }
        Ok(keys)
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &str {
        NAME
    }

    async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>> {
        if !query.prefix && query.suffix.is_none() {
            validate_key(key)?;
            let full = [redis_key(&query.namespace, key)?];
            let found = self.fetch(&full).await?.pop().flatten();
            return match found {
                Some((stored, expiry)) => Ok(vec![decode(
                    key.to_string(),
                    stored,
                    expiry,
                    &self.conn.address,
                )?]),
                None => Err(Error::NotFound(format!(
                    "key `{key}` in {}/{}",
                    query.namespace.database, query.namespace.table
                ))),
            };
        }
        let prefix = key_prefix(&query.namespace)?;
        let keys: Vec<String> = self
            .scan(&prefix, key)
            .await?
            .into_iter()
            .filter(|k| query.matches(key, k))
            .skip(query.offset)
            .collect();
        let want = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        // Fetch the page; a key gone since the scan (expired, deleted) is skipped and the page
        // filled from the keys after it.
        let mut records = Vec::new();
        let mut rest = keys.as_slice();
        while records.len() < want && !rest.is_empty() {
            let take = (want - records.len()).min(READ_BATCH).min(rest.len());
            let (batch, after) = rest.split_at(take);
            rest = after;
            let full: Vec<String> = batch.iter().map(|k| format!("{prefix}{k}")).collect();
            for (key, found) in batch.iter().zip(self.fetch(&full).await?) {
                if let Some((stored, expiry)) = found {
                    records.push(decode(key.clone(), stored, expiry, &self.conn.address)?);
                }
            }
        }
        Ok(records)
    }

    async fn write(&self, record: Record, namespace: &Namespace) -> Result<()> {
        validate_key(&record.key)?;
        let full = redis_key(namespace, &record.key)?;
        let stored = encode(&record)?;
        let mut command = redis::cmd("SET");
        command.arg(&full).arg(stored);
        if let Some(ttl) = record.expiry {
            command.arg("PX").arg(ttl_ms(ttl));
        }
        let command = &command;
        self.conn
            .run(
                COMPONENT,
                || format!("write {full}"),
                |mut c: ConnectionManager| async move { command.query_async::<()>(&mut c).await },
            )
            .await
    }

    async fn delete(&self, key: &str, namespace: &Namespace) -> Result<()> {
        validate_key(key)?;
        let full = redis_key(namespace, key)?;
        let full = &full;
        self.conn
            .run(
                COMPONENT,
                || format!("delete {full}"),
                |mut c: ConnectionManager| async move {
                    redis::cmd("DEL").arg(full).query_async::<()>(&mut c).await
                },
            )
            .await
    }

    async fn list(&self, prefix: &str, query: &Query) -> Result<Vec<String>> {
        let keys = self.scan(&key_prefix(&query.namespace)?, prefix).await?;
        let suffix = query.suffix.as_deref();
        Ok(query.paginate(
            keys.into_iter()
                .filter(|k| suffix.is_none_or(|s| k.ends_with(s))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_so_keys_cannot_collide() {
        let prefix = |db: &str, table: &str| key_prefix(&Namespace::new(db, table)).unwrap();
        assert_eq!(prefix("micro", "micro"), "micro:micro:");
        let a = format!("{}d", prefix("a:b", "c"));
        let b = format!("{}c:d", prefix("a", "b"));
        let c = format!("{}d", prefix("a", "b:c"));
        assert_eq!([a.as_str(), &b, &c], ["a%3Ab:c:d", "a:b:c:d", "a:b%3Ac:d"]);
        assert_eq!(prefix("100%", "t"), "100%25:t:");
        assert_ne!(prefix("a%3A", "b"), prefix("a:", "b"));
        assert!(key_prefix(&Namespace::new("a/b", "t")).is_err());
    }

    #[test]
    fn glob_characters_match_only_themselves() {
        assert_eq!(glob_escape(r"a*b?[c]\d"), r"a\*b\?\[c\]\\d");
    }

    #[test]
    fn ttls_round_up_to_a_millisecond() {
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn envelope_round_trips_and_refuses_foreign_values() {
        let mut record = Record::new("k", &b"\x00\x01bytes\xff"[..]);
        record
            .metadata
            .insert("kind".into(), serde_json::json!({"a": [1]}));
        let stored = encode(&record).unwrap();
        assert_eq!(stored[0], VERSION);
        let back = decode("k".into(), stored, None, "here").unwrap();
        assert_eq!(back, record);

        let plain = encode(&Record::new("p", "v")).unwrap();
        assert_eq!(plain, b"\x01\x00\x00\x00\x00v");

        let err = decode("x".into(), b"hello".to_vec(), None, "127.0.0.1:6379").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`x`") && text.contains("127.0.0.1:6379"),
            "{text}"
        );
        let truncated = decode("x".into(), b"\x01\x00\x00\x00\x09{}".to_vec(), None, "h");
        assert!(truncated.is_err());
    }
}
