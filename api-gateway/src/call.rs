//! The call path: a [`CallTarget`] resolved to a method of the service's reflected schema, the
//! JSON transcoded to protobuf, the call made through the core client (discovery, balancing,
//! retries), the reply transcoded back. [`prepare`] is what every call shares (metadata, auth,
//! request id, deadline); unary calls are made here, streamed ones in `stream` (server
//! streaming over HTTP) and `websocket` (any streaming method over a WebSocket).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, StatusCode, header};
use micro_core::client::ServiceChannel;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::metrics::{EndpointStats, Metrics};
use crate::request::forward_metadata;
use crate::schema::{Route, Schema};
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
    pub(crate) service: Arc<str>,
    /// The gRPC service's short name and the method (`Greeter.SayHello`).
    pub(crate) endpoint: Arc<str>,
    /// The counters of the endpoint, when the call got as far as its method.
    pub(crate) stats: Option<Arc<EndpointStats>>,
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
    let (route, schema) = match resolve_method(state, target).await {
        Ok(found) => found,
        Err(e) => return (Labels::default(), Err(e)),
    };
    let labels = Labels::of(state, &schema, &route);
    let method = &route.method;
    let result = async {
        if method.is_client_streaming() {
            return Ok(needs_websocket(&labels.endpoint, method));
        }
        // The body is checked before the token, as it always was for unary calls.
        if method.is_server_streaming() {
            let message = transcode(state, method, input)?;
            let prepared = prepare(state, &route, &schema, headers, &labels).await?;
            crate::stream::respond(state, &labels, prepared, message, headers).await
        } else {
            let request = encode_request(state, &route, input)?;
            let prepared = prepare(state, &route, &schema, headers, &labels).await?;
            unary(prepared, request).await
        }
    }
    .await;
    (labels, result)
}

impl Labels {
    /// The labels of a call of `route`, a method of `schema`.
    pub(crate) fn of(state: &GatewayState, schema: &Schema, route: &Route) -> Labels {
        Labels {
            service: schema.name.clone(),
            endpoint: route.endpoint.clone(),
            stats: Some(route.stats(&state.metrics, &schema.name).clone()),
        }
    }

    /// Records one request of these labels.
    pub(crate) fn record(&self, metrics: &Metrics, status: u16, elapsed: Duration) {
        match &self.stats {
            Some(stats) => stats.record(status, elapsed),
            None => metrics.record(&self.service, &self.endpoint, status, elapsed),
        }
    }
}

/// A call ready to be made: the method, the channel to its service, the request metadata
/// (forwarded headers, the account, the request id) and the deadline. Unary and streamed calls
/// are made from it alike.
pub(crate) struct Prepared {
    /// The method called.
    pub(crate) method: MethodDescriptor,
    /// What calls of it need (its path, its plans).
    route: Arc<Route>,
    /// The service's client channel (discovery, balancing, safe retries).
    channel: ServiceChannel,
    /// The metadata of the request, taken by [`Prepared::request`].
    metadata: MetadataMap,
    /// How long the whole call may take: `--timeout`, or the client's shorter `grpc-timeout`.
    /// Sent as the gRPC deadline; a stream is ended by the gateway when it passes.
    pub(crate) timeout: Duration,
    /// `timeout` as the `grpc-timeout` value, when it is the one kept ready
    /// ([`grpc_timeout_value`]).
    grpc_timeout: Option<AsciiMetadataValue>,
    /// When the call must be over (`timeout` from when it was prepared).
    pub(crate) deadline: tokio::time::Instant,
}

impl Prepared {
    /// The request carrying `message` (a message, or a stream of them) with the prepared
    /// metadata and deadline.
    pub(crate) fn request<T>(&mut self, message: T) -> tonic::Request<T> {
        let metadata = MetadataMap::from_headers(self.headers());
        tonic::Request::from_parts(metadata, tonic::Extensions::new(), message)
    }

    /// The prepared metadata and deadline as request headers (taken: once per call).
    fn headers(&mut self) -> HeaderMap {
        let mut metadata = std::mem::take(&mut self.metadata);
        // The kept value of the gateway's own `--timeout`, else the one `set_timeout` writes.
        let timeout = self
            .grpc_timeout
            .clone()
            .or_else(|| grpc_timeout_value(self.timeout));
        if let Some(value) = timeout {
            metadata.insert(GRPC_TIMEOUT.clone(), value);
        }
        metadata.into_headers()
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
        self.route.path.clone()
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
fn encode_request(state: &GatewayState, route: &Route, input: Input) -> Result<Vec<u8>, ApiError> {
    let body = match input {
        Input::Json(body) => body,
        Input::Query(query) => dynamic::query_to_json(&route.method.input(), &query)?,
    };
    Ok(route
        .request_plan()
        .encode(&body, state.options.allow_unknown_fields)?)
}

/// The request header naming the version to call, as go-micro routed by header.
const VERSION_HEADER: &str = "Micro-Version";
/// [`VERSION_HEADER`] as looked up: a name parsed once, not on every request.
const VERSION_HEADER_NAME: HeaderName = HeaderName::from_static("micro-version");
/// The request id's metadata key, parsed once.
static REQUEST_ID: LazyLock<AsciiMetadataKey> =
    LazyLock::new(|| AsciiMetadataKey::from_static("x-request-id"));
/// The deadline's metadata key, as tonic's `Request::set_timeout` sets it.
static GRPC_TIMEOUT: LazyLock<AsciiMetadataKey> =
    LazyLock::new(|| AsciiMetadataKey::from_static("grpc-timeout"));

/// The `grpc-timeout` value of `timeout`, exactly as tonic's `Request::set_timeout` writes it:
/// kept for the gateway's own `--timeout`, the deadline of nearly every call, so that it is
/// not formatted and parsed again on each.
pub(crate) fn grpc_timeout_value(timeout: Duration) -> Option<AsciiMetadataValue> {
    let mut request = tonic::Request::new(());
    request.set_timeout(timeout);
    request.metadata().get(&*GRPC_TIMEOUT).cloned()
}

/// The request id header, as the client may send it and the service receives it.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Gives the request an id: the client's `x-request-id` when it is text, else a new one put in
/// its place, so the gateway's span, its logs and the called service all carry the same id.
pub(crate) fn give_request_id(headers: &mut HeaderMap) {
    if request_id(headers).is_empty()
        && let Ok(value) = http::HeaderValue::from_bytes(&new_request_id())
    {
        headers.insert(REQUEST_ID_HEADER, value);
    }
}

/// The request's id, once [`give_request_id`] gave it one.
pub(crate) fn request_id(headers: &HeaderMap) -> &str {
    headers
        .get(&REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// A new request id: 16 lowercase hex digits (64 random bits), written without formatting.
fn new_request_id() -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u64(..);
    let mut id = [0u8; 16];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((bits >> (60 - 4 * i)) & 0xf) as usize];
    }
    id
}

/// Everything a call needs but its message: end-to-end headers forwarded as metadata (with the
/// request id [`give_request_id`] gave), the auth decision (401/403 here, before anything is sent or
/// upgraded), the deadline,
/// and the channel: to the nodes of the version named by a `Micro-Version` header when there is
/// one (a canary called on purpose; a version no node has is `503` naming those that exist),
/// else to every node of the service.
pub(crate) async fn prepare(
    state: &GatewayState,
    route: &Arc<Route>,
    schema: &Schema,
    headers: &HeaderMap,
    labels: &Labels,
) -> Result<Prepared, ApiError> {
    let channel = match headers.get(VERSION_HEADER_NAME) {
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
    if let Some(value) = metadata.get_mut(&*REQUEST_ID) {
        // New on every call: kept out of HTTP/2's header compression table (as traceparent).
        value.set_sensitive(true);
    }
    let timeout = micro_core::grpc::grpc_timeout(headers)
        .map_or(state.options.timeout, |t| t.min(state.options.timeout));
    let grpc_timeout = if timeout == state.options.timeout {
        state.grpc_timeout.clone()
    } else {
        None
    };
    Ok(Prepared {
        method: route.method.clone(),
        route: route.clone(),
        channel,
        metadata,
        timeout,
        grpc_timeout,
        deadline: tokio::time::Instant::now() + timeout,
    })
}

/// One request (already in wire format), one reply: framed and read by [`crate::unary`], the
/// reply written as JSON straight from its wire bytes where its plan can.
async fn unary(mut prepared: Prepared, request: Vec<u8>) -> Result<Response, ApiError> {
    // The service's own descriptors decode details of its own types.
    let pool = prepared.method.parent_pool().clone();
    let headers = prepared.headers();
    let wire = crate::unary::call(
        &mut prepared.channel,
        prepared.route.path.clone(),
        headers,
        &request,
    )
    .await
    .map_err(|status| ApiError::from_service_status(&status, Some(&pool)))?;
    let plan = prepared.route.reply_plan();
    let body = match plan.write(&wire) {
        Some(json) => json,
        None => {
            let reply = DynamicMessage::decode(plan.descriptor().clone(), wire).map_err(|e| {
                let status = tonic::Status::internal(format!(
                    "the reply is not a valid {}: {e}",
                    plan.descriptor().full_name()
                ));
                ApiError::from_service_status(&status, Some(&pool))
            })?;
            reply_json(&reply)?
        }
    };
    // The response `([(CONTENT_TYPE, "application/json")], body)` makes, without parsing the
    // content type (nor setting `application/octet-stream` first) on every call.
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
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
) -> Result<(Arc<Route>, Arc<Schema>), ApiError> {
    let CallTarget {
        service,
        grpc_service,
        method,
    } = target;
    let grpc_service = grpc_service.as_deref();
    let schema = state.schemas.get(service).await?;
    let (method, schema) =
        match dynamic::find_method(service, &schema.services, grpc_service, method) {
            Err(dynamic::MethodError::NotFound(_))
                if schema.fetched.elapsed() > Duration::from_secs(2) =>
            {
                state.schemas.forget(service);
                let schema = state.schemas.get(service).await?;
                let method = dynamic::find_method(service, &schema.services, grpc_service, method)?;
                (method, schema)
            }
            result => (result?, schema),
        };
    // `find_method` searched this schema's services: the method has a route in it.
    let route = schema.route(&method).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            format!(
                "{} has no route in the schema it was found in",
                method.full_name()
            ),
        )
    })?;
    Ok((route, schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_grpc_timeout_is_what_set_timeout_writes() {
        for timeout in [
            Duration::from_millis(1),
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(3600),
            Duration::from_nanos(123_456_789_123),
        ] {
            let mut request = tonic::Request::new(());
            request.set_timeout(timeout);
            let expected = request.metadata().get("grpc-timeout").cloned();
            assert!(expected.is_some());
            assert_eq!(grpc_timeout_value(timeout), expected, "{timeout:?}");
        }
        assert_eq!(
            grpc_timeout_value(Duration::from_secs(30)).unwrap(),
            "30000000u"
        );
    }

    #[test]
    fn a_request_keeps_the_clients_text_id_or_gets_a_new_one() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("abc-123"));
        give_request_id(&mut headers);
        assert_eq!(request_id(&headers), "abc-123");
        for given in [None, Some(&b""[..]), Some(&b"caf\xe9"[..])] {
            let mut headers = HeaderMap::new();
            if let Some(given) = given {
                headers.insert(
                    "x-request-id",
                    http::HeaderValue::from_bytes(given).unwrap(),
                );
            }
            give_request_id(&mut headers);
            let id = request_id(&headers);
            assert_eq!(id.len(), 16, "{given:?} -> {id}");
            assert_eq!(headers.get_all("x-request-id").iter().count(), 1);
        }
    }

    #[test]
    fn request_ids_are_16_lowercase_hex_digits() {
        let ids: Vec<[u8; 16]> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            let text = std::str::from_utf8(id).unwrap();
            assert!(
                text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{text}"
            );
            // The same digits `format!("{:016x}")` writes.
            assert_eq!(
                format!("{:016x}", u64::from_str_radix(text, 16).unwrap()),
                text
            );
        }
        assert!(ids.windows(2).any(|w| w[0] != w[1]), "random");
    }
}
