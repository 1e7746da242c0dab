//! # micro-core
//!
//! The core of **micro**, a pluggable microservice framework: one trait per component
//! ([`Registry`], [`Broker`], [`Config`], [`Store`], [`Auth`]), a gRPC [`Server`] and
//! [`Client`] over tonic, wrappers as tower layers, and a [`Catalog`] that picks plugins by name
//! with the precedence code < config file < environment < command line ([`Options`]).
//!
//! Plugins live in their own crates (`micro-memory`, `micro-etcd`, ...) and implement these
//! traits; nothing here depends on a plugin.
//!
//! ```ignore
//! use micro_core::{Catalog, Options, Server};
//! # mod greeter { pub fn server() -> tonic::service::Routes { unimplemented!() } }
//! # async fn run(mut catalog: Catalog, descriptors: &[u8]) -> micro_core::Result<()> {
//! // Plugins are installed explicitly: micro_memory::install(&mut catalog);
//! let options = Options::new("greeter").load()?; // code < micro.toml < MICRO_* < --flags
//! let registry = catalog.registry(&options).await?;
//! Server::new(options, registry)
//!     .descriptors(descriptors)?
//!     .routes(greeter::server())
//!     .serve()
//!     .await
//! # }
//! ```

pub mod auth;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod config;
pub mod options;
pub mod proto;
pub mod registry;
pub mod server;
pub mod store;
pub mod wrapper;

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;

pub use auth::Auth;
pub use broker::Broker;
pub use catalog::Catalog;
pub use client::Client;
pub use config::Config;
pub use error::{BoxError, Error, Result};
pub use options::Options;
pub use registry::Registry;
pub use server::Server;
pub use store::Store;
