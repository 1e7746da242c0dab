//! The server side: any [`Registry`] served over gRPC (`micro.registry.v1.Registry`) for
//! [`RemoteRegistry`](crate::RemoteRegistry) clients. The gateway embeds one.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use micro_core::Error;
use micro_core::registry::{Registry, Service};
use tonic::{Request, Response, Status};

use crate::proto::registry_v1 as pb;

/// Shortest TTL accepted from a remote registration.
const MIN_TTL: Duration = Duration::from_millis(500);

/// Serves any `Arc<dyn Registry>` as `micro.registry.v1.Registry`: a tonic service, added to a
/// router like any other (`Server::builder().add_service(RegistryServer::new(registry))`).
pub type RegistryServer = pb::registry_server::RegistryServer<RegistryService>;

/// The handlers behind [`RegistryServer`]: each call goes to the wrapped registry.
pub struct RegistryService {
    registry: Arc<dyn Registry>,
}

impl std::fmt::Debug for RegistryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryService")
            .field("registry", &self.registry.name())
            .finish()
    }
}

impl RegistryService {
    /// The tonic service serving `registry`.
    pub fn server(registry: Arc<dyn Registry>) -> RegistryServer {
        pb::registry_server::RegistryServer::new(RegistryService { registry })
    }
}

fn service_of(service: Option<pb::Service>) -> Result<Service, Status> {
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

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let request = request.into_inner();
        let ttl = Duration::from_millis(request.ttl_ms);
        if ttl < MIN_TTL {
            return Err(Status::invalid_argument(format!(
                "ttl_ms {} is below the minimum of {} ms",
                request.ttl_ms,
                MIN_TTL.as_millis()
            )));
        }
        let service = service_of(request.service)?;
        self.registry
            .register(&service, ttl)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RegisterResponse {}))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let service = service_of(request.into_inner().service)?;
        self.registry
            .deregister(&service)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
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
        _request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self.registry.list_services().await.map_err(status_of)?;
        Ok(Response::new(pb::ListServicesResponse {
            services: services.iter().map(Into::into).collect(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
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
