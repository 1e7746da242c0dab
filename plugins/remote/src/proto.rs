//! The wire contract (`proto/micro/registry/v1`) shared by [`RegistryServer`](crate::RegistryServer)
//! and [`RemoteRegistry`](crate::RemoteRegistry), and its conversions to the core types.

use micro_core::registry::{self, EventKind};
use micro_core::{Error, Result};

/// Generated code of package `micro.registry.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub(crate) mod registry_v1 {
    tonic::include_proto!("micro.registry.v1");

    /// The encoded descriptor set, for reflection.
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/registry_descriptor.bin"));
}

use registry_v1 as pb;

impl From<&registry::Service> for pb::Service {
    fn from(s: &registry::Service) -> Self {
        let message = |m: &Option<registry::MessageType>| {
            m.as_ref().map(|m| pb::MessageType {
                name: m.name.clone(),
                r#type: m.full_name.clone(),
            })
        };
        pb::Service {
            name: s.name.clone(),
            version: s.version.clone(),
            metadata: s.metadata.clone().into_iter().collect(),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| pb::Endpoint {
                    name: e.name.clone(),
                    request: message(&e.request),
                    response: message(&e.response),
                    metadata: e.metadata.clone().into_iter().collect(),
                })
                .collect(),
            nodes: s
                .nodes
                .iter()
                .map(|n| pb::Node {
                    id: n.id.clone(),
                    address: n.address.clone(),
                    metadata: n.metadata.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

impl From<pb::Service> for registry::Service {
    fn from(s: pb::Service) -> Self {
        let message = |m: Option<pb::MessageType>| {
            m.map(|m| registry::MessageType {
                name: m.name,
                full_name: m.r#type,
            })
        };
        let mut nodes: Vec<registry::Node> = s
            .nodes
            .into_iter()
            .map(|n| registry::Node {
                id: n.id,
                address: n.address,
                metadata: n.metadata.into_iter().collect(),
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        registry::Service {
            name: s.name,
            version: s.version,
            metadata: s.metadata.into_iter().collect(),
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| registry::Endpoint {
                    name: e.name,
                    request: message(e.request),
                    response: message(e.response),
                    metadata: e.metadata.into_iter().collect(),
                })
                .collect(),
            nodes,
        }
    }
}

impl From<&registry::Event> for pb::Event {
    fn from(event: &registry::Event) -> Self {
        let kind = match event.kind {
            EventKind::Create => pb::event::Kind::Create,
            EventKind::Update => pb::event::Kind::Update,
            EventKind::Delete => pb::event::Kind::Delete,
        };
        pb::Event {
            kind: kind as i32,
            service: Some((&event.service).into()),
        }
    }
}

impl TryFrom<pb::Event> for registry::Event {
    type Error = Error;

    fn try_from(event: pb::Event) -> Result<Self> {
        let kind = match pb::event::Kind::try_from(event.kind) {
            Ok(pb::event::Kind::Create) => EventKind::Create,
            Ok(pb::event::Kind::Update) => EventKind::Update,
            Ok(pb::event::Kind::Delete) => EventKind::Delete,
            _ => {
                return Err(Error::Decode {
                    what: "registry event".into(),
                    message: format!("unknown event kind {}", event.kind),
                });
            }
        };
        let service = event.service.ok_or_else(|| Error::Decode {
            what: "registry event".into(),
            message: "the event has no service".into(),
        })?;
        Ok(registry::Event {
            kind,
            service: service.into(),
        })
    }
}
