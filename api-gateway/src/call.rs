//! The call path: a [`CallTarget`] resolved to a method of the service's reflected schema, the
//! JSON transcoded to protobuf, the call made through the core client (discovery, balancing,
//! retries), the reply transcoded back.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use prost_reflect::MethodDescriptor;

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
#[derive(Debug, Default)]
pub(crate) struct Labels {
    pub(crate) service: String,
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
        let rpc: RpcRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "/rpc body: {e} (expected {{\"service\", \"endpoint\", \"request\"}})"
            ))
        })?;
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

/// Calls `target` with `input`; the labels say what was called, once that is known.
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
    let labels = Labels {
        service: target.service.clone(),
        endpoint: format!("{}.{}", method.parent_service().name(), method.name()),
    };
    let result = invoke(state, &labels, &method, &schema, headers, input).await;
    (labels, result)
}

/// Transcodes, calls through the core client, transcodes back.
async fn invoke(
    state: &GatewayState,
    labels: &Labels,
    method: &MethodDescriptor,
    schema: &Schema,
    headers: &HeaderMap,
    input: Input,
) -> Result<Response, ApiError> {
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            tonic::Code::Unimplemented,
            format!(
                "{} is a streaming method; the gateway maps unary methods",
                labels.endpoint
            ),
        ));
    }
    let body = match input {
        Input::Json(body) => body,
        Input::Query(query) => dynamic::query_to_json(&method.input(), &query)?,
    };
    let message = dynamic::from_json(&method.input(), &body, state.options.allow_unknown_fields)?;
    let mut request = tonic::Request::new(message);
    forward_metadata(headers, request.metadata_mut());
    if let Some(auth) = &state.auth {
        auth.authorize(
            headers,
            &labels.service,
            &labels.endpoint,
            request.metadata_mut(),
        )
        .await?;
    }
    if !request.metadata().contains_key("x-request-id") {
        // One id per call, logged by the gateway and by the service that handles it.
        let id = format!("{:016x}", fastrand::u64(..));
        tracing::Span::current().record("request_id", id.as_str());
        if let Ok(value) = id.parse() {
            request.metadata_mut().insert("x-request-id", value);
        }
    }
    let timeout = micro_core::grpc::grpc_timeout(headers)
        .map_or(state.options.timeout, |t| t.min(state.options.timeout));
    request.set_timeout(timeout);
    let path = dynamic::path(method);
    let mut grpc = tonic::client::Grpc::new(schema.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| ApiError::from_status(&tonic::Status::from_error(Box::new(e))))?;
    let reply = grpc
        .unary(request, path, DynamicCodec::new(method.output()))
        .await
        .map_err(|status| ApiError::from_status(&status))?;
    let body = dynamic::to_json(reply.get_ref()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            e.message,
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Finds the method (and the schema it came from); when it is unknown and the cached
/// descriptors are not fresh, fetches them again once (a service may have been redeployed with
/// a new method).
async fn resolve_method(
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
