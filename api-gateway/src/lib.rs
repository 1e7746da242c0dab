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
//! Path rules, the error shape and the gRPC → HTTP mapping are in the README ("The gateway");
//! ARCHITECTURE.md follows one call through these modules.

mod auth;
mod call;
mod cors;
mod dispatch;
mod docs;
mod error;
mod gateway;
mod jsonschema;
mod limit;
mod mcp;
mod metrics;
mod openapi;
mod options;
mod ready;
mod registry_server;
mod request;
mod route;
mod schema;
mod serve;
mod stream;
mod unary;
mod websocket;

pub use auth::GatewayAuth;
pub use error::{ApiError, http_status};
pub use gateway::{Gateway, RunningGateway};
pub use limit::ClientLimiter;
pub use options::{GatewayFlags, GatewayOptions};
