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
//! With auth rules, the documents tell no more than `GET /` and `GET /{service}` do:
//! `/{service}/openapi.json` is refused (401/403) unless the caller may describe the service
//! (`gateway:describe:/{service}`, decided in `dispatch` before anything is read), and
//! `/openapi.json` is, per caller, the document of only the services it may describe: their
//! paths, tags and websocket-only methods, and only the schemas those paths reach.
//!
//! A document is kept until any service's descriptors are dropped (a registry change), or
//! the auth rules change; one that left a service out is kept for [`INCOMPLETE_TTL`] only. The
//! document of every service is built once and cut down per caller, not built per caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use micro_core::auth::{Resource, Rule, verify};
use micro_core::dynamic::{leading_comment, method_comment};
use prost_reflect::{MethodDescriptor, ServiceDescriptor};
use serde_json::{Map, Value, json};

use crate::auth::Describer;
use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::jsonschema::{Direction, OPENAPI_PREFIX, SchemaSet};
use crate::schema::Schema;

/// How long a document that left out a service (its descriptors could not be fetched) is
/// served before the service is tried again.
const INCOMPLETE_TTL: Duration = Duration::from_secs(5);

/// The component naming the gateway's error body.
const ERROR: &str = "micro.gateway.Error";

/// A built document, as sent, and what cutting it down per caller needs.
struct Cached {
    body: String,
    /// The document `body` is the text of.
    document: Value,
    /// The services described in it (each a tag, its paths tagged so).
    services: Vec<String>,
    /// The client- and bidi-streaming methods left out, each with its service.
    websocket_only: Vec<(String, String)>,
    /// The auth rules it was built with (their public endpoints need no token).
    rules: Option<Arc<Vec<Rule>>>,
    /// Whether every registered service is in it.
    complete: bool,
    /// The service names it was built for. Schemas watch only their own service, so a service
    /// registered since is noticed here: the names are listed again on every request (keys
    /// only, cheap) and a different list means a new document.
    listed: Vec<String>,
    built: Instant,
}

/// The OpenAPI document of every registered service, or of `service`. With `describer` (auth
/// rules on), the document of every service keeps only the services the caller may describe;
/// the caller of `/{service}/openapi.json` must have been let through before.
pub(crate) async fn document(
    state: &GatewayState,
    service: Option<&str>,
    describer: Option<&Describer>,
) -> Result<Response, ApiError> {
    let cached = cached(state, service).await?;
    let Some(describer) = describer.filter(|_| service.is_none()) else {
        return Ok(respond(cached.body.clone()));
    };
    if cached.services.iter().all(|s| describer.may_describe(s)) {
        return Ok(respond(cached.body.clone()));
    }
    Ok(respond(
        view(&cached, |s| describer.may_describe(s)).to_string(),
    ))
}

/// The document of every registered service, or of `service`, from the cache or built now.
async fn cached(state: &GatewayState, service: Option<&str>) -> Result<Arc<Cached>, ApiError> {
    let key = format!("openapi.json {}", service.unwrap_or("*"));
    let rules = state.auth.as_ref().map(|auth| auth.rules());
    let listed = match service {
        Some(service) => vec![service.to_string()],
        None => routable_names(state).await?,
    };
    if let Some(cached) = state.schemas.derived::<Cached>(&key) {
        let same_rules = match (&cached.rules, &rules) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if same_rules
            && cached.listed == listed
            && (cached.complete || cached.built.elapsed() < INCOMPLETE_TTL)
        {
            return Ok(cached);
        }
    }
    let generation = state.schemas.generation();
    let rules_now = rules.as_ref().map(|r| r.as_slice());
    let (built, complete) = build(state, &listed, service.is_some(), rules_now).await?;
    let cached = Arc::new(Cached {
        body: built.document.to_string(),
        document: built.document,
        services: built.services,
        websocket_only: built.websocket_only,
        rules,
        complete,
        listed,
        built: Instant::now(),
    });
    state.schemas.keep(&key, generation, cached.clone());
    Ok(cached)
}

/// The document of `cached` with only the services `keep` names: their tags and paths, the
/// schemas those paths (and the shared responses) reach, and the description naming only
/// their websocket-only methods.
fn view(cached: &Cached, keep: impl Fn(&str) -> bool) -> Value {
    let Some(whole) = cached.document.as_object() else {
        return cached.document.clone();
    };
    let mut document = Map::new();
    for (key, value) in whole {
        if !matches!(key.as_str(), "tags" | "paths" | "components") {
            document.insert(key.clone(), value.clone());
        }
    }
    let tags: Vec<Value> = whole["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|tag| tag["name"].as_str().is_some_and(&keep))
        .cloned()
        .collect();
    document.insert("tags".into(), tags.into());
    // Each operation is tagged with its service (`operation`); a path is kept when all are kept.
    let paths: Map<String, Value> = whole["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, item)| {
            item.as_object().is_some_and(|operations| {
                operations.values().all(|operation| {
                    operation["tags"]
                        .as_array()
                        .is_some_and(|tags| tags.iter().all(|t| t.as_str().is_some_and(&keep)))
                })
            })
        })
        .map(|(path, item)| (path.clone(), item.clone()))
        .collect();
    let mut components = whole["components"].as_object().cloned().unwrap_or_default();
    let all = components
        .remove("schemas")
        .and_then(|s| match s {
            Value::Object(schemas) => Some(schemas),
            _ => None,
        })
        .unwrap_or_default();
    let mut reached = Map::new();
    let mut pending = Vec::new();
    references(&Value::Object(paths.clone()), &mut pending);
    references(&Value::Object(components.clone()), &mut pending);
    while let Some(name) = pending.pop() {
        if reached.contains_key(&name) {
            continue;
        }
        if let Some(schema) = all.get(&name) {
            references(schema, &mut pending);
            reached.insert(name, schema.clone());
        }
    }
    components.insert("schemas".into(), reached.into());
    document.insert("paths".into(), paths.into());
    document.insert("components".into(), components.into());
    let websocket_only: Vec<String> = cached
        .websocket_only
        .iter()
        .filter(|(service, _)| keep(service))
        .map(|(_, method)| method.clone())
        .collect();
    if let Some(info) = document.get_mut("info") {
        info["description"] = about(&websocket_only, cached.rules.is_some()).into();
    }
    Value::Object(document)
}

/// Adds to `names` the component schema names of every `$ref` in `value`.
fn references(value: &Value, names: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix(OPENAPI_PREFIX) {
                            names.push(name.to_string());
                        }
                    }
                    _ => references(field, names),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, names)),
        _ => {}
    }
}

fn respond(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A document built, with what [`view`] needs to cut it down.
struct Built {
    document: Value,
    /// The services in it.
    services: Vec<String>,
    /// The client- and bidi-streaming methods left out, each with its service.
    websocket_only: Vec<(String, String)>,
}

/// Every registered name a path can carry, sorted: the services `/openapi.json` describes.
async fn routable_names(state: &GatewayState) -> Result<Vec<String>, ApiError> {
    let mut names = state.registry.list_names().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::Unavailable,
            format!("the registry cannot be read: {e}"),
        )
    })?;
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
    Ok(names)
}

/// The document of the services `names` (one service's own document when `only`), and whether
/// every one of them is in it.
async fn build(
    state: &GatewayState,
    names: &[String],
    only: bool,
    rules: Option<&[Rule]>,
) -> Result<(Built, bool), ApiError> {
    let fetched = futures::future::join_all(names.iter().map(|name| state.schemas.get(name))).await;
    let mut complete = true;
    let mut schemas = Vec::with_capacity(names.len());
    for (name, result) in names.iter().zip(fetched) {
        match result {
            Ok(schema) => schemas.push((name.as_str(), schema)),
            Err(error) if only => return Err(error),
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
fn describe(services: &[(&str, Arc<Schema>)], rules: Option<&[Rule]>) -> Built {
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
                    websocket_only.push((
                        service.to_string(),
                        format!("`{service}` {}", endpoint(grpc, &method, true)),
                    ));
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
    let methods: Vec<String> = websocket_only.iter().map(|(_, m)| m.clone()).collect();
    let about = about(&methods, rules.is_some());
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
    Built {
        document,
        services: services.iter().map(|(name, _)| name.to_string()).collect(),
        websocket_only,
    }
}

/// The document's `info.description`: what the gateway does with JSON, naming the
/// `websocket_only` methods it leaves out, and with `rules` on, that only what the caller may
/// describe is there.
fn about(websocket_only: &[String], rules: bool) -> String {
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
    if rules {
        about.push_str(
            "\n\nThe gateway's auth rules are on: this document describes only the services the \
             caller may describe (a grant of `gateway:describe:/{service}`, as for \
             `GET /{service}`); send an access token to see the ones your account may.",
        );
    }
    about
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
