//! # micro-gateway
//!
//! HTTP JSON in, gRPC out, resolved at run time: `POST /{service}/{Service}/{Method}` calls the
//! method on a live node of the registered service, with the request and reply transcoded by
//! the service's own descriptors, fetched by gRPC reflection. No code generation, no restart
//! when services come, go or change.
//!
//! The gateway also serves its registry over gRPC (the embedded registry), so services started
//! with the default `remote` registry find each other through it with no external server.
//!
//! ```no_run
//! use std::sync::Arc;
//! use micro_gateway::{Gateway, GatewayOptions};
//! # async fn run() -> micro_core::Result<()> {
//! let options = GatewayOptions::load()?; // flags, MICRO_* and micro.toml, as services
//! let registry = Arc::new(micro_memory::MemoryRegistry::new());
//! let running = Gateway::new(options, registry).start().await?;
//! println!("listening on http://{}", running.http_address());
//! running.stop().await
//! # }
//! ```
//!
//! Path rules, the error shape and the gRPC → HTTP mapping are in DESIGN §5 and the README.

mod access;
mod codec;
mod error;
mod limit;
mod metrics;
mod options;
mod reflection;
mod registry_server;
mod route;
mod schema;
mod transcode;

pub use access::Access;
pub use error::{ApiError, http_status};
pub use limit::ClientLimiter;
pub use options::{GatewayFlags, GatewayOptions};
pub use registry_server::RegistryService;

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use micro_core::{Client, Error, Registry, Result};
use prost_reflect::MethodDescriptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::DynamicCodec;
use crate::metrics::Metrics;
use crate::route::Target;
use crate::schema::Schemas;

/// Largest total of request header names and values; more is 431. (Far larger header blocks are
/// refused by hyper itself, without the JSON body.)
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How often idle clients are forgotten by the per-client rate limiter.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The gateway: options, the registry it routes by, and what it keeps between requests.
pub struct Gateway {
    state: Arc<GatewayState>,
}

struct GatewayState {
    options: GatewayOptions,
    registry: Arc<dyn Registry>,
    schemas: Arc<Schemas>,
    limiter: Option<Arc<ClientLimiter>>,
    metrics: Metrics,
    cors: Vec<String>,
    access: Option<Access>,
}

impl Gateway {
    /// A gateway routing by `registry`. Must be called inside a tokio runtime.
    pub fn new(options: GatewayOptions, registry: Arc<dyn Registry>) -> Self {
        let client = Client::new(&options.service, registry.clone()).timeout(options.timeout);
        let limiter = options
            .rate_limit
            .map(|rate| Arc::new(ClientLimiter::new(rate, options.rate_burst.unwrap_or(rate))));
        let cors = options
            .cors_origins
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        let schemas = Schemas::new(registry.clone(), client.clone());
        Gateway {
            state: Arc::new(GatewayState {
                options,
                registry,
                schemas,
                limiter,
                metrics: Metrics::default(),
                cors,
                access: None,
            }),
        }
    }

    /// Checks tokens and rules on every call (see [`Access`]).
    pub fn with_access(mut self, access: Access) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.access = Some(access);
        }
        self
    }

    /// The HTTP side as an axum router (needs `ConnectInfo<SocketAddr>`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(dispatch)
            .with_state(self.state.clone())
    }

    /// Binds the HTTP and registry listeners and serves both until [`RunningGateway::stop`].
    pub async fn start(self) -> Result<RunningGateway> {
        let options = &self.state.options;
        let http = TcpListener::bind(&options.address).await.map_err(|e| {
            Error::Server(format!(
                "cannot listen on {} (--address): {e}",
                options.address
            ))
        })?;
        let registry_listener = TcpListener::bind(&options.registry_listen)
            .await
            .map_err(|e| {
                Error::Server(format!(
                    "cannot serve the registry on {} (--registry-listen): {e}",
                    options.registry_listen
                ))
            })?;
        let (http_address, registry_address) =
            (http.local_addr()?, registry_listener.local_addr()?);
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };

        let registry_server = tokio::spawn({
            let service = RegistryService::server(self.state.registry.clone());
            let stopped = until_stopped(stopped.clone());
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(registry_listener)
                            .with_nodelay(Some(true)),
                        stopped,
                    )
                    .await
                    .map_err(|e| Error::Server(format!("embedded registry: {e}")))
            }
        });
        if let Some(limiter) = self.state.limiter.clone() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PRUNE_EVERY).await;
                    limiter.prune();
                }
            });
        }
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let http_server = tokio::spawn({
            let stopped = until_stopped(stopped.clone());
            async move {
                axum::serve(
                    axum::serve::ListenerExt::tap_io(http, |tcp| {
                        // Small JSON replies must not wait for Nagle.
                        let _ = tcp.set_nodelay(true);
                    }),
                    app,
                )
                .with_graceful_shutdown(stopped)
                .await
                .map_err(Error::Io)
            }
        });
        tracing::info!(%http_address, %registry_address, registry = self.state.registry.name(), "gateway started");
        Ok(RunningGateway {
            http_address,
            registry_address,
            stop,
            tasks: vec![http_server, registry_server],
            drain: self.state.options.service.shutdown_timeout,
        })
    }
}

/// A started gateway.
pub struct RunningGateway {
    http_address: SocketAddr,
    registry_address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
    drain: Duration,
}

impl RunningGateway {
    /// Where HTTP is served.
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// Where the embedded registry is served.
    pub fn registry_address(&self) -> SocketAddr {
        self.registry_address
    }

    /// Stops accepting, finishes in-flight requests (at most the shutdown timeout), returns.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            match tokio::time::timeout(self.drain, task).await {
                Ok(Ok(result)) => result?,
                Ok(Err(join)) => return Err(Error::Server(format!("gateway task failed: {join}"))),
                Err(_) => tracing::warn!(
                    "in-flight requests still running after {}; stopped anyway",
                    humantime::format_duration(self.drain)
                ),
            }
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Every request: CORS, rate limit, route, answer, count.
async fn dispatch(
    AxumState(state): AxumState<Arc<GatewayState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let origin = request.headers().get(header::ORIGIN).cloned();
    let span = tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), service = tracing::field::Empty, endpoint = tracing::field::Empty, request_id = tracing::field::Empty);
    let mut labels = (String::new(), String::new());
    let result =
        tracing::Instrument::instrument(handle(&state, peer, request, &mut labels), span.clone())
            .await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(origin) = origin {
        add_cors(&state.cors, &origin, response.headers_mut());
    }
    span.record("service", labels.0.as_str());
    span.record("endpoint", labels.1.as_str());
    tracing::debug!(parent: &span, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "answered");
    state.metrics.record(
        &labels.0,
        &labels.1,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn handle(
    state: &GatewayState,
    peer: SocketAddr,
    request: Request,
    labels: &mut (String, String),
) -> Result<Response, ApiError> {
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
        return preflight(&state.cors, request.headers());
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
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let only = |allowed: Method, allow: &'static str| {
        if method == allowed {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(&method, allow))
        }
    };
    match route::parse(&path)? {
        Target::Index => {
            only(Method::GET, "GET")?;
            let mut names: Vec<String> = state
                .registry
                .list_services()
                .await
                .map_err(registry_down)?
                .into_iter()
                .map(|s| s.name)
                .collect();
            names.dedup();
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "services": names }),
            ))
        }
        Target::Health => {
            only(Method::GET, "GET")?;
            let reachable = matches!(
                tokio::time::timeout(Duration::from_secs(1), state.registry.list_services()).await,
                Ok(Ok(_))
            );
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "status": "serving", "registry": { "plugin": state.registry.name(), "reachable": reachable } }),
            ))
        }
        Target::Metrics => {
            only(Method::GET, "GET")?;
            Ok((
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                state.metrics.render(),
            )
                .into_response())
        }
        Target::Describe(service) => {
            only(Method::GET, "GET")?;
            let services = state
                .registry
                .get_service(service)
                .await
                .map_err(registry_down)?;
            if services.is_empty() {
                return Err(ApiError::not_found(format!("unknown service `{service}`")));
            }
            Ok(json(
                StatusCode::OK,
                serde_json::json!({ "name": service, "services": services }),
            ))
        }
        Target::Rpc => {
            only(Method::POST, "POST")?;
            let (headers, body) = read_body(state, request).await?;
            let rpc: RpcRequest = parse_rpc(&body)?;
            let (grpc_service, method_name) = rpc
                .endpoint
                .rsplit_once('.')
                .map_or((None, rpc.endpoint.as_str()), |(s, m)| (Some(s), m));
            let request_json = serde_json::to_vec(&rpc.request)
                .map_err(|e| ApiError::bad_request(format!("field `request`: {e}")))?;
            call(
                state,
                labels,
                &rpc.service,
                grpc_service,
                method_name,
                &headers,
                Input::Json(request_json),
            )
            .await
        }
        Target::Call {
            service,
            grpc_service,
            method: method_name,
        } => {
            let (service, grpc_service, method_name) = (
                service.to_string(),
                grpc_service.map(String::from),
                method_name.to_string(),
            );
            match method {
                Method::GET => {
                    let query = request.uri().query().unwrap_or_default().to_string();
                    call(
                        state,
                        labels,
                        &service,
                        grpc_service.as_deref(),
                        &method_name,
                        request.headers(),
                        Input::Query(query),
                    )
                    .await
                }
                Method::POST => {
                    let (headers, body) = read_body(state, request).await?;
                    call(
                        state,
                        labels,
                        &service,
                        grpc_service.as_deref(),
                        &method_name,
                        &headers,
                        Input::Json(body),
                    )
                    .await
                }
                _ => Err(ApiError::method_not_allowed(&method, "GET, POST")),
            }
        }
    }
}

enum Input {
    Json(Vec<u8>),
    Query(String),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcRequest {
    service: String,
    endpoint: String,
    #[serde(default)]
    request: serde_json::Value,
}

fn parse_rpc(body: &[u8]) -> Result<RpcRequest, ApiError> {
    if body.len() > 1
        && body.iter().filter(|b| **b == b'{' || **b == b'[').count() > transcode::MAX_DEPTH
    {
        // A cheap guard before serde_json's own recursion limit.
        transcode::from_json(&prost_types_empty(), body, true)?;
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "/rpc body: {e} (expected {{\"service\", \"endpoint\", \"request\"}})"
        ))
    })
}

fn prost_types_empty() -> prost_reflect::MessageDescriptor {
    prost_reflect::DescriptorPool::global()
        .get_message_by_name("google.protobuf.Empty")
        .expect("google.protobuf.Empty is in prost-reflect's global pool")
}

/// Resolves the method, transcodes, calls through the core client, transcodes back.
async fn call(
    state: &GatewayState,
    labels: &mut (String, String),
    service: &str,
    grpc_service: Option<&str>,
    method_name: &str,
    headers: &HeaderMap,
    input: Input,
) -> Result<Response, ApiError> {
    let (method, schema) = resolve_method(state, service, grpc_service, method_name).await?;
    *labels = (
        service.to_string(),
        format!("{}.{}", method.parent_service().name(), method.name()),
    );
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            tonic::Code::Unimplemented,
            format!(
                "{} is a streaming method; the gateway maps unary methods",
                labels.1
            ),
        ));
    }
    let body = match input {
        Input::Json(body) => body,
        Input::Query(query) => transcode::query_to_json(&method.input(), &query)?,
    };
    let message = transcode::from_json(&method.input(), &body, state.options.allow_unknown_fields)?;
    let mut request = tonic::Request::new(message);
    forward_metadata(headers, request.metadata_mut());
    if let Some(access) = &state.access {
        access
            .authorize(headers, service, &labels.1, request.metadata_mut())
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
    let timeout = micro_core::wrapper::grpc_timeout(headers)
        .map_or(state.options.timeout, |t| t.min(state.options.timeout));
    request.set_timeout(timeout);
    let path = http::uri::PathAndQuery::from_str(&format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))
    .map_err(|e| ApiError::bad_request(format!("bad method path: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(schema.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| ApiError::from_status(&tonic::Status::from_error(Box::new(e))))?;
    let reply = grpc
        .unary(request, path, DynamicCodec::new(method.output()))
        .await
        .map_err(|status| ApiError::from_status(&status))?;
    let body = transcode::to_json(reply.get_ref())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Finds the method (and the schema it came from); when it is unknown and the cached descriptors are not fresh, fetches them
/// again once (a service may have been redeployed with a new method).
async fn resolve_method(
    state: &GatewayState,
    service: &str,
    grpc_service: Option<&str>,
    method: &str,
) -> Result<(MethodDescriptor, Arc<schema::Schema>), ApiError> {
    let schema = state.schemas.get(service).await?;
    match route::find_method(service, &schema.services, grpc_service, method) {
        Err(e)
            if e.status == StatusCode::NOT_FOUND
                && schema.fetched.elapsed() > Duration::from_secs(2) =>
        {
            state.schemas.forget(service);
            let schema = state.schemas.get(service).await?;
            route::find_method(service, &schema.services, grpc_service, method).map(|m| (m, schema))
        }
        result => result.map(|m| (m, schema)),
    }
}

/// Checks the content type and reads the body within the size limit.
async fn read_body(
    state: &GatewayState,
    request: Request,
) -> Result<(HeaderMap, Vec<u8>), ApiError> {
    let (parts, body) = request.into_parts();
    check_content_type(&parts.headers)?;
    let limit = state.options.max_body;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::InvalidArgument,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok((parts.headers, collected.to_bytes().to_vec())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
    }
}

/// JSON, `application/*+json`, none, or curl's default form type are read as JSON; others 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value
        .to_str()
        .map_err(|_| unsupported("a content type that is not ASCII"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence == "application/x-www-form-urlencoded"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(unsupported(&format!("content type `{essence}`")))
    }
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        tonic::Code::InvalidArgument,
        format!("{what} is not accepted; send JSON (application/json)"),
    )
}

/// Copies end-to-end headers into gRPC metadata; never hop-by-hop, reserved or binary ones.
fn forward_metadata(headers: &HeaderMap, metadata: &mut tonic::metadata::MetadataMap) {
    const SKIP: [&str; 16] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept-encoding",
        "expect",
        "cookie",
        "user-agent",
    ];
    for (name, value) in headers {
        let name = name.as_str();
        if SKIP.contains(&name)
            || name.starts_with("grpc-")
            || name.starts_with(access::ACCOUNT_PREFIX)
            || name.ends_with("-bin")
            || name.starts_with(':')
        {
            continue;
        }
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.append(key, value);
        }
    }
}

fn client_ip(peer: SocketAddr, headers: &HeaderMap, behind_proxy: bool) -> IpAddr {
    let forwarded = || {
        headers
            .get("x-forwarded-for")?
            .to_str()
            .ok()?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    };
    if behind_proxy {
        forwarded().unwrap_or(peer.ip())
    } else {
        peer.ip()
    }
}

fn preflight(cors: &[String], headers: &HeaderMap) -> Result<Response, ApiError> {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if cors.is_empty() || origin.is_none_or(|o| !allowed(cors, o)) {
        return Err(ApiError::method_not_allowed(&Method::OPTIONS, "GET, POST"));
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Ok(response)
}

fn allowed(cors: &[String], origin: &str) -> bool {
    cors.iter().any(|o| o == "*" || o == origin)
}

fn add_cors(cors: &[String], origin: &HeaderValue, headers: &mut HeaderMap) {
    if origin.to_str().is_ok_and(|o| allowed(cors, o)) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn registry_down(error: Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::Unavailable,
        format!("the registry cannot be read: {error}"),
    )
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(value.to_string()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_end_to_end_headers_only() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer t"),
            ("x-trace", "abc"),
            ("te", "trailers"),
            ("connection", "keep-alive"),
            ("grpc-timeout", "1S"),
            ("grpc-encoding", "gzip"),
            ("x-data-bin", "AAEC"),
            ("cookie", "session=1"),
            ("host", "example"),
            ("x-micro-account-id", "admin"),
            ("x-micro-account-scopes", "everything"),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        forward_metadata(&headers, &mut metadata);
        let mut forwarded: Vec<String> = metadata
            .keys()
            .map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_string(),
                tonic::metadata::KeyRef::Binary(k) => k.as_str().to_string(),
            })
            .collect();
        forwarded.sort();
        assert_eq!(
            forwarded,
            ["authorization", "x-trace"],
            "hop-by-hop, reserved, binary, cookies and spoofed account headers stay behind"
        );
    }

    #[test]
    fn client_ip_ignores_forwarded_for_unless_behind_a_proxy() {
        let peer: SocketAddr = "10.0.0.9:1234".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.1"),
        );
        assert_eq!(client_ip(peer, &headers, false), peer.ip());
        assert_eq!(
            client_ip(peer, &headers, true),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }
}
