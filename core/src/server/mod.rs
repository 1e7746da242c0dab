//! The gRPC server: serves the user's tonic services plus reflection (v1 and v1alpha) and
//! health, registers itself with its endpoints, keeps the registration fresh, and on shutdown
//! deregisters first, then drains in-flight calls.

mod consumer;
mod drain;
mod endpoints;
mod registration;

pub use endpoints::endpoints_of;
pub use registration::{HEALTH_METADATA, NOT_SERVING};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use prost_reflect::DescriptorPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::broker::{Broker, Handler, SubscribeOptions, Subscription};
use crate::events::{self, ConsumeOptions, Events};
use crate::options::Options;
use crate::registry::{Node, Registry};
use crate::wrapper::{HandlerLayer, HandlerService, OnPath, Wrapper, apply};
use crate::{Error, Result};

type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A gRPC server that registers itself. Build it, add services, then [`serve`](Server::serve)
/// (until SIGINT/SIGTERM or [`with_shutdown`](Server::with_shutdown)) or
/// [`start`](Server::start) to get a handle.
pub struct Server {
    options: Options,
    registry: Arc<dyn Registry>,
    routes: Routes,
    names: Vec<&'static str>,
    pool: DescriptorPool,
    encoded: Vec<Vec<u8>>,
    wrappers: Vec<Wrapper<HandlerService>>,
    endpoint_wrappers: Vec<(String, Wrapper<HandlerService>)>,
    metadata: BTreeMap<String, String>,
    subscriptions: Vec<(Arc<dyn Broker>, String, SubscribeOptions, Handler)>,
    consumers: Vec<consumer::Consumption>,
    shutdown: Option<ShutdownSignal>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.options.server_name)
            .field("address", &self.options.server_address)
            .field("registry", &self.registry.name())
            .field("services", &self.names)
            .field("wrappers", &self.wrappers.len())
            .field("subscriptions", &self.subscriptions.len())
            .field("consumers", &self.consumers.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with `options` (name, address, TTL, ...) registering with `registry`.
    pub fn new(options: Options, registry: Arc<dyn Registry>) -> Self {
        Server {
            options,
            registry,
            routes: Routes::default(),
            names: Vec::new(),
            pool: DescriptorPool::new(),
            encoded: Vec::new(),
            wrappers: Vec::new(),
            endpoint_wrappers: Vec::new(),
            metadata: BTreeMap::new(),
            subscriptions: Vec::new(),
            consumers: Vec::new(),
            shutdown: None,
        }
    }

    /// Adds an encoded `FileDescriptorSet` describing the services: served by reflection and
    /// read for the registered endpoints. Call once per set.
    pub fn descriptors(mut self, encoded: &[u8]) -> Result<Self> {
        self.pool
            .decode_file_descriptor_set(encoded)
            .map_err(|e| Error::Decode {
                what: "file descriptor set".into(),
                message: e.to_string(),
            })?;
        self.encoded.push(encoded.to_vec());
        Ok(self)
    }

    /// Adds a tonic service (`GreeterServer::new(handler)`).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Wraps every handler with `layer`.
    pub fn wrap(mut self, layer: impl HandlerLayer) -> Self {
        self.wrappers.push(layer.into_wrapper());
        self
    }

    /// Wraps one endpoint with `layer`: `"Greeter.SayHello"` or `"/greeter.v1.Greeter/SayHello"`.
    /// An endpoint the server does not have is an error at start.
    pub fn wrap_endpoint(mut self, endpoint: &str, layer: impl HandlerLayer) -> Self {
        self.endpoint_wrappers
            .push((endpoint.to_string(), layer.into_wrapper()));
        self
    }

    /// Subscribes `handler` to `topic` on `broker` while the server runs: subscribed at start,
    /// unsubscribed at stop before in-flight calls drain. For prost messages wrap the handler
    /// with [`broker::typed`](crate::broker::typed), which dead-letters what does not decode.
    pub fn subscribe(
        mut self,
        broker: &Arc<dyn Broker>,
        topic: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Self {
        self.subscriptions
            .push((broker.clone(), topic.to_string(), options, handler));
        self
    }

    /// Consumes `topic` on `events` with `handler` while the server runs: started at start (a
    /// bad topic or group, or a backend that cannot be reached, fails the start), stopped at stop
    /// before in-flight calls drain, after the event being handled is settled.
    ///
    /// One event at a time, in order; consume again with the same group for more in parallel.
    /// The handler's `Ok` acks the event, `Err` (or a panic) nacks it (delivered again, and
    /// dead-lettered after `max_deliveries`); for prost messages wrap the handler with
    /// [`events::typed`], whose [`Reject`](crate::events::Reject) of a payload that does not
    /// decode dead-letters it at once.
    pub fn consume(
        mut self,
        events: &Arc<dyn Events>,
        topic: &str,
        options: ConsumeOptions,
        handler: events::Handler,
    ) -> Self {
        self.consumers.push(consumer::Consumption {
            events: events.clone(),
            topic: topic.to_string(),
            options,
            handler,
        });
        self
    }

    /// Adds service metadata to the registration.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Stops the server when `signal` completes, as SIGINT/SIGTERM do.
    pub fn with_shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// Serves until SIGINT, SIGTERM or the shutdown future; then deregisters, drains and returns.
    pub async fn serve(mut self) -> Result<()> {
        let signal = self
            .shutdown
            .take()
            .unwrap_or_else(|| Box::pin(shutdown_signal()));
        self.start().await?.stop_on(signal).await
    }

    /// Binds, starts serving and registering, and returns a handle.
    pub async fn start(mut self) -> Result<RunningServer> {
        let listener = TcpListener::bind(&self.options.server_address)
            .await
            .map_err(|e| {
                Error::Server(format!(
                    "cannot listen on {}: {e}",
                    self.options.server_address
                ))
            })?;
        let local = listener.local_addr()?;
        let advertised = advertised_address(local);
        let tls = crate::tls::ServerTls::from_options(&self.options)?.map(Arc::new);
        let mut node_metadata: BTreeMap<String, String> = [
            ("protocol", "grpc"),
            ("transport", "grpc"),
            ("server", "micro-rust"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if tls.is_some() {
            // Clients dial this node with TLS (go-micro registers the same key).
            node_metadata.insert(crate::tls::SECURE_METADATA.into(), "true".into());
        }
        let endpoints = endpoints_of(&self.pool, &self.names);
        let service = crate::registry::Service {
            name: self.options.server_name.clone(),
            version: self.options.server_version.clone(),
            metadata: self.metadata.clone(),
            endpoints,
            nodes: vec![Node {
                id: format!("{}-{:016x}", self.options.server_name, fastrand::u64(..)),
                address: advertised.to_string(),
                metadata: node_metadata,
            }],
        };
        // Counted so that stop drains them while still serving (and reporting NOT_SERVING).
        let (handlers, in_flight) = drain::counted(self.handlers(&service)?);
        let mut subscriptions = Vec::with_capacity(self.subscriptions.len());
        for (broker, topic, options, handler) in std::mem::take(&mut self.subscriptions) {
            subscriptions.push(broker.subscribe(&topic, handler, options.clone()).await?);
            tracing::info!(%topic, queue = ?options.queue, broker = broker.name(), "subscribed");
        }
        let mut consumers = Vec::with_capacity(self.consumers.len());
        for consumption in std::mem::take(&mut self.consumers) {
            consumers.push(consumption.start().await?);
        }

        let metrics = crate::metrics::serve(&self.options).await?;
        let debug = crate::debug::serve(&self.options).await?;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in &self.names {
            health_reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let routes = self.reflection()?.add_service(health_service);
        let all = BoxCloneSyncService::new(RouteFirst {
            handlers,
            extra: routes.prepare(),
            names: Arc::new((service.name.clone(), service.nodes[0].id.clone())),
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let graceful = {
            let mut stop = stop_rx.clone();
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }
        };
        let serving = tokio::spawn(async move {
            let server = tonic::transport::Server::builder();
            let result = match tls {
                Some(tls) => {
                    server
                        .serve_with_incoming_shutdown(
                            all,
                            crate::tls::incoming(tls, listener),
                            graceful,
                        )
                        .await
                }
                None => {
                    server
                        .serve_with_incoming_shutdown(
                            all,
                            tonic::transport::server::TcpIncoming::from(listener)
                                .with_nodelay(Some(true)),
                            graceful,
                        )
                        .await
                }
            };
            let _ = done_tx.send(true);
            result.map_err(|e| Error::Server(e.to_string()))
        });
        let registration = registration::spawn(
            self.registry.clone(),
            service.clone(),
            &self.options,
            stop_rx,
        )
        .await;
        tracing::info!(service = %service.name, node = %service.nodes[0].id, address = %advertised, registry = self.registry.name(), tls = service.nodes[0].metadata.contains_key(crate::tls::SECURE_METADATA), "server started");
        Ok(RunningServer {
            subscriptions,
            consumers,
            service,
            address: advertised,
            options: self.options,
            registry: self.registry,
            health: health_reporter,
            names: self.names,
            stop: stop_tx,
            done,
            serving,
            registration,
            in_flight,
            _metrics: metrics,
            _debug: debug,
        })
    }

    /// The user's handlers with every wrapper applied: endpoint wrappers innermost.
    fn handlers(&mut self, service: &crate::registry::Service) -> Result<HandlerService> {
        let mut handlers: HandlerService =
            BoxCloneSyncService::new(std::mem::take(&mut self.routes).prepare());
        for (endpoint, wrapper) in &self.endpoint_wrappers {
            let path = crate::grpc::grpc_path(service, endpoint)?;
            handlers = BoxCloneSyncService::new(OnPath::new(
                path,
                wrapper.wrap(handlers.clone()),
                handlers,
            ));
        }
        let handlers = apply(&self.wrappers, handlers);
        // Outermost, so every call is counted, including those a wrapper refuses.
        Ok(crate::metrics::server_layer(&service.name).wrap(handlers))
    }

    fn reflection(&self) -> Result<Routes> {
        let mut v1 = tonic_reflection::server::Builder::configure();
        let mut v1alpha = tonic_reflection::server::Builder::configure();
        for set in &self.encoded {
            v1 = v1.register_encoded_file_descriptor_set(set);
            v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
        }
        let v1 = v1
            .build_v1()
            .map_err(|e| Error::Server(format!("reflection: {e}")))?;
        let v1alpha = v1alpha
            .build_v1alpha()
            .map_err(|e| Error::Server(format!("reflection: {e}")))?;
        Ok(Routes::new(v1).add_service(v1alpha))
    }
}

use tonic::codegen::http;

/// Wildcard binds are advertised on loopback; anything else as bound.
fn advertised_address(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
    } else {
        local
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C): what [`Server::serve`] waits for, and what
/// binaries that start a server (or the gateway) pass to [`RunningServer::stop_on`].
///
/// The listeners are installed by this call, not when the future is first polled, so call it
/// before `start`: a signal that comes the moment the server is registered is then answered
/// with a graceful stop rather than the default action, which kills the process before it
/// deregisters. Must be called within a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            let listener = signal(kind)
                .inspect_err(|e| tracing::warn!("cannot listen for {name} ({e})"))
                .ok();
            async move {
                match listener {
                    Some(mut listener) => {
                        listener.recv().await;
                        tracing::info!("{name} received");
                    }
                    None => std::future::pending().await,
                }
            }
        };
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        async move {
            tokio::select! {
                () = terminate => {}
                () = interrupt => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sends the user's paths to the wrapped handlers and everything else (reflection, health) to
/// the unwrapped built-in routes.
#[derive(Clone)]
struct RouteFirst {
    handlers: HandlerService,
    extra: Routes,
    /// Service name and node id, for the span of each call.
    names: Arc<(String, String)>,
}

impl Service<http::Request<Body>> for RouteFirst {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let builtin = request.uri().path().starts_with("/grpc.reflection.")
            || request.uri().path().starts_with("/grpc.health.");
        if builtin {
            let mut extra = self.extra.clone();
            Box::pin(async move { extra.call(request).await })
        } else {
            let mut handlers = self.handlers.clone();
            let span = crate::trace::handler_span(&request, &self.names.0, &self.names.1);
            Box::pin(tracing::Instrument::instrument(
                async move { tower::ServiceExt::oneshot(&mut handlers, request).await },
                span,
            ))
        }
    }
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("service", &self.service.name)
            .field("address", &self.address)
            .field("registry", &self.registry.name())
            .field("services", &self.names)
            .finish_non_exhaustive()
    }
}

/// A started server.
pub struct RunningServer {
    subscriptions: Vec<Box<dyn Subscription>>,
    consumers: Vec<consumer::RunningConsumer>,
    service: crate::registry::Service,
    address: SocketAddr,
    options: Options,
    registry: Arc<dyn Registry>,
    health: tonic_health::server::HealthReporter,
    names: Vec<&'static str>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    serving: JoinHandle<Result<()>>,
    registration: JoinHandle<()>,
    /// The calls in the user's handlers, drained by stop.
    in_flight: drain::InFlight,
    /// `/metrics` on `metrics-address`, served until the server is dropped.
    _metrics: Option<crate::metrics::MetricsServer>,
    /// `/debug/pprof` on `debug-address`, served until the server is dropped.
    _debug: Option<crate::debug::DebugServer>,
}

impl RunningServer {
    /// The address clients reach it on (the real port when bound to port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What it registered: its name, version, endpoints and its one node.
    pub fn registration(&self) -> &crate::registry::Service {
        &self.service
    }

    /// Runs until `signal` completes (or the server fails), then [`stop`](Self::stop)s. With
    /// [`shutdown_signal`], made before `start`, this is a binary's main loop:
    ///
    /// ```no_run
    /// # async fn run(server: micro_core::Server) -> micro_core::Result<()> {
    /// let signal = micro_core::server::shutdown_signal();
    /// let running = server.start().await?;
    /// println!("listening on {}", running.address());
    /// running.stop_on(signal).await
    /// # }
    /// ```
    pub async fn stop_on(self, signal: impl Future<Output = ()>) -> Result<()> {
        let mut done = self.done.clone();
        tokio::select! {
            () = signal => {}
            _ = done.changed() => {}
        }
        self.stop().await
    }

    /// Stops gracefully, bounded by the shutdown timeout: gRPC health answers NOT_SERVING (for
    /// every service and the whole server, `""`) at once; the node is registered again with
    /// `health=not_serving` ([`HEALTH_METADATA`]) so that watchers see it stopping, then
    /// deregistered; subscriptions and consumers stop; in-flight calls finish while the server
    /// still accepts (clients with a stale view of the registry are served, health checks are
    /// answered); then it stops accepting and returns when the connections are done.
    pub async fn stop(self) -> Result<()> {
        let node = &self.service.nodes[0].id;
        let timeout = self.options.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        for name in self.names.iter().copied().chain([""]) {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        self.registration.abort();
        registration::announce_stopping(&*self.registry, &self.service, self.options.register_ttl)
            .await;
        if let Err(e) = self.registry.deregister(&self.service).await {
            tracing::warn!(node = %node, error = %e, "deregistration failed; the registry drops the node when its TTL lapses");
        }
        for subscription in self.subscriptions {
            let topic = subscription.topic().to_string();
            if let Err(e) = subscription.unsubscribe().await {
                tracing::warn!(%topic, error = %e, "unsubscribe failed");
            }
        }
        for consumer in self.consumers {
            consumer.stop(self.options.shutdown_timeout).await;
        }
        tracing::info!(node = %node, in_flight = self.in_flight.count(), "deregistered; draining in-flight calls");
        if tokio::time::timeout_at(deadline, self.in_flight.idle())
            .await
            .is_err()
        {
            tracing::warn!(node = %node, in_flight = self.in_flight.count(), "calls still running after {}; stopping anyway", humantime::format_duration(timeout));
        }
        let _ = self.stop.send(true);
        let mut serving = self.serving;
        // Streams and connections get what is left of the timeout (at least a moment, to close
        // cleanly).
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(std::time::Duration::from_millis(100));
        match tokio::time::timeout(left, &mut serving).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => return Err(Error::Server(format!("server task failed: {join}"))),
            Err(_) => {
                serving.abort();
                tracing::warn!(node = %node, "in-flight calls still running after {}; stopped anyway", humantime::format_duration(timeout));
            }
        }
        tracing::info!(node = %node, "server stopped");
        Ok(())
    }
}
