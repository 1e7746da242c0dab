//! JetStream key-value plumbing shared by the Store, Config and Registry: the reversible name
//! codecs, opening buckets, reading a key's last record with its headers, reading the last
//! record of every key under a filter, and following changes.
//!
//! The async-nats KV API does not hand out message headers, and the deadlines this crate stores
//! travel as headers, so reads go through the bucket's stream: a direct get for one key, an
//! ordered consumer delivering the last message per subject for many (what `nats kv ls` and
//! `kv.keys()` do), which goes on delivering changes for a follow.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{
    self, DirectGetErrorKind, DiscardPolicy, LastRawMessageErrorKind, StorageType,
};
use bytes::Bytes;
use futures::StreamExt;
use micro_core::{Error, Result};

use crate::conn::{Conn, now_ms};

/// The header holding a record's deadline (Store records with a TTL, Registry nodes), in
/// milliseconds since the Unix epoch.
pub const EXPIRES_AT_HEADER: &str = "Micro-Expires-At";

/// The KV header naming a delete or purge.
const KV_OPERATION: &str = "KV-Operation";

/// How long a read of many keys may wait for the next one before it gives up.
const SCAN_IDLE: Duration = Duration::from_secs(10);

/// The key token for `name`: ASCII letters, digits, `-`, `_` and `/` stay as they are; every
/// other byte (`.`, `=`, spaces, UTF-8, ...) becomes `=XX`, its value in upper-case hex. The
/// result is a valid NATS key-value key token (no `.`, `*` or `>`), and [`decode_key`] gives
/// `name` back: `user/1` stays `user/1`, `a.b` becomes `a=2Eb`, `ü` becomes `=C3=BC`.
pub fn encode_key(name: &str) -> String {
    escape(name, '=', |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/')
    })
}

/// The name a key token of [`encode_key`] stands for; `None` when `token` is not one.
pub fn decode_key(token: &str) -> Option<String> {
    unescape(token, '=', |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/')
    })
}

/// The bucket-name form of `name`: ASCII letters, digits and `-` stay; every other byte becomes
/// `_XX` (its upper-case hex), as the Events plugin escapes stream names. [`decode_bucket`] gives
/// `name` back: `orders` stays `orders`, `my_db` becomes `my_5Fdb`.
pub fn encode_bucket(name: &str) -> String {
    escape(name, '_', |b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The name a bucket-name form of [`encode_bucket`] stands for; `None` when it is not one.
pub fn decode_bucket(encoded: &str) -> Option<String> {
    unescape(encoded, '_', |b| b.is_ascii_alphanumeric() || b == b'-')
}

fn escape(name: &str, mark: char, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if keep(byte) {
            out.push(byte as char);
        } else {
            out.push(mark);
            out.push_str(&format!("{byte:02X}"));
        }
    }
    out
}

fn unescape(encoded: &str, mark: char, keep: impl Fn(u8) -> bool) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == mark as u8 {
            let hex = encoded.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
            {
                return None;
            }
            let value = u8::from_str_radix(hex, 16).ok()?;
            if keep(value) {
                return None; // never produced by the encoder: one name, one encoding
            }
            out.push(value);
            i += 3;
        } else if keep(byte) {
            out.push(byte);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// What the last message of a key says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A value.
    Put,
    /// A delete or purge marker.
    Delete,
}

/// The last message of one key.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    /// The key (the subject after `$KV.<bucket>.`), still encoded.
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) headers: HeaderMap,
    /// The stream sequence: the key's revision.
    pub(crate) revision: u64,
    pub(crate) op: Op,
    /// Messages left to deliver after this one (follows only; 0 otherwise).
    pub(crate) pending: u64,
}

impl Item {
    /// The deadline header; `None` without one or when it is not a number.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.headers
            .get_last(EXPIRES_AT_HEADER)
            .and_then(|v| v.as_str().trim().parse().ok())
    }

    /// A value whose deadline, if any, is after `now` (ms).
    pub(crate) fn live_at(&self, now: u64) -> bool {
        self.op == Op::Put && self.expires_at().is_none_or(|at| at > now)
    }

    /// A value past its deadline at `now` (ms).
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        self.op == Op::Put && self.expires_at().is_some_and(|at| at <= now)
    }
}

fn op_of(headers: Option<&HeaderMap>) -> Op {
    match headers.and_then(|h| h.get_last(KV_OPERATION)) {
        Some(op) if matches!(op.as_str(), "DEL" | "PURGE") => Op::Delete,
        _ => Op::Put,
    }
}

/// One key-value bucket.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub(crate) conn: Conn,
    pub(crate) kv: kv::Store,
    component: &'static str,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.kv.name)
            .field("address", &self.conn.address)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// The bucket `name`, created when it does not exist: the one bucket a component keeps.
    pub(crate) async fn create(conn: &Conn, component: &'static str, name: &str) -> Result<Bucket> {
        Bucket::open(conn, component, name, true)
            .await?
            .ok_or_else(|| conn.err_msg(component, format!("bucket `{name}` missing")))
    }

    /// The bucket `name`: `None` when it does not exist and `create` is false; created (file
    /// storage, one value per key) when it does not exist and `create` is true.
    pub(crate) async fn open(
        conn: &Conn,
        component: &'static str,
        name: &str,
        create: bool,
    ) -> Result<Option<Bucket>> {
        let bucket = |kv| Bucket {
            conn: conn.clone(),
            kv,
            component,
        };
        match conn.jetstream.get_stream(format!("KV_{name}")).await {
            Ok(_) => {
                let kv = conn
                    .jetstream
                    .get_key_value(name)
                    .await
                    .map_err(|e| conn.err(component, format!("open bucket `{name}`"), e))?;
                return Ok(Some(bucket(kv)));
            }
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
                _ => {
                    return Err(conn.err(
                        component,
                        format!("open bucket `{name}` (is JetStream enabled? `nats-server -js`)"),
                        e,
                    ));
                }
            },
        }
        if !create {
            return Ok(None);
        }
        // The stream `create_key_value` makes, made here: `create_key_value` first reads the
        // account info in a shape NATS 2.9 does not answer. Two processes creating it at once
        // create the same configuration: JetStream takes the second as a no-op.
        conn.jetstream
            .create_stream(stream::Config {
                name: format!("KV_{name}"),
                description: Some(format!("micro {component}")),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                storage: StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: DiscardPolicy::New,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| conn.err(component, format!("create bucket `{name}`"), e))?;
        let kv = conn
            .jetstream
            .get_key_value(name)
            .await
            .map_err(|e| conn.err(component, format!("open bucket `{name}`"), e))?;
        tracing::info!(bucket = name, address = %conn.address, component, "created nats key-value bucket");
        Ok(Some(bucket(kv)))
    }

    /// The bucket's name.
    pub(crate) fn name(&self) -> &str {
        &self.kv.name
    }

    fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.kv.prefix)
    }

    /// An error of this bucket's component: `what` on key `key` of the bucket.
    pub(crate) fn err(
        &self,
        what: &str,
        key: &str,
        source: impl Into<micro_core::BoxError>,
    ) -> Error {
        self.conn.err(
            self.component,
            format!("{what} `{key}` in bucket `{}`", self.name()),
            source,
        )
    }

    /// The last message of `key`; `None` when the key never existed.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Item>> {
        let subject = self.subject(key);
        let stream = &self.kv.stream;
        let message = if stream.cached_info().config.allow_direct {
            match stream.direct_get_last_for_subject(&subject).await {
                Ok(message) => message,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.err("read", key, e)),
            }
        } else {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => message,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                Err(e) => return Err(self.err("read", key, e)),
            }
        };
        let op = op_of(Some(&message.headers));
        Ok(Some(Item {
            key: key.to_string(),
            value: message.payload,
            headers: message.headers,
            revision: message.sequence,
            op,
            pending: 0,
        }))
    }

    /// Puts `value` with `headers` under `key`; returns its revision once JetStream stored it.
    pub(crate) async fn put(&self, key: &str, headers: HeaderMap, value: Bytes) -> Result<u64> {
        let ack = self
            .conn
            .jetstream
            .publish_with_headers(self.subject(key), headers, value)
            .await
            .map_err(|e| self.err("write", key, e))?
            .await
            .map_err(|e| self.err("write", key, e))?;
        Ok(ack.sequence)
    }

    /// Deletes `key`, only if its revision is still `expected` when given; false when it was
    /// not (someone wrote it meanwhile).
    pub(crate) async fn delete(&self, key: &str, expected: Option<u64>) -> Result<bool> {
        match self.kv.delete_expect_revision(key, expected).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    /// Follows the keys `filter` matches (`>`, `a.>`, ...): first the last message of each,
    /// then every change.
    pub(crate) async fn follow(&self, filter: &str) -> Result<Follow> {
        let consumer = self
            .kv
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.conn.client.new_inbox(),
                description: Some(format!("micro {} follow", self.component)),
                filter_subject: self.subject(filter),
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| self.err("follow", filter, e))?;
        let initial = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| self.err("follow", filter, e))?;
        Ok(Follow {
            messages,
            prefix: self.kv.prefix.clone(),
            initial,
            filter: filter.to_string(),
        })
    }

    /// The last message of every key `filter` matches, deletes included, in stream order.
    pub(crate) async fn scan(&self, filter: &str) -> Result<Vec<Item>> {
        let mut follow = self.follow(filter).await?;
        follow
            .snapshot()
            .await
            .map_err(|e| self.err("list", filter, e))
    }

    /// The keys under `filter` past their deadline now, with their revisions.
    pub(crate) async fn expired(&self, filter: &str) -> Result<Vec<(String, u64)>> {
        let now = now_ms();
        Ok(self
            .scan(filter)
            .await?
            .into_iter()
            .filter(|item| item.expired_at(now))
            .map(|item| (item.key, item.revision))
            .collect())
    }

    /// Deletes the keys under `filter` past their deadline, each only if nobody rewrote it
    /// since it was read; returns how many went.
    pub(crate) async fn sweep(&self, filter: &str) -> Result<usize> {
        let mut swept = 0;
        for (key, revision) in self.expired(filter).await? {
            if self.delete(&key, Some(revision)).await? {
                swept += 1;
            }
        }
        Ok(swept)
    }
}

/// A follow of some keys: [`Follow::snapshot`] first, then [`Follow::next`] for each change.
pub(crate) struct Follow {
    messages: push::Ordered,
    prefix: String,
    /// Messages the consumer had to deliver when created: the snapshot.
    initial: u64,
    filter: String,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Follow {
    /// The last message of every key, as of when the follow started (and whatever changed
    /// while they were read), deletes included.
    pub(crate) async fn snapshot(&mut self) -> std::result::Result<Vec<Item>, FollowError> {
        let mut items = Vec::new();
        if self.initial == 0 {
            return Ok(items);
        }
        loop {
            let item = match tokio::time::timeout(SCAN_IDLE, self.next()).await {
                Err(_) => return Err(FollowError::Idle(SCAN_IDLE)),
                Ok(None) => return Err(FollowError::Ended),
                Ok(Some(item)) => item?,
            };
            let last = item.pending == 0;
            items.push(item);
            if last {
                return Ok(items);
            }
        }
    }

    /// The next message: `None` when the follow ended (the client closed).
    pub(crate) async fn next(&mut self) -> Option<std::result::Result<Item, FollowError>> {
        let message = match self.messages.next().await? {
            Ok(message) => message,
            Err(e) => return Some(Err(FollowError::Consumer(e))),
        };
        let pending = match message.info() {
            Ok(info) => (info.pending, info.stream_sequence),
            Err(e) => return Some(Err(FollowError::Metadata(e.to_string()))),
        };
        let Some(key) = message.subject.as_str().strip_prefix(&self.prefix) else {
            return Some(Err(FollowError::Metadata(format!(
                "subject `{}` outside the bucket",
                message.subject
            ))));
        };
        Some(Ok(Item {
            key: key.to_string(),
            value: message.payload.clone(),
            headers: message.headers.clone().unwrap_or_default(),
            revision: pending.1,
            op: op_of(message.headers.as_ref()),
            pending: pending.0,
        }))
    }
}

/// Why a follow failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FollowError {
    /// The ordered consumer failed (it recovers by itself from lost connections; this is what it
    /// reports meanwhile, or a failure it could not recover from).
    #[error("{0}")]
    Consumer(push::OrderedError),
    /// A message without the JetStream metadata a consumer's messages carry.
    #[error("malformed consumer message: {0}")]
    Metadata(String),
    /// Nothing arrived for too long while reading a snapshot.
    #[error("no message within {0:?} while reading the keys")]
    Idle(Duration),
    /// The client closed.
    #[error("the connection closed")]
    Ended,
}

impl FollowError {
    /// Whether the follow goes on by itself after this (a missed heartbeat: the consumer is
    /// recreated when the connection is back).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, FollowError::Consumer(e) if e.kind() == push::OrderedErrorKind::MissingHeartbeat)
    }
}

/// Headers holding `deadline` (ms since the epoch), or none.
pub(crate) fn deadline_headers(deadline: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(at) = deadline {
        headers.insert(EXPIRES_AT_HEADER, at.to_string().as_str());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_stay_valid_tokens() {
        for name in [
            "user/1",
            "a.b",
            "=",
            "=2E",
            "ü ö",
            "*>",
            "x_y-z",
            "\u{0}",
            &".".repeat(1024),
        ] {
            let token = encode_key(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/=".contains(&b)),
                "{token}"
            );
            assert_eq!(decode_key(&token).as_deref(), Some(name), "{token}");
        }
        assert_eq!(encode_key("user/1"), "user/1");
        assert_eq!(encode_key("a.b"), "a=2Eb");
        assert_eq!(encode_key("ü"), "=C3=BC");
    }

    #[test]
    fn only_encoder_output_decodes() {
        for bad in ["=", "=2", "=2e", "=41", "a.b", "=ZZ", "=FF"] {
            assert_eq!(decode_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn bucket_names_round_trip() {
        assert_eq!(encode_bucket("orders"), "orders");
        assert_eq!(encode_bucket("my_db.v1"), "my_5Fdb_2Ev1");
        for name in ["orders", "my_db.v1", "ü", "a-b"] {
            assert_eq!(decode_bucket(&encode_bucket(name)).as_deref(), Some(name));
        }
        assert_eq!(decode_bucket("a.b"), None);
    }
}
