//! The KV endpoints (`/v1/kv/<key>`) shared by the Store and Config: list a prefix, put, delete.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Method, StatusCode};
use micro_core::Result;
use serde::Deserialize;

use crate::http::{ConsulHttp, encode_path};

/// One entry of a KV read (kv API docs, "Read Key"): `Value` is base64, `null` when empty.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) modify_index: u64,
}

impl KvEntry {
    /// The decoded value; an error naming the key when it is not base64.
    pub(crate) fn bytes(&self, http: &ConsulHttp) -> Result<Vec<u8>> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(text) => STANDARD.decode(text).map_err(|e| {
                http.fail_with(format!("the value of key `{}` is not base64", self.key), e)
            }),
        }
    }
}

/// Every entry whose key starts with `prefix` (a missing prefix is 404: no entries), and the
/// `X-Consul-Index`. With `index > 0` this is a blocking query waiting up to `wait`.
pub(crate) async fn list(
    http: &ConsulHttp,
    prefix: &str,
    index: u64,
    wait: Duration,
) -> Result<(Vec<KvEntry>, u64)> {
    let (path, reply, next) = http
        .get_blocking(
            &format!("/v1/kv/{}?recurse", encode_path(prefix)),
            index,
            wait,
        )
        .await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Ok((Vec::new(), next));
    }
    let reply = http.ensure_ok(&Method::GET, &path, reply)?;
    let mut entries: Vec<KvEntry> = http.decode(&path, &reply)?;
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((entries, next))
}

/// The entry at exactly `key`, `None` when missing (404).
pub(crate) async fn get(http: &ConsulHttp, key: &str) -> Result<Option<KvEntry>> {
    let path = format!("/v1/kv/{}", encode_path(key));
    let reply = http.call(Method::GET, &path, None, None).await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let reply = http.ensure_ok(&Method::GET, &path, reply)?;
    let entries: Vec<KvEntry> = http.decode(&path, &reply)?;
    Ok(entries.into_iter().find(|e| e.key == key))
}

/// Writes `value` at `key`; Consul answers `true` or `false`.
pub(crate) async fn put(http: &ConsulHttp, key: &str, value: Vec<u8>) -> Result<()> {
    let path = format!("/v1/kv/{}", encode_path(key));
    let reply = http
        .call_ok(Method::PUT, &path, Some(Bytes::from(value)))
        .await?;
    expect_true(http, &path, &reply.body)
}

/// Deletes `key` (with `recurse`: every key starting with it); only when its `ModifyIndex` is
/// still `cas`, when given.
pub(crate) async fn delete(
    http: &ConsulHttp,
    key: &str,
    recurse: bool,
    cas: Option<u64>,
) -> Result<bool> {
    let mut path = format!("/v1/kv/{}", encode_path(key));
    if recurse {
        path.push_str("?recurse");
    } else if let Some(cas) = cas {
        path.push_str(&format!("?cas={cas}"));
    }
    let reply = http.call_ok(Method::DELETE, &path, None).await?;
    match reply.body.trim_ascii() {
        b"true" => Ok(true),
        b"false" => Ok(false),
        _ => Err(http.fail(format!(
            "DELETE {path} answered neither true nor false: {}",
            reply.text()
        ))),
    }
}

fn expect_true(http: &ConsulHttp, path: &str, body: &[u8]) -> Result<()> {
    match body.trim_ascii() {
        b"true" => Ok(()),
        b"false" => Err(http.fail(format!("PUT {path} was refused (answered false)"))),
        other => Err(http.fail(format!(
            "PUT {path} answered neither true nor false: {}",
            String::from_utf8_lossy(other)
        ))),
    }
}
