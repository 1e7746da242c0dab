//! The server side: any [`Registry`] served over gRPC (`micro.registry.v1.Registry`) for
//! [`RemoteRegistry`](crate::RemoteRegistry) clients. The gateway embeds one.
//!
//! Two checks stand before the wrapped registry (see [`security`](crate::security)): with a
//! token, every call must carry it; and a client may refresh or deregister only the nodes it
//! registered (its owner key, [`Owners`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use micro_core::options::Options;
use micro_core::registry::{Registry, Service};
use micro_core::{Error, Result};
use tonic::{Request, Response, Status};

use crate::owners::{Owners, Refused};
use crate::proto::registry_v1 as pb;
use crate::security;

/// Shortest TTL accepted from a remote registration.
const MIN_TTL: Duration = Duration::from_millis(500);
/// Longest TTL accepted from a remote registration (a day: past it, a node that died would
/// linger for good).
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Serves any `Arc<dyn Registry>` as `micro.registry.v1.Registry`: a tonic service, added to a
/// router like any other (`Server::builder().add_service(RegistryService::server(registry))`).
pub type RegistryServer = pb::registry_server::RegistryServer<RegistryService>;

/// The handlers behind [`RegistryServer`]: each call is checked (token, ownership) and goes to
/// the wrapped registry.
pub struct RegistryService {
    registry: Arc<dyn Registry>,
    token: Option<Vec<u8>>,
    owners: Owners,
}

impl std::fmt::Debug for RegistryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryService")
            .field("registry", &self.registry.name())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl RegistryService {
    /// Serves `registry` without a token: any caller may register (ownership still applies).
    /// What a server on a loopback address does by default.
    pub fn new(registry: Arc<dyn Registry>) -> RegistryService {
        RegistryService {
            registry,
            token: None,
            owners: Owners::default(),
        }
    }

    /// Requires every call to carry `token` (metadata `authorization: Bearer <token>`); `None`
    /// requires nothing. An empty token, or one that cannot travel in a header, is an error.
    pub fn with_token(mut self, token: Option<&str>) -> Result<RegistryService> {
        if let Some(token) = token {
            security::validate_token(token)?;
        }
        self.token = token.map(|t| t.as_bytes().to_vec());
        Ok(self)
    }

    /// [`RegistryService::new`] with the token of `options` (`registry-token`).
    pub fn from_options(registry: Arc<dyn Registry>, options: &Options) -> Result<RegistryService> {
        Self::new(registry).with_token(options.registry_token.as_deref())
    }

    /// Whether calls must carry a token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// This service as a tonic service.
    pub fn into_server(self) -> RegistryServer {
        pb::registry_server::RegistryServer::new(self)
    }

    /// The tonic service serving `registry` without a token ([`RegistryService::new`]).
    pub fn server(registry: Arc<dyn Registry>) -> RegistryServer {
        Self::new(registry).into_server()
    }

    /// Refuses a call without the token (when there is one), naming the option to set.
    fn authorize<T>(&self, request: &Request<T>, call: &str) -> std::result::Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        security::check_token(request.metadata(), expected).map_err(|refusal| {
            tracing::warn!(
                peer = ?request.remote_addr(),
                call,
                reason = ?refusal,
                "registry call refused: token"
            );
            Status::unauthenticated(format!("{call}: {}", refusal.message()))
        })
    }

    /// The caller's owner key.
    fn owner<T>(request: &Request<T>, call: &str) -> std::result::Result<String, Status> {
        security::owner_of(request.metadata())
            .map_err(|message| Status::invalid_argument(format!("{call}: {message}")))
    }
}

fn service_of(service: Option<pb::Service>) -> std::result::Result<Service, Status> {
    service
        .map(Service::from)
        .ok_or_else(|| Status::invalid_argument("the request has no service"))
}

fn status_of(error: Error) -> Status {
    match error {
        Error::Invalid { .. } => Status::invalid_argument(error.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

fn refused(call: &str, service: &Service, refused: &Refused) -> Status {
    Status::permission_denied(format!(
        "{call} of service `{}`: node `{}` was registered by another client; a client may refresh or deregister only the nodes it registered (the node id is free again once its registration lapses)",
        service.name, refused.node
    ))
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> std::result::Result<Response<pb::RegisterResponse>, Status> {
        self.authorize(&request, "register")?;
        let owner = Self::owner(&request, "register")?;
        let peer = request.remote_addr();
        let request = request.into_inner();
        let ttl = Duration::from_millis(request.ttl_ms);
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(Status::invalid_argument(format!(
                "ttl_ms {} is outside {} ms to {} ms",
                request.ttl_ms,
                MIN_TTL.as_millis(),
                MAX_TTL.as_millis()
            )));
        }
        let service = service_of(request.service)?;
        let ids: Vec<&str> = service.nodes.iter().map(|n| n.id.as_str()).collect();
        // The record lapses no later than the backing registry's (computed before it).
        let now = Instant::now();
        let new = self
            .owners
            .claim(&owner, &service.name, &service.version, &ids, now, now + ttl)
            .map_err(|r| {
                tracing::warn!(?peer, service = %service.name, node = %r.node, "registration refused: node owned by another client");
                refused("register", &service, &r)
            })?;
        if let Err(e) = self.registry.register(&service, ttl).await {
            self.owners
                .unclaim(&owner, &service.name, &service.version, &new);
            return Err(status_of(e));
        }
        Ok(Response::new(pb::RegisterResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> std::result::Result<Response<pb::DeregisterResponse>, Status> {
        self.authorize(&request, "deregister")?;
        let owner = Self::owner(&request, "deregister")?;
        let peer = request.remote_addr();
        let mut service = service_of(request.into_inner().service)?;
        let ids: Vec<&str> = service.nodes.iter().map(|n| n.id.as_str()).collect();
        let mine: Vec<String> = self
            .owners
            .deregistrable(&owner, &ids, Instant::now())
            .map_err(|r| {
                tracing::warn!(?peer, service = %service.name, node = %r.node, "deregistration refused: node owned by another client");
                refused("deregister", &service, &r)
            })?
            .into_iter()
            .map(String::from)
            .collect();
        // Nodes nobody owns here (lapsed, or never registered through this server) are left
        // alone: they are gone already, or not the caller's to remove.
        service.nodes.retain(|n| mine.contains(&n.id));
        if service.nodes.is_empty() {
            return Ok(Response::new(pb::DeregisterResponse {}));
        }
        self.registry
            .deregister(&service)
            .await
            .map_err(status_of)?;
        self.owners.release(
            &owner,
            &service.name,
            &service.version,
            mine.iter().map(String::as_str),
        );
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> std::result::Result<Response<pb::GetServiceResponse>, Status> {
        self.authorize(&request, "get service")?;
        let services = self
            .registry
            .get_service(&request.into_inner().name)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::GetServiceResponse {
            services: services.iter().map(Into::into).collect(),
        }))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> std::result::Result<Response<pb::ListServicesResponse>, Status> {
        self.authorize(&request, "list services")?;
        let pb::ListServicesRequest {
            page_size,
            page_token,
        } = request.into_inner();
        if page_size == 0 {
            let services = self.registry.list_services().await.map_err(status_of)?;
            return Ok(Response::new(pb::ListServicesResponse {
                services: services.iter().map(Into::into).collect(),
                next_page_token: String::new(),
            }));
        }
        // A page: the next `page_size` names after the token (the last name of the previous
        // page), each read on its own, so no reply and no copy holds the whole registry.
        let names = self.registry.list_names().await.map_err(status_of)?;
        let start = names.partition_point(|name| *name <= page_token);
        let page_size = usize::try_from(page_size).unwrap_or(usize::MAX);
        let page = &names[start..names.len().min(start.saturating_add(page_size))];
        let mut services = Vec::new();
        for name in page {
            let versions = self.registry.get_service(name).await.map_err(status_of)?;
            services.extend(versions.iter().map(pb::Service::from));
        }
        let more = start + page.len() < names.len();
        Ok(Response::new(pb::ListServicesResponse {
            services,
            next_page_token: match page.last() {
                Some(last) if more => last.clone(),
                _ => String::new(),
            },
        }))
    }

    async fn list_names(
        &self,
        request: Request<pb::ListNamesRequest>,
    ) -> std::result::Result<Response<pb::ListNamesResponse>, Status> {
        self.authorize(&request, "list names")?;
        let names = self.registry.list_names().await.map_err(status_of)?;
        Ok(Response::new(pb::ListNamesResponse { names }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::Event, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        self.authorize(&request, "watch")?;
        let filter = request.into_inner().service;
        let watcher = self
            .registry
            .watch((!filter.is_empty()).then_some(filter.as_str()))
            .await
            .map_err(status_of)?;
        Ok(Response::new(
            watcher
                .map(|event| event.map(|e| pb::Event::from(&e)).map_err(status_of))
                .boxed(),
        ))
    }
}
