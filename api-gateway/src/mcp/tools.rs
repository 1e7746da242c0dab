//! The tools: one per unary method of every registered service, named
//! `service.Service.Method`, called through the gateway's own call path (so auth rules, timeouts
//! and transcoding are exactly those of `POST /{service}/{Service}/{Method}`).
//!
//! With auth rules, `tools/list` tells no more than `GET /` does: it lists the tools of only
//! the services the caller may describe (`gateway:describe:/{service}`, as for
//! `GET /{service}`). `tools/call` is decided as the HTTP call is, per endpoint.

use http::HeaderMap;
use prost_reflect::MethodDescriptor;
use serde_json::{Value, json};

use super::{INVALID_PARAMS, RpcError};
use crate::auth::Describer;
use crate::call::{self, CallTarget, Input};
use crate::gateway::GatewayState;

/// Longest tool name MCP clients accept.
const MAX_NAME: usize = 128;

/// A tool: a registered service's method.
struct Tool {
    name: String,
    service: String,
    method: MethodDescriptor,
}

/// Every tool, services in name order, of the services `describer` lets the caller describe
/// (all without one); a service whose descriptors cannot be fetched is left out (and logged),
/// not an error for the whole list.
async fn tools(state: &GatewayState, describer: Option<&Describer>) -> Vec<Tool> {
    let mut names: Vec<String> = match state.registry.list_names().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "MCP tools: the registry cannot be read");
            return Vec::new();
        }
    };
    // Decided before any descriptor is fetched: nothing is read for a hidden service.
    names.retain(|service| describer.is_none_or(|d| d.may_describe(service)));
    let mut tools = Vec::new();
    for service in names {
        let schema = match state.schemas.get(&service).await {
            Ok(schema) => schema,
            Err(e) => {
                tracing::debug!(%service, error = %e.message, "MCP tools: service left out");
                continue;
            }
        };
        for method in schema.services.iter().flat_map(|s| s.methods()) {
            if method.is_client_streaming() || method.is_server_streaming() {
                continue;
            }
            tools.push(Tool {
                name: tool_name(&service, &method),
                service: service.clone(),
                method,
            });
        }
    }
    tools
}

/// The tool `name` looked up directly: `service.Service.Method` read from the right, so a
/// call costs one cached schema rather than the whole registry's.
async fn find(state: &GatewayState, name: &str) -> Option<Tool> {
    let mut parts = name.rsplitn(3, '.');
    let (_method, _grpc_service, service) = (parts.next()?, parts.next()?, parts.next()?);
    let schema = state.schemas.get(service).await.ok()?;
    let method = schema
        .services
        .iter()
        .flat_map(|s| s.methods())
        .filter(|m| !m.is_client_streaming() && !m.is_server_streaming())
        .find(|m| tool_name(service, m) == name)?;
    Some(Tool {
        name: name.to_string(),
        service: service.to_string(),
        method,
    })
}

/// `service.Service.Method`, with characters outside MCP's tool-name set (`A-Za-z0-9_.-`)
/// replaced by `_`, at most 128 characters.
fn tool_name(service: &str, method: &MethodDescriptor) -> String {
    sanitize(&format!(
        "{service}.{}.{}",
        method.parent_service().name(),
        method.name()
    ))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect()
}

/// `tools/list`: each tool with its description and the JSON Schemas of its request and reply;
/// with auth rules, only the tools of services the caller of `headers` may describe.
pub(super) async fn list(state: &GatewayState, headers: &HeaderMap) -> Vec<Value> {
    let describer = match &state.auth {
        Some(auth) => Some(auth.describer(headers).await),
        None => None,
    };
    tools(state, describer.as_ref())
        .await
        .iter()
        .map(|tool| {
            let method = &tool.method;
            let path = format!("{}/{}", method.parent_service().full_name(), method.name());
            let description = match micro_core::dynamic::method_comment(method) {
                Some(comment) => format!("{comment} (gRPC {path} of service `{}`)", tool.service),
                None => format!("Calls gRPC {path} of service `{}`.", tool.service),
            };
            json!({
                "name": tool.name,
                "title": format!("{} {}", tool.service, method.name()),
                "description": description,
                "inputSchema": input_schema(method),
            })
        })
        .collect()
}

/// `tools/call`: the call's reply as text and as `structuredContent`; a failed call (a gRPC
/// error, arguments that do not fit, a refused token) is a result with `isError`, as MCP wants
/// tool failures reported to the model rather than as protocol errors.
pub(super) async fn call(
    state: &GatewayState,
    headers: &HeaderMap,
    name: &str,
    arguments: Value,
) -> Result<Value, RpcError> {
    let found = match find(state, name).await {
        Some(tool) => Some(tool),
        // A name sanitising changed (or a service with dots to spare): the whole list.
        // The call itself is decided per endpoint (`call::call`), so every tool is looked at.
        None => tools(state, None)
            .await
            .into_iter()
            .find(|t| t.name == name),
    };
    let Some(tool) = found else {
        return Err(RpcError::new(
            INVALID_PARAMS,
            format!("unknown tool `{name}`"),
        ));
    };
    if !arguments.is_object() {
        return Err(RpcError::new(
            INVALID_PARAMS,
            "`arguments` must be a JSON object",
        ));
    }
    let target = CallTarget {
        service: tool.service.clone(),
        grpc_service: Some(tool.method.parent_service().full_name().to_string()),
        method: tool.method.name().to_string(),
    };
    let body = serde_json::to_vec(&arguments).unwrap_or_default();
    let (_labels, result) = call::call(state, &target, headers, Input::Json(body)).await;
    let failed =
        |message: String| json!({"content": [{"type": "text", "text": message}], "isError": true});
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            let code = micro_core::grpc::code_name(e.code);
            return Ok(failed(format!("{code}: {}", e.message)));
        }
    };
    let limit = usize::try_from(state.options.max_body)
        .unwrap_or(usize::MAX)
        .max(16 << 20);
    let reply = match axum::body::to_bytes(response.into_body(), limit).await {
        Ok(bytes) => bytes,
        Err(e) => return Ok(failed(format!("INTERNAL: cannot read the reply: {e}"))),
    };
    let structured: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
    Ok(json!({
        "content": [{"type": "text", "text": String::from_utf8_lossy(&reply)}],
        "structuredContent": structured,
        "isError": false,
    }))
}

fn input_schema(method: &MethodDescriptor) -> Value {
    crate::jsonschema::standalone(&method.input(), crate::jsonschema::Direction::Request)
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn tool_names_keep_to_the_allowed_characters() {
        assert_eq!(
            sanitize("greeter.Greeter.SayHello"),
            "greeter.Greeter.SayHello"
        );
        assert_eq!(sanitize("my svc/v1.Greeter.Say"), "my_svc_v1.Greeter.Say");
        assert_eq!(sanitize("ünï.A.B"), "_n_.A.B");
        assert_eq!(sanitize(&"a".repeat(300)).len(), 128);
    }
}
