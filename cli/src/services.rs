//! `micro services`, `micro describe` and `micro health`: what the registry holds, and what each
//! node says about itself.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use micro_core::dynamic;
use micro_core::registry::{Node, Service};
use micro_core::{Client, Registry};
use prost_reflect::{Kind, MessageDescriptor, MethodDescriptor, ServiceDescriptor};
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::error::CliError;
use crate::output::{self, Format};
use crate::template;

/// How long a node may take to answer a health check or reflection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `micro services`: one row per name, with its versions and live nodes.
pub(crate) async fn list(registry: &dyn Registry, format: Format) -> Result<(), CliError> {
    let names = registry.list_names().await.map_err(unreachable(registry))?;
    let mut rows = Vec::new();
    for name in names {
        let versions = registry
            .get_service(&name)
            .await
            .map_err(unreachable(registry))?;
        let nodes: usize = versions.iter().map(|v| v.nodes.len()).sum();
        let versions: BTreeSet<String> = versions.into_iter().map(|v| v.version).collect();
        rows.push((name, versions.into_iter().collect::<Vec<_>>(), nodes));
    }
    match format {
        Format::Json => output::json(
            &Value::Array(
                rows.iter()
                    .map(|(name, versions, nodes)| json!({"name": name, "versions": versions, "nodes": nodes}))
                    .collect(),
            ),
            format,
        ),
        Format::Text if rows.is_empty() => {
            eprintln!("no services registered in `{}`", registry.name());
        }
        Format::Text => output::table(
            &["SERVICE", "VERSIONS", "NODES"],
            &rows
                .into_iter()
                .map(|(name, versions, nodes)| vec![name, versions.join(", "), nodes.to_string()])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// The registered versions of `service`; unknown is a usage error listing the known ones.
pub(crate) async fn registered(
    registry: &dyn Registry,
    service: &str,
) -> Result<Vec<Service>, CliError> {
    let found = registry
        .get_service(service)
        .await
        .map_err(unreachable(registry))?;
    if !found.is_empty() {
        return Ok(found);
    }
    let known = registry.list_names().await.map_err(unreachable(registry))?;
    Err(CliError::Usage(format!(
        "unknown service `{service}` in registry `{}`; registered: {}",
        registry.name(),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

fn unreachable(registry: &dyn Registry) -> impl Fn(micro_core::Error) -> CliError + '_ {
    move |e| {
        CliError::Failed(format!(
            "the registry `{}` cannot be read: {e}",
            registry.name()
        ))
    }
}

/// One node's answer to a gRPC health check.
struct Health {
    status: String,
    serving: bool,
    latency: Duration,
}

async fn check(client: &Client, service: &str, node: &Node) -> Health {
    let started = Instant::now();
    let mut health = HealthClient::new(client.node_channel(service, &node.id));
    let answer = tokio::time::timeout(
        PROBE_TIMEOUT,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    let latency = started.elapsed();
    let (status, serving) = match answer {
        Ok(Ok(reply)) => {
            let status = ServingStatus::try_from(reply.into_inner().status)
                .unwrap_or(ServingStatus::Unknown);
            (
                status.as_str_name().to_string(),
                status == ServingStatus::Serving,
            )
        }
        Ok(Err(status)) => (
            format!(
                "{}: {}",
                micro_core::grpc::code_name(status.code()),
                status.message()
            ),
            false,
        ),
        Err(_) => (
            format!(
                "no answer within {}",
                humantime::format_duration(PROBE_TIMEOUT)
            ),
            false,
        ),
    };
    Health {
        status,
        serving,
        latency,
    }
}

impl Health {
    fn latency_ms(&self) -> f64 {
        self.latency.as_secs_f64() * 1000.0
    }
}

/// A node as a table row: id, address, version, health, then `last`.
fn node_row(version: &Service, node: &Node, health: &Health, last: String) -> Vec<String> {
    vec![
        node.id.clone(),
        node.address.clone(),
        version.version.clone(),
        output::status(&health.status, health.serving),
        last,
    ]
}

/// A node as JSON: `id`, `address`, `version`, `status`, `serving`.
fn node_json(version: &Service, node: &Node, health: &Health) -> serde_json::Map<String, Value> {
    let value = json!({
        "id": node.id, "address": node.address, "version": version.version,
        "status": health.status, "serving": health.serving,
    });
    match value {
        Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    }
}

fn nodes_of(versions: &[Service]) -> Vec<(&Service, &Node)> {
    versions
        .iter()
        .flat_map(|v| v.nodes.iter().map(move |n| (v, n)))
        .collect()
}

/// `micro health`: every node's gRPC health and latency; fails (exit 1) unless all serve.
pub(crate) async fn health(client: &Client, service: &str, format: Format) -> Result<(), CliError> {
    let versions = registered(&**client.registry(), service).await?;
    let nodes = nodes_of(&versions);
    let checks =
        futures::future::join_all(nodes.iter().map(|(_, node)| check(client, service, node))).await;
    match format {
        Format::Json => output::json(
            &Value::Array(
                nodes
                    .iter()
                    .zip(&checks)
                    .map(|((version, node), health)| {
                        let mut fields = node_json(version, node, health);
                        fields.insert("latency_ms".into(), json!(health.latency_ms()));
                        Value::Object(fields)
                    })
                    .collect(),
            ),
            format,
        ),
        Format::Text => output::table(
            &["NODE", "ADDRESS", "VERSION", "STATUS", "LATENCY"],
            &nodes
                .iter()
                .zip(&checks)
                .map(|((version, node), health)| {
                    node_row(
                        version,
                        node,
                        health,
                        format!("{:.1}ms", health.latency_ms()),
                    )
                })
                .collect::<Vec<_>>(),
        ),
    }
    let sick = checks.iter().filter(|h| !h.serving).count();
    match (nodes.len(), sick) {
        (0, _) => Err(CliError::Failed(format!(
            "`{service}` is registered but has no live node"
        ))),
        (_, 0) => Ok(()),
        (all, sick) => Err(CliError::Failed(format!(
            "{sick} of {all} nodes of `{service}` are not serving"
        ))),
    }
}

/// `micro describe`: nodes with health, and every endpoint with its request and response.
pub(crate) async fn describe(
    client: &Client,
    service: &str,
    format: Format,
) -> Result<(), CliError> {
    let versions = registered(&**client.registry(), service).await?;
    let nodes = nodes_of(&versions);
    let checks =
        futures::future::join_all(nodes.iter().map(|(_, node)| check(client, service, node))).await;
    let grpc_services = if nodes.is_empty() {
        Vec::new()
    } else {
        descriptors(client, service, None).await?
    };
    let methods: Vec<MethodDescriptor> = grpc_services.iter().flat_map(|s| s.methods()).collect();
    match format {
        Format::Json => {
            let mut enums = serde_json::Map::new();
            let endpoints: Vec<Value> = methods
                .iter()
                .map(|m| {
                    for message in [m.input(), m.output()] {
                        collect_enums(&message, &mut enums, &mut Vec::new());
                    }
                    json!({
                        "name": format!("{}.{}", m.parent_service().name(), m.name()),
                        "method": format!("{}/{}", m.parent_service().full_name(), m.name()),
                        "streaming": streaming(m),
                        "description": dynamic::method_comment(m),
                        "request": message_json(&m.input()),
                        "response": message_json(&m.output()),
                    })
                })
                .collect();
            let nodes: Vec<Value> = nodes
                .iter()
                .zip(&checks)
                .map(|((version, node), health)| {
                    let mut fields = node_json(version, node, health);
                    fields.insert("metadata".into(), json!(node.metadata));
                    Value::Object(fields)
                })
                .collect();
            output::json(
                &json!({"name": service, "nodes": nodes, "endpoints": endpoints, "enums": enums}),
                format,
            );
        }
        Format::Text => {
            output::line(&output::bold(service));
            output::table(
                &["NODE", "ADDRESS", "VERSION", "HEALTH", "METADATA"],
                &nodes
                    .iter()
                    .zip(&checks)
                    .map(|((version, node), health)| {
                        let metadata = node.metadata.iter().map(|(k, v)| format!("{k}={v}"));
                        node_row(
                            version,
                            node,
                            health,
                            metadata.collect::<Vec<_>>().join(" "),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            for method in &methods {
                output::line("");
                let name = format!("{}.{}", method.parent_service().name(), method.name());
                let kind = streaming(method);
                let kind = if kind == "unary" {
                    String::new()
                } else {
                    format!("  ({kind} streaming)")
                };
                output::line(&format!("{}{kind}", output::bold(&name)));
                if let Some(comment) = dynamic::method_comment(method) {
                    output::line(&format!("  {comment}"));
                }
                for (label, message) in [("request", method.input()), ("response", method.output())]
                {
                    output::line(&format!(
                        "  {label} {}  {}",
                        message.full_name(),
                        template::template(&message)
                    ));
                    for (path, ty) in template::fields(&message) {
                        output::line(&format!("    {path}: {ty}"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn message_json(message: &MessageDescriptor) -> Value {
    json!({
        "type": message.full_name(),
        "template": template::template(message).to_value(),
        "fields": template::fields(message).into_iter()
            .map(|(name, ty)| json!({"name": name, "type": ty}))
            .collect::<Vec<_>>(),
    })
}

fn collect_enums(
    message: &MessageDescriptor,
    enums: &mut serde_json::Map<String, Value>,
    visiting: &mut Vec<String>,
) {
    if visiting.iter().any(|v| v == message.full_name()) {
        return;
    }
    visiting.push(message.full_name().to_string());
    for field in message.fields() {
        match field.kind() {
            Kind::Enum(e) => {
                let values: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
                enums.insert(e.full_name().to_string(), json!(values));
            }
            Kind::Message(inner) => collect_enums(&inner, enums, visiting),
            _ => {}
        }
    }
    visiting.pop();
}

/// `unary`, `server`, `client` or `bidi`.
pub(crate) fn streaming(method: &MethodDescriptor) -> &'static str {
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => "unary",
        (false, true) => "server",
        (true, false) => "client",
        (true, true) => "bidi",
    }
}

/// The routable gRPC services of `service` (of one node when `node` is given), by reflection.
pub(crate) async fn descriptors(
    client: &Client,
    service: &str,
    node: Option<&str>,
) -> Result<Vec<ServiceDescriptor>, CliError> {
    let channel = match node {
        Some(node) => client.node_channel(service, node),
        None => client.channel(service),
    };
    let (pool, names) = tokio::time::timeout(PROBE_TIMEOUT, dynamic::reflection::fetch(channel))
        .await
        .map_err(|_| {
            CliError::Failed(format!(
                "reflection on `{service}` gave no answer within {}",
                humantime::format_duration(PROBE_TIMEOUT)
            ))
        })?
        .map_err(|status| match status.code() {
            tonic::Code::NotFound => CliError::Usage(status.message().to_string()),
            _ => crate::error::status(
                &format!("cannot read the methods of `{service}` by reflection"),
                &status,
            ),
        })?;
    Ok(names
        .iter()
        .filter_map(|n| pool.get_service_by_name(n))
        .collect())
}
