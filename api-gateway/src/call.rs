//! The call path: a [`CallTarget`] resolved to a method of the service's reflected schema, the
//! JSON transcoded to protobuf, the call made through the core client (discovery, balancing,
//! retries), the reply transcoded back. [`prepare`] is what every call shares (metadata, auth,
//! request id, deadline); unary calls are made here, streamed ones in `stream` (server
//! streaming over HTTP) and `websocket` (any streaming method over a WebSocket).

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use micro_core::client::ServiceChannel;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::metadata::MetadataMap;

use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::request::forward_metadata;
use crate::schema::Schema;
use micro_core::dynamic::{self, DynamicCodec};

/// What a request calls: a method of a registered service.
#[derive(Debug)]
pub(crate) struct CallTarget {
    /// The registered service (`greeter`).
    pub(crate) service: String,
    /// The gRPC service, short or full name, when the request names one.
    pub(crate) grpc_service: Option<String>,
    /// The method (`SayHello`, or a loose form such as `say-hello`).
    pub(crate) method: String,
}

/// The request message, as the client sent it.
#[derive(Debug)]
pub(crate) enum Input {
    /// A JSON body.
    Json(Vec<u8>),
    /// A query string (`GET`), mapped onto fields.
    Query(String),
}

/// What a call is counted and logged as: the registered service and the endpoint
/// (`Greeter.SayHello`). Empty until the method is known.
#[derive(Debug, Default, Clone)]
pub(crate) struct Labels {
    /// The registered service (`greeter`).
    pub(crate) service: String,
    /// The gRPC service's short name and the method (`Greeter.SayHello`).
    pub(crate) endpoint: String,
}

/// The body of `POST /rpc`, as micro's API took it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcRequest {
    service: String,
    endpoint: String,
    #[serde(default)]
    request: serde_json::Value,
}

impl CallTarget {
    /// The target and request of a `POST /rpc` body
    /// (`{"service", "endpoint": "Greeter.SayHello", "request"}`).
    pub(crate) fn from_rpc(body: &[u8]) -> Result<(CallTarget, Input), ApiError> {
        if body.len() > 1
            && body.iter().filter(|b| **b == b'{' || **b == b'[').count() > dynamic::MAX_DEPTH
        {
            // A cheap guard before serde_json's own recursion limit.
            dynamic::from_json(&empty_message(), body, true)?;
        }
        // `request` is re-encoded from a parsed value, which would keep one copy of a repeated
        // key silently: refuse repeats in the whole body first.
        let rpc: RpcRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "/rpc body: {e} (expected {{\"service\", \"endpoint\", \"request\"}})"
            ))
        })?;
        dynamic::check_unique_keys(body)
            .map_err(|e| ApiError::bad_request(format!("/rpc body: {e}")))?;
        let (grpc_service, method) = rpc
            .endpoint
            .rsplit_once('.')
            .map_or((None, rpc.endpoint.as_str()), |(s, m)| (Some(s), m));
        let request = serde_json::to_vec(&rpc.request)
            .map_err(|e| ApiError::bad_request(format!("field `request`: {e}")))?;
        let target = CallTarget {
            grpc_service: grpc_service.map(String::from),
            method: method.to_string(),
            service: rpc.service,
        };
        Ok((target, Input::Json(request)))
    }
}

fn empty_message() -> prost_reflect::MessageDescriptor {
    prost_reflect::DescriptorPool::global()
        .get_message_by_name("google.protobuf.Empty")
        .expect("google.protobuf.Empty is in prost-reflect's global pool")
}

/// Calls `target` with `input`; the labels say what was called, once that is known. A unary
/// method answers its reply; a server-streaming one a stream of replies ([`crate::stream`]);
/// client and bidi streams need a WebSocket ([`crate::websocket`]) and are refused here.
pub(crate) async fn call(
    state: &GatewayState,
    target: &CallTarget,
    headers: &HeaderMap,
    input: Input,
) -> (Labels, Result<Response, ApiError>) {
    let (method, schema) = match resolve_method(state, target).await {
        Ok(found) => found,
        Err(e) => return (Labels::default(), Err(e)),
    };
    let labels = Labels::of(target, &method);
    let result = async {
        if method.is_client_streaming() {
            return Ok(needs_websocket(&labels.endpoint, &method));
        }
        // The body is checked before the token, as it always was for unary calls.
        if method.is_server_streaming() {
            let message = transcode(state, &method, input)?;
            let prepared = prepare(state, method, &schema, headers, &labels).await?;
            crate::stream::respond(state, &labels, prepared, message, headers).await
        } else {
            let request = encode_request(state, &method, input)?;
            let prepared = prepare(state, method, &schema, headers, &labels).await?;
            unary(prepared, request).await
        }
    }
    .await;
    (labels, result)
}

impl Labels {
    /// The labels of a call of `method` on `target`'s service.
    pub(crate) fn of(target: &CallTarget, method: &MethodDescriptor) -> Labels {
        Labels {
            service: target.service.clone(),
            endpoint: format!("{}.{}", method.parent_service().name(), method.name()),
        }
    }
}

/// A call ready to be made: the method, the channel to its service, the request metadata
/// (forwarded headers, the account, the request id) and the deadline. Unary and streamed calls
/// are made from it alike.
pub(crate) struct Prepared {
    /// The method called.
    pub(crate) method: MethodDescriptor,
    /// The service's client channel (discovery, balancing, safe retries).
    channel: ServiceChannel,
    /// The metadata of the request, taken by [`Prepared::request`].
    metadata: MetadataMap,
    /// How long the whole call may take: `--timeout`, or the client's shorter `grpc-timeout`.
    /// Sent as the gRPC deadline; a stream is ended by the gateway when it passes.
    pub(crate) timeout: Duration,
    /// When the call must be over (`timeout` from when it was prepared).
    pub(crate) deadline: tokio::time::Instant,
}

impl Prepared {
    /// The request carrying `message` (a message, or a stream of them) with the prepared
    /// metadata and deadline.
    pub(crate) fn request<T>(&mut self, message: T) -> tonic::Request<T> {
        let metadata = std::mem::take(&mut self.metadata);
        let mut request = tonic::Request::from_parts(metadata, tonic::Extensions::new(), message);
        request.set_timeout(self.timeout);
        request
    }

    /// A gRPC client on the service's channel, ready for a call.
    pub(crate) async fn grpc(&self) -> Result<tonic::client::Grpc<ServiceChannel>, ApiError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| ApiError::from_status(&tonic::Status::from_error(Box::new(e))))?;
        Ok(grpc)
    }

    /// The gRPC path of the method.
    pub(crate) fn path(&self) -> http::uri::PathAndQuery {
        dynamic::path(&self.method)
    }

    /// The codec of the method: any request message out, its output message in.
    pub(crate) fn codec(&self) -> DynamicCodec {
        DynamicCodec::new(self.method.output())
    }
}

/// The request message of `input`: the JSON body, or the query mapped onto fields.
pub(crate) fn transcode(
    state: &GatewayState,
    method: &MethodDescriptor,
    input: Input,
) -> Result<DynamicMessage, ApiError> {
    let body = match input {
        Input::Json(body) => body,
        Input::Query(query) => dynamic::query_to_json(&method.input(), &query)?,
    };
    Ok(dynamic::from_json(
        &method.input(),
        &body,
        state.options.allow_unknown_fields,
    )?)
}

/// The request of a unary call in wire format: the JSON body (or the query mapped onto fields)
/// written straight to protobuf by the input message's plan ([`dynamic::Plan`]), with the bytes
/// and errors of [`transcode`] and an encode.
fn encode_request(
    state: &GatewayState,
    method: &MethodDescriptor,
    input: Input,
) -> Result<Vec<u8>, ApiError> {
    let descriptor = method.input();
    let body = match input {
        Input::Json(body) => body,
        Input::Query(query) => dynamic::query_to_json(&descriptor, &query)?,
    };
    let plan = request_plan(state, &descriptor);
    Ok(plan.encode(&body, state.options.allow_unknown_fields)?)
}

/// The plan of a request message, built once and kept with the schemas (dropped with them).
fn request_plan(
    state: &GatewayState,
    descriptor: &prost_reflect::MessageDescriptor,
) -> Arc<dynamic::Plan> {
    let key = format!("wire plan {}", descriptor.full_name());
    if let Some(plan) = state.schemas.derived::<dynamic::Plan>(&key)
        && plan.descriptor() == descriptor
    {
        return plan;
    }
    let generation = state.schemas.generation();
    let plan = Arc::new(dynamic::Plan::new(descriptor));
    state.schemas.keep(&key, generation, plan.clone());
    plan
}

/// The request header naming the version to call, as go-micro routed by header.
const VERSION_HEADER: &str = "Micro-Version";

/// Everything a call needs but its message: end-to-end headers forwarded as metadata, the auth
/// decision (401/403 here, before anything is sent or upgraded), a request id, the deadline,
/// and the channel: to the nodes of the version named by a `Micro-Version` header when there is
/// one (a canary called on purpose; a version no node has is `503` naming those that exist),
/// else to every node of the service.
pub(crate) async fn prepare(
    state: &GatewayState,
    method: MethodDescriptor,
    schema: &Schema,
    headers: &HeaderMap,
    labels: &Labels,
) -> Result<Prepared, ApiError> {
    let channel = match headers.get(VERSION_HEADER) {
        None => schema.channel.clone(),
        Some(value) => {
            let version = value.to_str().map_err(|_| {
                ApiError::bad_request(format!(
                    "header {VERSION_HEADER} is not a version: it has bytes other than visible \
                     ASCII (give one such as v2 or 1.2.0)"
                ))
            })?;
            let filter = micro_core::client::Filter::try_version(version)
                .map_err(|e| ApiError::bad_request(format!("header {VERSION_HEADER}: {e}")))?;
            schema.versioned(version, filter)
        }
    };
    let mut metadata = MetadataMap::new();
    forward_metadata(headers, &mut metadata);
    if let Some(auth) = &state.auth {
        auth.authorize(headers, &labels.service, &labels.endpoint, &mut metadata)
            .await?;
    }
    if !metadata.contains_key("x-request-id") {
        // One id per call, logged by the gateway and by the service that handles it.
        let id = format!("{:016x}", fastrand::u64(..));
        tracing::Span::current().record("request_id", id.as_str());
        if let Ok(mut value) = id.parse::<tonic::metadata::MetadataValue<_>>() {
            // New on every call: kept out of HTTP/2's header compression table (as traceparent).
            value.set_sensitive(true);
            metadata.insert("x-request-id", value);
        }
    }
    let timeout = micro_core::grpc::grpc_timeout(headers)
        .map_or(state.options.timeout, |t| t.min(state.options.timeout));
    Ok(Prepared {
        method,
        channel,
        metadata,
        timeout,
        deadline: tokio::time::Instant::now() + timeout,
    })
}

/// One request (already in wire format), one reply.
async fn unary(mut prepared: Prepared, request: Vec<u8>) -> Result<Response, ApiError> {
    let mut grpc = prepared.grpc().await?;
    let (path, codec) = (
        prepared.path(),
        dynamic::WireCodec::new(prepared.method.output()),
    );
    // The service's own descriptors decode details of its own types.
    let pool = prepared.method.parent_pool().clone();
    let reply = grpc
        .unary(prepared.request(request), path, codec)
        .await
        .map_err(|status| ApiError::from_service_status(&status, Some(&pool)))?;
    let body = reply_json(reply.get_ref())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A reply as JSON; a reply that cannot be written as JSON is the gateway's `INTERNAL` error.
pub(crate) fn reply_json(reply: &DynamicMessage) -> Result<Vec<u8>, ApiError> {
    dynamic::to_json(reply).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            e.message,
        )
    })
}

/// 426 for a client- or bidi-streaming method called without a WebSocket: it needs one.
fn needs_websocket(endpoint: &str, method: &MethodDescriptor) -> Response {
    let kind = if method.is_server_streaming() {
        "bidi-streaming"
    } else {
        "client-streaming"
    };
    let mut response = ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        tonic::Code::FailedPrecondition,
        format!(
            "{endpoint} is a {kind} method: call it over a WebSocket (GET with `Upgrade: websocket`), one JSON message per text frame"
        ),
    )
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    response
}

/// Finds the method (and the schema it came from); when it is unknown and the cached
/// descriptors are not fresh, fetches them again once (a service may have been redeployed with
/// a new method).
pub(crate) async fn resolve_method(
    state: &GatewayState,
    target: &CallTarget,
) -> Result<(MethodDescriptor, Arc<Schema>), ApiError> {
    let CallTarget {
        service,
        grpc_service,
        method,
    } = target;
    let grpc_service = grpc_service.as_deref();
    let schema = state.schemas.get(service).await?;
    match dynamic::find_method(service, &schema.services, grpc_service, method) {
        Err(dynamic::MethodError::NotFound(_))
            if schema.fetched.elapsed() > Duration::from_secs(2) =>
        {
            state.schemas.forget(service);
            let schema = state.schemas.get(service).await?;
            let method = dynamic::find_method(service, &schema.services, grpc_service, method)?;
            Ok((method, schema))
        }
        result => Ok((result?, schema)),
    }
}
