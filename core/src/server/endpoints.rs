//! Registered endpoints, read from the services' descriptors.

use prost_reflect::DescriptorPool;

use crate::registry::{Endpoint, MessageType};

/// One [`Endpoint`] per method of each named gRPC service found in `pool`, in go-micro's shape
/// (`Greeter.SayHello`, metadata `grpc_method` = `/greeter.v1.Greeter/SayHello`).
pub fn endpoints_of(pool: &DescriptorPool, services: &[&str]) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for name in services {
        let Some(service) = pool.get_service_by_name(name) else {
            tracing::warn!(service = %name, "no descriptors for this service: it is registered without endpoints and reflection cannot describe it");
            continue;
        };
        for method in service.methods() {
            let message = |m: prost_reflect::MessageDescriptor| MessageType {
                name: m.name().to_string(),
                full_name: m.full_name().to_string(),
            };
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert(
                "grpc_method".to_string(),
                format!("/{}/{}", service.full_name(), method.name()),
            );
            let stream = match (method.is_client_streaming(), method.is_server_streaming()) {
                (false, false) => None,
                (true, false) => Some("client"),
                (false, true) => Some("server"),
                (true, true) => Some("bidirectional"),
            };
            if let Some(stream) = stream {
                metadata.insert("stream".to_string(), stream.to_string());
            }
            endpoints.push(Endpoint {
                name: format!("{}.{}", service.name(), method.name()),
                request: Some(message(method.input())),
                response: Some(message(method.output())),
                metadata,
            });
        }
    }
    endpoints
}
