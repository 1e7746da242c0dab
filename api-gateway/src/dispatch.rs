//! Every HTTP request: admitted (header size, CORS preflight, rate limit), routed by its path
//! (`route`), answered here for the gateway's own pages or by the call path (`call`), then
//! counted and logged. With auth rules, `GET /` and `GET /{service}` are decided like calls
//! (resources `gateway:describe:/` and `gateway:describe:/{service}`), and node addresses are
//! shown only under a grant of `gateway:nodes:/{service}` (see [`crate::auth`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use micro_core::Error;

use crate::auth::NodeAddresses;
use crate::call::{self, CallTarget, Input, Labels};
use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::request::{client_ip, read_body};
use crate::route::{self, Target};

/// Largest total of request header names and values; more is 431. (Far larger header blocks are
/// refused by hyper itself, without the JSON body.)
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// What a request turned out to be: answered already, or a call to make.
enum Routed {
    Answer(Response),
    Call(CallTarget, http::HeaderMap, Input),
    /// A call over a WebSocket (`GET` with `Upgrade: websocket`): the request head, to upgrade.
    Upgrade(CallTarget, http::request::Parts),
}

/// The axum handler of every request: admit, route, answer, count.
pub(crate) async fn dispatch(
    State(state): State<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    // In flight until this request is answered (a stream's body is counted by its own record).
    let _in_flight = state.metrics.in_flight();
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut request = request;
    // Known before the span is made: a field given at its start costs less than one recorded.
    call::give_request_id(request.headers_mut());
    let request_id = call::request_id(request.headers());
    // The client's `traceparent` (W3C) continued, or a new trace; the call's span goes on in it.
    let trace = micro_core::trace::TraceStart::from_headers(request.headers());
    let span = tracing::info_span!(
        "http",
        method = request.method().as_str(),
        path = request.uri().path(),
        service = tracing::field::Empty,
        endpoint = tracing::field::Empty,
        request_id,
        trace_id = trace.trace_id(),
        otel.kind = "server"
    );
    trace.start(&span);
    let answer = async {
        if let Err(refused) = admit(&state, peer, &request) {
            return (Labels::default(), Err(refused));
        }
        match route(&state, request).await {
            Ok(Routed::Answer(response)) => (Labels::default(), Ok(response)),
            Ok(Routed::Call(target, headers, input)) => {
                call::call(&state, &target, &headers, input).await
            }
            // Boxed, as the rarer paths below: each would otherwise make the future of every
            // request (moved several times on its way through axum and hyper) as large as its own.
            Ok(Routed::Upgrade(target, parts)) => {
                Box::pin(crate::websocket::call(&state, &target, parts)).await
            }
            Err(e) => (Labels::default(), Err(e)),
        }
    };
    // Pinned where it is rather than boxed (measured: a box of kilobytes costs more in malloc
    // than it saves in moves); the span is taken back from it afterwards rather than cloned.
    let mut answer = std::pin::pin!(tracing::Instrument::instrument(answer, span));
    let (labels, result) = answer.as_mut().await;
    let span = answer.span();
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(origin) = origin {
        state.cors.add_headers(&origin, response.headers_mut());
    }
    record_labels(span, &labels);
    tracing::debug!(parent: span, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "answered");
    labels.record(
        &state.metrics,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Records the call's service and endpoint on its span in one pass through the subscriber (a
/// `record` each would make two); nothing for the gateway's own paths, which have neither.
/// Recorded once the call is over, they reach only an exporter and the `answered` debug line:
/// without either, formatting them for the logs would be work no one reads.
fn record_labels(span: &tracing::Span, labels: &Labels) {
    if labels.service.is_empty()
        || !(tracing::enabled!(tracing::Level::DEBUG) || micro_core::trace::exported(span))
    {
        return;
    }
    let Some(metadata) = span.metadata() else {
        return;
    };
    let fields = metadata.fields();
    let (service, endpoint): (&str, &str) = (&labels.service, &labels.endpoint);
    if let (Some(service_field), Some(endpoint_field)) =
        (fields.field("service"), fields.field("endpoint"))
    {
        span.record_all(&fields.value_set(&[
            (&service_field, Some(&service as &dyn tracing::Value)),
            (&endpoint_field, Some(&endpoint as &dyn tracing::Value)),
        ]));
    }
}

/// Refuses what is not served at all: oversized headers, and clients over the rate limit
/// (CORS preflights are not counted against it).
fn admit(state: &GatewayState, peer: SocketAddr, request: &Request) -> Result<(), ApiError> {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            tonic::Code::InvalidArgument,
            format!("the request headers are {header_bytes} bytes, more than {MAX_HEADER_BYTES}"),
        ));
    }
    if request.method() == Method::OPTIONS {
        return Ok(());
    }
    if let Some(limiter) = &state.limiter {
        let client = client_ip(peer, request.headers(), state.options.behind_proxy);
        if let Err(seconds) = limiter.check(client) {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
                format!(
                    "rate limit of {}/s per client exceeded",
                    state.options.rate_limit.unwrap_or_default()
                ),
            );
            error.retry_after = Some(seconds);
            return Err(error);
        }
    }
    Ok(())
}

/// Answers the gateway's own paths; for a call, reads what the call needs.
async fn route(state: &GatewayState, request: Request) -> Result<Routed, ApiError> {
    if request.method() == Method::OPTIONS {
        return state.cors.preflight(request.headers()).map(Routed::Answer);
    }
    let method = request.method().clone();
    let only = |allowed: Method, allow: &'static str| {
        if method == allowed {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(&method, allow))
        }
    };
    let answer = match route::parse(request.uri().path())? {
        Target::Index => {
            only(Method::GET, "GET")?;
            if let Some(auth) = &state.auth {
                auth.describe(request.headers(), None).await?;
            }
            let names = state.registry.list_names().await.map_err(registry_down)?;
            json(serde_json::json!({ "services": names }))
        }
        Target::Health => {
            only(Method::GET, "GET")?;
            let reachable = matches!(
                tokio::time::timeout(Duration::from_secs(1), state.registry.list_names()).await,
                Ok(Ok(_))
            );
            json(
                serde_json::json!({ "status": "serving", "registry": { "plugin": state.registry.name(), "reachable": reachable } }),
            )
        }
        Target::Ready => {
            only(Method::GET, "GET")?;
            crate::ready::ready(&*state.registry, &state.options.require).await
        }
        Target::Metrics => {
            only(Method::GET, "GET")?;
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                state.metrics.render(),
            )
                .into_response()
        }
        Target::Describe(service) => {
            only(Method::GET, "GET")?;
            // Decided before the registry is read: a refusal says nothing about the service.
            let nodes = match &state.auth {
                Some(auth) => auth.describe(request.headers(), Some(service)).await?,
                None => NodeAddresses::Shown,
            };
            let services = state
                .registry
                .get_service(service)
                .await
                .map_err(registry_down)?;
            if services.is_empty() {
                return Err(ApiError::not_found(format!("unknown service `{service}`")));
            }
            json(describe(service, services, nodes))
        }
        Target::OpenApi => {
            only(Method::GET, "GET")?;
            // Per caller: only the services `GET /{service}` would describe to it.
            let describer = match &state.auth {
                Some(auth) => Some(auth.describer(request.headers()).await),
                None => None,
            };
            crate::openapi::document(state, None, describer.as_ref()).await?
        }
        Target::ServiceOpenApi(service) => {
            only(Method::GET, "GET")?;
            // Refused as `GET /{service}` is, before anything is read.
            if let Some(auth) = &state.auth {
                auth.describe(request.headers(), Some(service)).await?;
            }
            crate::openapi::document(state, Some(service), None).await?
        }
        Target::Docs(asset) => {
            only(Method::GET, "GET")?;
            crate::docs::serve(asset)?
        }
        Target::Mcp => {
            return Box::pin(crate::mcp::handle(state, request))
                .await
                .map(Routed::Answer);
        }
        Target::Rpc => {
            only(Method::POST, "POST")?;
            let (headers, body) = read_body(request, state.options.max_body).await?;
            let (target, input) = CallTarget::from_rpc(&body)?;
            return Ok(Routed::Call(target, headers, input));
        }
        Target::Call {
            service,
            grpc_service,
            method: method_name,
        } => {
            let target = CallTarget {
                service: service.to_string(),
                grpc_service: grpc_service.map(String::from),
                method: method_name.to_string(),
            };
            return match method {
                Method::GET if crate::websocket::is_upgrade(request.headers()) => {
                    let (parts, _) = request.into_parts();
                    Ok(Routed::Upgrade(target, parts))
                }
                Method::GET => {
                    let query = request.uri().query().unwrap_or_default().to_string();
                    let (parts, _) = request.into_parts();
                    Ok(Routed::Call(target, parts.headers, Input::Query(query)))
                }
                Method::POST => {
                    let (headers, body) = read_body(request, state.options.max_body).await?;
                    Ok(Routed::Call(target, headers, Input::Json(body)))
                }
                _ => Err(ApiError::method_not_allowed(&method, "GET, POST")),
            };
        }
    };
    Ok(Routed::Answer(answer))
}

/// The body of `GET /{service}`: every registered version of `service`, each without its
/// `nodes` when the caller may not see where they are.
fn describe(
    service: &str,
    services: Vec<micro_core::registry::Service>,
    nodes: NodeAddresses,
) -> serde_json::Value {
    let mut versions = serde_json::json!(services);
    if nodes == NodeAddresses::Hidden
        && let Some(versions) = versions.as_array_mut()
    {
        for version in versions.iter_mut().filter_map(|v| v.as_object_mut()) {
            version.remove("nodes");
        }
    }
    serde_json::json!({ "name": service, "services": versions })
}

fn registry_down(error: Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::Unavailable,
        format!("the registry cannot be read: {error}"),
    )
}

fn json(value: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(value.to_string()),
    )
        .into_response()
}
