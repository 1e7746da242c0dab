//! The `remote` [`Registry`] client: every call goes to a [`RegistryServer`](crate::RegistryServer).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use micro_core::options::Options;
use micro_core::registry::{Event, Registry, Service, Watcher};
use micro_core::tls::ClientTls;
use micro_core::{Error, Result};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::NAME;
use crate::proto::registry_v1 as pb;
use crate::proto::registry_v1::registry_client::RegistryClient;
use crate::security::{self, OWNER_METADATA, TOKEN_METADATA};

/// Services (by name) asked for per page of `list_services`.
const LIST_PAGE: u32 = 500;
/// How long one unary call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`Registry`] served by a [`RegistryServer`](crate::RegistryServer) at `address` (the
/// gateway's embedded registry). Connects lazily and reconnects by itself.
///
/// - `host:port` or `http://host:port`: plaintext; `https://host:port`: TLS, verifying the
///   server against `client-tls-ca` (or the system's roots) and presenting `client-tls-cert`
///   when the server asks.
/// - With `registry-token`, every call carries it (`authorization: Bearer <token>`); it is never
///   sent in clear text beyond loopback.
/// - Each instance draws a random owner key and sends it with its registrations: nodes it
///   registered are its own, no other client can refresh or deregister them (clones share it).
#[derive(Clone)]
pub struct RemoteRegistry {
    client: RegistryClient<Channel>,
    address: String,
    secure: bool,
    token: Option<AsciiMetadataValue>,
    owner: AsciiMetadataValue,
}

impl std::fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRegistry")
            .field("address", &self.address)
            .field("tls", &self.secure)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Whether `host` is a loopback address or `localhost`.
fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

impl RemoteRegistry {
    /// A client of the registry at `address` (`host:port`, `http://host:port` or
    /// `https://host:port`), without a token, verifying a TLS server against the system's roots.
    /// Must be called inside a tokio runtime (the connection is made lazily, on it).
    pub fn new(address: &str) -> Result<Self> {
        Self::from_options(address, &Options::default())
    }

    /// A client of the registry at `address` with the token (`registry-token`) and client TLS
    /// (`client-tls-ca`, `client-tls-cert`, `client-tls-key`) of `options`. TLS is used for
    /// `https://` addresses; a token is refused for a plaintext address beyond loopback. Must be
    /// called inside a tokio runtime.
    pub fn from_options(address: &str, options: &Options) -> Result<Self> {
        let (secure, host_port) = match address.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(Error::Option(format!(
                    "option `registry-address`: `{address}` has scheme `{scheme}`; the remote registry takes host:port, http://host:port or https://host:port"
                )));
            }
            None => (false, address),
        };
        let host_port = host_port.trim_end_matches('/');
        let bad_address = |e: &dyn std::fmt::Display| {
            Error::Option(format!(
                "option `registry-address`: `{address}` is not a host:port address: {e}"
            ))
        };
        let (host, _port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| bad_address(&"no port"))?;
        let token = options
            .registry_token
            .as_deref()
            .map(security::bearer)
            .transpose()?;
        if token.is_some() && !secure && !loopback(host) {
            return Err(Error::Option(format!(
                "option `registry-token` is set, and the registry at `{address}` is reached without TLS beyond loopback: the token would cross the network in clear text. Give the address as https://{host_port} (the registry serves TLS when it listens beyond loopback)"
            )));
        }
        let channel = if secure {
            let what = format!("the registry at {address}");
            Arc::new(ClientTls::from_options(options)).channel(host_port, &what)?
        } else {
            Endpoint::from_shared(format!("http://{host_port}"))
                .map_err(|e| bad_address(&e))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .connect_lazy()
        };
        Ok(RemoteRegistry {
            client: RegistryClient::new(channel),
            address: address.to_string(),
            secure,
            token,
            owner: security::new_owner_key()?,
        })
    }

    /// `message` as a request with the token, and the owner key when `owned`.
    fn request<T>(&self, message: T, owned: bool) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN_METADATA, token.clone());
        }
        if owned {
            request
                .metadata_mut()
                .insert(OWNER_METADATA, self.owner.clone());
        }
        request
    }

    /// Awaits a unary call for at most [`CALL_TIMEOUT`].
    async fn unary<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.answer(what, call)
            .await?
            .map_err(|status| self.failure(what, status))
    }

    /// The server's answer to a unary call, awaited for at most [`CALL_TIMEOUT`]: its reply or
    /// its status (for the caller to tell codes apart).
    async fn answer<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<std::result::Result<T, tonic::Status>> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(answer) => Ok(answer.map(tonic::Response::into_inner)),
            Err(_) => Err(Error::Timeout {
                what: format!("{what} at the registry at {}", self.address),
                after: CALL_TIMEOUT,
            }),
        }
    }

    fn failure(&self, what: &str, status: tonic::Status) -> Error {
        // Plaintext to a registry serving TLS ends in a transport or HTTP/2 error.
        let hint = if self.secure {
            ""
        } else {
            " (if it serves TLS, give its address as https://host:port)"
        };
        let message = match status.code() {
            tonic::Code::InvalidArgument => {
                return Error::invalid("service", status.message().to_string());
            }
            // A connection the server closes (plaintext to TLS) ends the call as UNAVAILABLE or,
            // when the close races the request, CANCELLED.
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => format!(
                "{what}: cannot reach the registry at {} (is micro-gateway running there?){hint}: {}",
                self.address,
                status_text(&status)
            ),
            tonic::Code::Internal => format!(
                "{what}: the registry at {} answered with an error{hint}: {}",
                self.address,
                status_text(&status)
            ),
            code @ (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => format!(
                "{what} refused by the registry at {} ({code:?}): {}",
                self.address,
                status.message()
            ),
            _ => format!("{what} at {}: {}", self.address, status_text(&status)),
        };
        Error::backend_msg("registry", NAME, message)
    }
}

#[async_trait]
impl Registry for RemoteRegistry {
    fn name(&self) -> &str {
        NAME
    }

    async fn register(&self, service: &Service, ttl: Duration) -> Result<()> {
        service.validate()?;
        let request = self.request(
            pb::RegisterRequest {
                service: Some(service.into()),
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            },
            true,
        );
        self.unary("register", self.client.clone().register(request))
            .await?;
        Ok(())
    }

    async fn deregister(&self, service: &Service) -> Result<()> {
        let request = self.request(
            pb::DeregisterRequest {
                service: Some(service.into()),
            },
            true,
        );
        self.unary("deregister", self.client.clone().deregister(request))
            .await?;
        Ok(())
    }

    async fn get_service(&self, name: &str) -> Result<Vec<Service>> {
        let request = self.request(
            pb::GetServiceRequest {
                name: name.to_string(),
            },
            false,
        );
        let reply = self
            .unary("get service", self.client.clone().get_service(request))
            .await?;
        Ok(services(reply.services))
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        // Page by page: no message holds the whole registry (a server that predates pages
        // answers everything at once, with no next page).
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = self.request(
                pb::ListServicesRequest {
                    page_size: LIST_PAGE,
                    page_token,
                },
                false,
            );
            let reply = self
                .unary("list services", self.client.clone().list_services(request))
                .await?;
            all.extend(services(reply.services));
            if reply.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = reply.next_page_token;
        }
    }

    async fn list_names(&self) -> Result<Vec<String>> {
        let request = self.request(pb::ListNamesRequest {}, false);
        match self
            .answer("list names", self.client.clone().list_names(request))
            .await?
        {
            Ok(reply) => Ok(reply.names),
            // A gateway that predates ListNames: the names of its whole list.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                let mut names: Vec<String> = self
                    .list_services()
                    .await?
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                names.dedup();
                Ok(names)
            }
            Err(status) => Err(self.failure("list names", status)),
        }
    }

    async fn watch(&self, service: Option<&str>) -> Result<Watcher> {
        let mut request = self.request(
            pb::WatchRequest {
                service: service.unwrap_or_default().to_string(),
            },
            false,
        );
        // No overall timeout on a watch: it lives as long as the caller keeps it.
        request.set_timeout(Duration::from_secs(365 * 24 * 3600));
        // Only the start of the stream is bounded.
        let stream = self
            .unary("watch", self.client.clone().watch(request))
            .await?;
        let this = self.clone();
        Ok(stream
            .map(move |item| match item {
                Ok(event) => Event::try_from(event),
                Err(status) => Err(this.failure("watch", status)),
            })
            .boxed())
    }
}

/// The status's message and every cause under it (a transport error's message alone hides
/// what failed: a refused connection, a certificate that does not verify).
fn status_text(status: &tonic::Status) -> String {
    micro_core::append_causes(
        status.message().to_string(),
        std::error::Error::source(status),
    )
}

fn services(wire: Vec<pb::Service>) -> Vec<Service> {
    wire.into_iter().map(Service::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(loopback(host), "{host}");
        }
        for host in [
            "0.0.0.0",
            "10.0.0.5",
            "[::]",
            "gateway",
            "registry.example.com",
        ] {
            assert!(!loopback(host), "{host}");
        }
    }

    fn with_token(token: &str) -> Options {
        Options {
            registry_token: Some(token.into()),
            ..Options::default()
        }
    }

    #[tokio::test]
    async fn addresses() {
        let token = with_token("a-token-long-enough-0123");
        for address in [
            "127.0.0.1:8000",
            "http://127.0.0.1:8000",
            "https://127.0.0.1:8000",
            "localhost:8000",
            "https://gateway.internal:8000",
        ] {
            let registry = RemoteRegistry::from_options(address, &token)
                .unwrap_or_else(|e| panic!("{address}: {e}"));
            assert_eq!(
                registry.secure,
                address.starts_with("https://"),
                "{address}"
            );
            let debug = format!("{registry:?}");
            assert!(
                !debug.contains("a-token"),
                "the token stays out of logs: {debug}"
            );
        }
        // A token never crosses the network in clear text.
        for address in ["10.0.0.5:8000", "http://gateway.internal:8000"] {
            let err = RemoteRegistry::from_options(address, &token)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("clear text") && err.contains("https://"),
                "{err}"
            );
            assert!(RemoteRegistry::new(address).is_ok(), "no token, no refusal");
        }
        let err = RemoteRegistry::new("grpc://127.0.0.1:8000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme `grpc`"), "{err}");
        let err = RemoteRegistry::new("127.0.0.1").unwrap_err().to_string();
        assert!(err.contains("registry-address"), "{err}");
        let err = RemoteRegistry::from_options("127.0.0.1:8000", &with_token(""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
    }
}
