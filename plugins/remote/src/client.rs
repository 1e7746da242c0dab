//! The `remote` [`Registry`] client: every call goes to a [`RegistryServer`](crate::RegistryServer).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use micro_core::registry::{Event, Registry, Service, Watcher};
use micro_core::{Error, Result};
use tonic::transport::{Channel, Endpoint};

use crate::NAME;
use crate::proto::registry_v1 as pb;
use crate::proto::registry_v1::registry_client::RegistryClient;

/// A [`Registry`] served by a [`RegistryServer`](crate::RegistryServer) at `address` (the
/// gateway's embedded registry). Connects lazily and reconnects by itself.
#[derive(Clone, Debug)]
pub struct RemoteRegistry {
    client: RegistryClient<Channel>,
    address: String,
}

impl RemoteRegistry {
    /// A client of the registry at `address` (`host:port`).
    pub fn new(address: &str) -> Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                Error::Option(format!(
                    "option `registry-address`: `{address}` is not a host:port address: {e}"
                ))
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        Ok(RemoteRegistry {
            client: RegistryClient::new(endpoint.connect_lazy()),
            address: address.to_string(),
        })
    }

    fn failure(&self, what: &str, status: tonic::Status) -> Error {
        match status.code() {
            tonic::Code::InvalidArgument => Error::invalid("service", status.message().to_string()),
            tonic::Code::Unavailable | tonic::Code::Unknown => Error::backend_msg(
                "registry",
                NAME,
                format!(
                    "{what}: cannot reach the registry at {} (is micro-gateway running there?): {}",
                    self.address,
                    status.message()
                ),
            ),
            _ => Error::backend_msg(
                "registry",
                NAME,
                format!("{what} at {}: {}", self.address, status.message()),
            ),
        }
    }
}

#[async_trait]
impl Registry for RemoteRegistry {
    fn name(&self) -> &str {
        NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        let request = pb::RegisterRequest {
            service: Some(service.into()),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        self.client
            .clone()
            .register(request)
            .await
            .map_err(|s| self.failure("register", s))?;
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        let request = pb::DeregisterRequest {
            service: Some(service.into()),
        };
        self.client
            .clone()
            .deregister(request)
            .await
            .map_err(|s| self.failure("deregister", s))?;
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let reply = self
            .client
            .clone()
            .get_service(pb::GetServiceRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|s| self.failure("get service", s))?;
        Ok(services(reply.into_inner().services))
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        let reply = self
            .client
            .clone()
            .list_services(pb::ListServicesRequest {})
            .await
            .map_err(|s| self.failure("list services", s))?;
        Ok(services(reply.into_inner().services))
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        let request = pb::WatchRequest {
            service: service.unwrap_or_default().to_string(),
        };
        // No overall timeout on a watch: it lives as long as the caller keeps it.
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(365 * 24 * 3600));
        let stream = self
            .client
            .clone()
            .watch(request)
            .await
            .map_err(|s| self.failure("watch", s))?
            .into_inner();
        let this = self.clone();
        Ok(stream
            .map(move |item| match item {
                Ok(event) => Event::try_from(event),
                Err(status) => Err(this.failure("watch", status)),
            })
            .boxed())
    }
}

fn services(wire: Vec<pb::Service>) -> Vec<Service> {
    wire.into_iter().map(Service::from).collect()
}
