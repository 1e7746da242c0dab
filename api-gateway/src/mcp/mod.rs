//! `/mcp`: the Model Context Protocol's streamable HTTP transport (JSON-RPC 2.0), so an AI agent
//! can call every registered service as tools, found at run time like every other route.
//!
//! - `POST /mcp` takes one JSON-RPC message (or a batch): `initialize`, `ping`, `tools/list`,
//!   `tools/call`; notifications and responses are accepted with 202. Answers are JSON
//!   (`application/json`). The server keeps no session state: `initialize` issues an
//!   `Mcp-Session-Id` (clients open the event stream only once they have one), any is accepted
//!   afterwards, and `DELETE` has nothing to end.
//! - `GET /mcp` (`Accept: text/event-stream`) is the server's stream: a
//!   `notifications/tools/list_changed` whenever a service (or a version of one) comes or goes.
//! - With auth rules, `tools/list` lists only the tools of services the caller may describe
//!   (`gateway:describe:/{service}`), and `tools/call` is decided per endpoint as the HTTP call.
//! - A browser `Origin` that `--cors-origins` does not allow and that is not the gateway's own
//!   is refused (403), as the transport requires against DNS rebinding.

mod tools;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode, header};
use micro_core::Registry;
use micro_core::registry::EventKind;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::request::read_body;

/// Protocol revisions this server speaks, newest first.
const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// A JSON-RPC error answer.
#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// Answers one request to `/mcp`.
pub(crate) async fn handle(state: &GatewayState, request: Request) -> Result<Response, ApiError> {
    check_origin(state, request.headers())?;
    check_protocol_version(request.headers())?;
    match *request.method() {
        Method::POST => {
            let (headers, body) = read_body(request, state.options.max_body).await?;
            Ok(post(state, &headers, &body).await)
        }
        Method::GET => Ok(listen(state.registry.clone()).await),
        // Ending a session: there is nothing to forget.
        Method::DELETE => Ok(StatusCode::NO_CONTENT.into_response()),
        ref other => Err(ApiError::method_not_allowed(other, "GET, POST, DELETE")),
    }
}

/// Refuses a browser origin that is neither allowed by CORS nor the gateway itself.
fn check_origin(state: &GatewayState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same_origin = host.is_some_and(|host| {
        origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host)
    });
    if same_origin || state.cors.allows(origin) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        tonic::Code::PermissionDenied,
        format!("origin `{origin}` may not use /mcp; allow it with --cors-origins"),
    ))
}

/// A `MCP-Protocol-Version` header, when sent, must name a revision this server speaks.
fn check_protocol_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get("mcp-protocol-version")
        .map(|v| v.to_str().unwrap_or_default())
    {
        Some(version) if !PROTOCOL_VERSIONS.contains(&version) => {
            Err(ApiError::bad_request(format!(
                "MCP-Protocol-Version `{version}` is not supported; supported: {}",
                PROTOCOL_VERSIONS.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

/// One POSTed message or batch: a JSON answer, or 202 when nothing needs one.
async fn post(state: &GatewayState, headers: &HeaderMap, body: &[u8]) -> Response {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            let error = RpcError::new(PARSE_ERROR, format!("the body is not JSON: {e}"));
            let mut response = json_response(&answer(Value::Null, Err(error)));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let initializing = match &parsed {
        Value::Array(messages) => messages.iter().any(is_initialize),
        message => is_initialize(message),
    };
    let answers: Option<Value> = match parsed {
        Value::Array(messages) if messages.is_empty() => Some(answer(
            Value::Null,
            Err(RpcError::new(INVALID_REQUEST, "an empty batch")),
        )),
        Value::Array(messages) => {
            let mut answers = Vec::new();
            for message in messages {
                answers.extend(process(state, headers, message).await);
            }
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        message => process(state, headers, message).await,
    };
    let mut response = match answers {
        Some(answers) => json_response(&answers),
        None => StatusCode::ACCEPTED.into_response(),
    };
    if initializing {
        // The server keeps no per-session state, but clients open the event stream (GET) only
        // once they hold a session id, so one is issued; any id, or none, is accepted later.
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        if let Ok(value) = http::HeaderValue::from_str(&id) {
            response.headers_mut().insert("mcp-session-id", value);
        }
    }
    response
}

fn is_initialize(message: &Value) -> bool {
    message.get("method").and_then(Value::as_str) == Some("initialize")
}

/// Handles one message; `None` for notifications and responses, which get no answer.
async fn process(state: &GatewayState, headers: &HeaderMap, message: Value) -> Option<Value> {
    let Value::Object(message) = message else {
        return Some(answer(
            Value::Null,
            Err(RpcError::new(
                INVALID_REQUEST,
                "a message must be a JSON object",
            )),
        ));
    };
    let id = message.get("id").cloned();
    let method = message.get("method").and_then(Value::as_str);
    let (Some(id), Some(method)) = (id, method) else {
        // A notification (no id) or a response to us (no method): nothing to answer.
        return None;
    };
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(answer(
            id,
            Err(RpcError::new(INVALID_REQUEST, "`jsonrpc` must be \"2.0\"")),
        ));
    }
    let params = message.get("params").cloned().unwrap_or(json!({}));
    let span = tracing::info_span!("mcp", method, tool = tracing::field::Empty);
    let result =
        tracing::Instrument::instrument(dispatch(state, headers, method, params), span).await;
    Some(answer(id, result))
}

async fn dispatch(
    state: &GatewayState,
    headers: &HeaderMap,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    match method {
        "initialize" => Ok(initialize(&params)),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": tools::list(state, headers).await })),
        "tools/call" => {
            let name = params
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, "tools/call needs `name`"))?;
            tracing::Span::current().record("tool", name);
            let arguments = params.get("arguments").cloned().unwrap_or(json!({}));
            tools::call(state, headers, name, arguments).await
        }
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("method `{other}` is not supported; this server offers tools"),
        )),
    }
}

/// The answer to `initialize`: the client's revision when this server speaks it, else the newest.
fn initialize(params: &Value) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| PROTOCOL_VERSIONS.contains(v))
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": true } },
        "serverInfo": { "name": "micro-gateway", "version": env!("CARGO_PKG_VERSION") },
        "instructions": "Each tool calls one method of a service registered with this gateway; \
                         its input is the method's request message in proto3 JSON.",
    })
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn answer(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": e.code, "message": e.message },
        }),
    }
}

/// The server's event stream: `notifications/tools/list_changed` when a service, or a version
/// of one, appears or disappears (not when a node of a known version comes or goes).
async fn listen(registry: Arc<dyn Registry>) -> Response {
    let watcher = match registry.watch(None).await {
        Ok(watcher) => watcher,
        Err(e) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::Unavailable,
                format!("the registry cannot be watched: {e}"),
            )
            .into_response();
        }
    };
    let known: BTreeSet<(String, String)> = registry
        .list_services()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name, s.version))
        .collect();
    let changes = futures::stream::unfold(
        (watcher, known, registry),
        |(mut watcher, mut known, registry)| async move {
            loop {
                let event = match watcher.next().await? {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "registry watch failed; ending the MCP event stream");
                        return None;
                    }
                };
                let key = (event.service.name.clone(), event.service.version.clone());
                let changed = match event.kind {
                    EventKind::Delete => {
                        let left = registry.get_service(&key.0).await.unwrap_or_default();
                        let gone = !left
                            .iter()
                            .any(|s| s.version == key.1 && !s.nodes.is_empty());
                        gone && known.remove(&key)
                    }
                    _ => known.insert(key),
                };
                if changed {
                    let note =
                        json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
                    let event = SseEvent::default().event("message").data(note.to_string());
                    return Some((Ok::<_, Infallible>(event), (watcher, known, registry)));
                }
            }
        },
    );
    Sse::new(changes)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_protocol_revision() {
        assert_eq!(
            initialize(&json!({"protocolVersion": "2025-03-26"}))["protocolVersion"],
            "2025-03-26"
        );
        assert_eq!(
            initialize(&json!({"protocolVersion": "1999-01-01"}))["protocolVersion"],
            PROTOCOL_VERSIONS[0]
        );
        assert_eq!(
            initialize(&json!({}))["capabilities"]["tools"]["listChanged"],
            true
        );
    }

    #[test]
    fn errors_have_the_json_rpc_shape() {
        let error = answer(json!(7), Err(RpcError::new(METHOD_NOT_FOUND, "no")));
        assert_eq!(
            error,
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no"}})
        );
    }
}
