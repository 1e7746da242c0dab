//! Reading instances: `/v1/health/service/<name>?passing` entries turned back into per-node
//! records, and the names of the services that carry the micro tag. Both answer blocking
//! queries when given an index.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use micro_core::Result;
use micro_core::registry::{Node, Service};
use serde::Deserialize;

use super::{MICRO_TAG, RECORD_TAG_PREFIX, VERSION_META, join_address};
use crate::http::{ConsulHttp, encode_path};

/// One entry of `/v1/health/service/<name>` (health API docs, "List Service Instances for
/// Service"): `{Node, Service, Checks}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HealthEntry {
    node: HealthNode,
    service: InstanceService,
    #[serde(default)]
    checks: Option<Vec<HealthCheck>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    status: String,
}

/// The micro record of one health entry; `None` when a check is critical (go-micro dropped
/// those on the client side too).
pub(super) fn record_of(entry: HealthEntry) -> Option<Service> {
    let checks = entry.checks.unwrap_or_default();
    if checks.iter().any(|c| c.status == "critical") {
        return None;
    }
    let svc = entry.service;
    let tags = svc.tags.unwrap_or_default();
    let tagged = tags
        .iter()
        .find_map(|t| t.strip_prefix(RECORD_TAG_PREFIX))
        .and_then(|json| match serde_json::from_str::<Service>(json) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(instance = %svc.id, "consul: unreadable micro record tag, rebuilding from the registration: {e}");
                None
            }
        });
    if let Some(mut record) = tagged
        && record.nodes.len() == 1
    {
        record.name = svc.service;
        record.nodes[0].id = svc.id;
        return Some(record);
    }
    // Empty Service.Address means "use the node's address" (health API docs).
    let host = if svc.address.is_empty() {
        entry.node.address
    } else {
        svc.address
    };
    let meta = svc.meta.unwrap_or_default();
    Some(Service {
        name: svc.service,
        version: meta.get(VERSION_META).cloned().unwrap_or_default(),
        nodes: vec![Node {
            id: svc.id,
            address: join_address(&host, svc.port),
            metadata: BTreeMap::new(),
        }],
        ..Default::default()
    })
}

pub(super) async fn instances(
    http: &ConsulHttp,
    name: &str,
    index: u64,
    wait: Duration,
) -> Result<(BTreeMap<String, Service>, u64)> {
    let path = format!("/v1/health/service/{}?passing", encode_path(name));
    let (path, reply, next) = http.get_blocking(&path, index, wait).await?;
    let reply = http.ensure_ok(&Method::GET, &path, reply)?;
    let entries: Vec<HealthEntry> = http.decode(&path, &reply)?;
    let records = entries
        .into_iter()
        .filter(|e| e.service.service == name)
        .filter_map(record_of)
        .map(|r| (r.nodes[0].id.clone(), r))
        .collect();
    Ok((records, next))
}

pub(super) async fn micro_names(
    http: &ConsulHttp,
    index: u64,
    wait: Duration,
) -> Result<(Vec<String>, u64)> {
    let (path, reply, next) = http
        .get_blocking("/v1/catalog/services", index, wait)
        .await?;
    let reply = http.ensure_ok(&Method::GET, &path, reply)?;
    let services: BTreeMap<String, Option<Vec<String>>> = http.decode(&path, &reply)?;
    let names = services
        .into_iter()
        .filter(|(_, tags)| tags.iter().flatten().any(|t| t == MICRO_TAG))
        .map(|(name, _)| name)
        .collect();
    Ok((names, next))
}
