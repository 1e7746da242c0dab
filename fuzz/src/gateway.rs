//! The gateway's path parser (`api-gateway/src/route.rs`, compiled from its own source by
//! `src/lib.rs`) in public types, for the `route` target.

use crate::route::{self, Target};

pub use crate::error::ApiError;

/// The longest path the gateway routes; [`route`] answers 414 past it.
pub const MAX_PATH: usize = route::MAX_PATH;

/// What the path parser made of a path.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The kind of route: `index`, `health`, `metrics`, `rpc`, `openapi`, `service-openapi`,
    /// `docs`, `mcp`, `describe`, `call` or `ready`.
    pub kind: &'static str,
    /// The names taken from the path, in path order: the service (`service-openapi`,
    /// `describe`, `call`), the gRPC service when given and the method (`call`), the asset
    /// (`docs`).
    pub names: Vec<&'a str>,
}

/// The gateway's path parser (`route::parse`, what `dispatch` routes by) on a raw path.
pub fn route(path: &str) -> Result<Route<'_>, ApiError> {
    // Exhaustive: a new kind of route fails this build until the target knows it.
    let (kind, names) = match route::parse(path)? {
        Target::Index => ("index", vec![]),
        Target::Health => ("health", vec![]),
        Target::Ready => ("ready", vec![]),
        Target::Metrics => ("metrics", vec![]),
        Target::Rpc => ("rpc", vec![]),
        Target::OpenApi => ("openapi", vec![]),
        Target::ServiceOpenApi(service) => ("service-openapi", vec![service]),
        Target::Docs(asset) => ("docs", asset.into_iter().collect()),
        Target::Mcp => ("mcp", vec![]),
        Target::Describe(service) => ("describe", vec![service]),
        Target::Call {
            service,
            grpc_service,
            method,
        } => (
            "call",
            [Some(service), grpc_service, Some(method)]
                .into_iter()
                .flatten()
                .collect(),
        ),
    };
    Ok(Route { kind, names })
}
