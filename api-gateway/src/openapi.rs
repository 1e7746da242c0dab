//! `GET /openapi.json` and `GET /{service}/openapi.json`: OpenAPI 3.1 documents of what the
//! gateway routes, built from the services' reflected descriptors (the `Schemas` cache) with
//! the request and reply schemas of `jsonschema`.
//!
//! Each unary method is `POST /{service}/{Service}/{Method}` (the gRPC service's short name,
//! its full name when two share it); each server-streaming method the same, answered with
//! NDJSON or Server-Sent Events. Client- and bidi-streaming methods need a WebSocket, which
//! OpenAPI cannot describe: they are left out and named in `info.description`. The `GET` form
//! with query parameters is not described. A service whose descriptors cannot be fetched is
//! left out of `/openapi.json` (and logged); `/{service}/openapi.json` answers its error.
//!
//! A document is kept until any service's descriptors are dropped (a registry change), or
//! the auth rules change; one that left a service out is kept for [`INCOMPLETE_TTL`] only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use micro_core::auth::{Resource, Rule, verify};
use micro_core::dynamic::{leading_comment, method_comment};
use prost_reflect::{MethodDescriptor, ServiceDescriptor};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::jsonschema::{Direction, OPENAPI_PREFIX, SchemaSet};
use crate::schema::Schema;

/// How long a document that left out a service (its descriptors could not be fetched) is
/// served before the service is tried again.
const INCOMPLETE_TTL: Duration = Duration::from_secs(5);

/// The component naming the gateway's error body.
const ERROR: &str = "micro.gateway.Error";

/// A built document, as sent.
struct Cached {
    body: String,
    /// The auth rules it was built with (their public endpoints need no token).
    rules: Option<Arc<Vec<Rule>>>,
    /// Whether every registered service is in it.
    complete: bool,
    built: Instant,
}

/// The OpenAPI document of every registered service, or of `service`.
pub(crate) async fn document(
    state: &GatewayState,
    service: Option<&str>,
) -> Result<Response, ApiError> {
    let key = format!("openapi.json {}", service.unwrap_or("*"));
    let rules = state.auth.as_ref().map(|auth| auth.rules());
    if let Some(cached) = state.schemas.derived::<Cached>(&key) {
        let same_rules = match (&cached.rules, &rules) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if same_rules && (cached.complete || cached.built.elapsed() < INCOMPLETE_TTL) {
            return Ok(respond(cached.body.clone()));
        }
    }
    let generation = state.schemas.generation();
    let (document, complete) = build(state, service, rules.as_ref().map(|r| r.as_slice())).await?;
    let body = document.to_string();
    let cached = Cached {
        body: body.clone(),
        rules,
        complete,
        built: Instant::now(),
    };
    state.schemas.keep(&key, generation, Arc::new(cached));
    Ok(respond(body))
}

fn respond(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The document, and whether every service it should describe is in it.
async fn build(
    state: &GatewayState,
    only: Option<&str>,
    rules: Option<&[Rule]>,
) -> Result<(Value, bool), ApiError> {
    let names: Vec<String> = match only {
        Some(service) => vec![service.to_string()],
        None => {
            let mut names: Vec<String> = state
                .registry
                .list_services()
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        tonic::Code::Unavailable,
                        format!("the registry cannot be read: {e}"),
                    )
                })?
                .into_iter()
                .map(|s| s.name)
                .collect();
            // A name the paths cannot carry is not routable, so not described.
            names.retain(|name| {
                let routable = !matches!(name.as_str(), "" | "." | "..")
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
                if !routable {
                    tracing::debug!(service = %name, "left out of /openapi.json: not routable by path");
                }
                routable
            });
            names.sort();
            names.dedup();
            names
        }
    };
    let fetched = futures::future::join_all(names.iter().map(|name| state.schemas.get(name))).await;
    let mut complete = true;
    let mut schemas = Vec::with_capacity(names.len());
    for (name, result) in names.iter().zip(fetched) {
        match result {
            Ok(schema) => schemas.push((name.as_str(), schema)),
            Err(error) if only.is_some() => return Err(error),
            Err(error) => {
                tracing::warn!(service = %name, error = %error.message, "left out of /openapi.json: its descriptors cannot be fetched");
                complete = false;
            }
        }
    }
    Ok((describe(&schemas, rules), complete))
}

/// The OpenAPI document of `services` (each a registered name and its schema), with security
/// when `rules` are on.
fn describe(services: &[(&str, Arc<Schema>)], rules: Option<&[Rule]>) -> Value {
    let mut set = SchemaSet::new(OPENAPI_PREFIX);
    let mut paths = Map::new();
    let mut tags = Vec::new();
    let mut websocket_only = Vec::new();
    for (service, schema) in services {
        let mut tag = json!({ "name": service });
        let about: Vec<String> = schema
            .services
            .iter()
            .map(|grpc| {
                let text = leading_comment(grpc.parent_file_descriptor_proto(), grpc.path())
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                format!("`{}`{text}", grpc.full_name())
            })
            .collect();
        if !about.is_empty() {
            tag["description"] = about.join("\n\n").into();
        }
        tags.push(tag);
        for grpc in &schema.services {
            let shared = schema
                .services
                .iter()
                .filter(|s| s.name() == grpc.name())
                .count()
                > 1;
            let segment = if shared {
                grpc.full_name()
            } else {
                grpc.name()
            };
            for method in grpc.methods() {
                if method.is_client_streaming() {
                    websocket_only.push(format!("`{service}` {}", endpoint(grpc, &method, true)));
                    continue;
                }
                let public = rules.map(|rules| {
                    let resource =
                        Resource::new("service", *service, endpoint(grpc, &method, false));
                    verify(rules, None, &resource).is_ok()
                });
                let operation = operation(&mut set, service, segment, &method, public);
                paths.insert(
                    format!("/{service}/{segment}/{}", method.name()),
                    json!({ "post": operation }),
                );
            }
        }
    }
    let mut about = String::from(
        "The HTTP JSON gateway onto the registered gRPC services, described from their \
         reflected descriptors. Bodies follow the proto3 JSON mapping: fields by their \
         lowerCamelCase JSON name (the proto name is accepted too), 64-bit integers as decimal \
         strings, enums by name, bytes as base64, well-known types in their JSON forms; replies \
         carry every field, default values included. The schemas describe the canonical \
         spelling; requests may also use proto field names, enum numbers, and decimal strings \
         for any number. Unknown fields are refused (400) unless the gateway runs with \
         `--allow-unknown-fields`. An error is `{code, message, details}` with \
         the gRPC code, its HTTP status mapped as grpc-gateway does.\n\n\
         Server-streaming methods answer NDJSON, one reply per line (or Server-Sent Events with \
         `Accept: text/event-stream`). Client- and bidi-streaming methods are served over a \
         WebSocket on the same path, which OpenAPI cannot describe: they are left out.",
    );
    if !websocket_only.is_empty() {
        about.push_str(" Here: ");
        about.push_str(&websocket_only.join(", "));
        about.push('.');
    }
    let mut components = Map::new();
    let mut schemas = set.into_definitions();
    schemas.insert(ERROR.into(), error_schema());
    components.insert("schemas".into(), schemas.into());
    components.insert(
        "responses".into(),
        json!({ "Error": {
            "description": "An error: the gRPC code and a message, with the HTTP status of the code.",
            "content": { "application/json": { "schema": { "$ref": format!("{OPENAPI_PREFIX}{ERROR}") } } }
        } }),
    );
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "micro-gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": about,
        },
        "servers": [{ "url": "/" }],
        "tags": tags,
        "paths": paths,
    });
    if rules.is_some() {
        components.insert(
            "securitySchemes".into(),
            json!({ "bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "The access token, as `Authorization: Bearer <token>`; the gateway's \
                    rules decide which endpoints need one (those marked without security are public)."
            } }),
        );
        document["security"] = json!([{ "bearer": [] }]);
    }
    document["components"] = components.into();
    document
}

/// `text` with `<` and `>` as HTML entities, so CommonMark shows them as written.
fn escape_markdown_html(text: &str) -> String {
    text.replace('<', "&lt;").replace('>', "&gt;")
}

/// The operation of one method (unary or server-streaming); `public` is `Some` when auth rules
/// are on: whether the method needs no token.
fn operation(
    set: &mut SchemaSet,
    service: &str,
    segment: &str,
    method: &MethodDescriptor,
    public: Option<bool>,
) -> Value {
    let grpc = &method.parent_service();
    let text = method_comment(method);
    let summary = text
        .as_deref()
        .map(first_sentence)
        .unwrap_or_else(|| endpoint(grpc, method, false));
    let request = set.message(&method.input(), Direction::Request);
    let reply = set.message(&method.output(), Direction::Response);
    let ok = if method.is_server_streaming() {
        json!({
            "description": "The replies, as they come: one JSON reply per line (NDJSON), or with \
                `Accept: text/event-stream` one `data:` event per reply. An error after the \
                first reply ends the stream with `{\"error\": {code, message, details}}` \
                (an `error` event).",
            "content": {
                "application/x-ndjson": { "schema": reply },
                "text/event-stream": { "schema": { "type": "string" } },
            },
        })
    } else {
        json!({
            "description": "The reply.",
            "content": { "application/json": { "schema": reply } },
        })
    };
    let mut operation = json!({
        "operationId": operation_id(&format!("{service}.{segment}.{}", method.name())),
        "tags": [service],
        "summary": summary,
        "requestBody": {
            "description": format!("`{}` (an empty body is the empty message).", method.input().full_name()),
            "required": false,
            "content": { "application/json": { "schema": request } },
        },
        "responses": {
            "200": ok,
            "default": { "$ref": "#/components/responses/Error" },
        },
    });
    // A description is CommonMark (a summary is plain text): a proto comment's `<name>` would be
    // read as an HTML tag (and dropped by the docs page), so angle brackets are escaped.
    let mut description = text
        .as_deref()
        .map(escape_markdown_html)
        .unwrap_or_default();
    let grpc_path = format!("`/{}/{}`", grpc.full_name(), method.name());
    let call = if method.is_server_streaming() {
        format!("Calls the server-streaming gRPC method {grpc_path}.")
    } else {
        format!("Calls the gRPC method {grpc_path}.")
    };
    description = if description.is_empty() {
        call
    } else {
        format!("{description}\n\n{call}")
    };
    operation["description"] = description.into();
    if method.is_server_streaming() {
        operation["x-micro-streaming"] = "server".into();
    }
    if public == Some(true) {
        operation["security"] = json!([]);
    }
    operation
}

/// `Greeter.SayHello` (the auth rules' endpoint name), or with the full gRPC service name.
fn endpoint(grpc: &ServiceDescriptor, method: &MethodDescriptor, full: bool) -> String {
    let service = if full { grpc.full_name() } else { grpc.name() };
    format!("{service}.{}", method.name())
}

/// The first sentence of a comment.
fn first_sentence(text: &str) -> String {
    match text.find(". ") {
        Some(end) => text[..=end].to_string(),
        None => text.to_string(),
    }
}

/// An operation id of letters, digits, `.`, `-` and `_`.
fn operation_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The gateway's error body (`error.rs`).
fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The gateway's error: the gRPC status code (3 INVALID_ARGUMENT, 5 NOT_FOUND, \
            16 UNAUTHENTICATED, ...), a message for a person, and details (empty).",
        "properties": {
            "code": { "type": "integer", "minimum": 0, "maximum": 16, "description": "The gRPC status code." },
            "message": { "type": "string" },
            "details": { "type": "array", "items": {} },
        },
        "required": ["code", "message", "details"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_ids() {
        assert_eq!(
            first_sentence("Replies \"Hello <name>\". Then more."),
            "Replies \"Hello <name>\"."
        );
        assert_eq!(first_sentence("No stop here"), "No stop here");
        assert_eq!(
            operation_id("my svc.greeter.v1.Greeter.SayHello"),
            "my_svc.greeter.v1.Greeter.SayHello"
        );
    }
}
