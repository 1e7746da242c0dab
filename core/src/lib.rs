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
//! ```no_run
//! use micro_core::{Catalog, Client, Options, Server};
//!
//! # async fn run() -> micro_core::Result<()> {
//! let mut catalog = Catalog::new();
//! // Plugins are installed explicitly, e.g. micro_memory::install(&mut catalog);
//! let options = Options::new("greeter").load()?; // code < micro.toml < MICRO_* < --flags
//! let registry = catalog.registry(&options).await?;
//! let server = Server::new(options.clone(), registry.clone())
//!     // .descriptors(greeter::DESCRIPTORS)?                 // your protos, for reflection
//!     // .add_service(GreeterServer::new(MyGreeter))         // any tonic service
//!     .start()
//!     .await?;
//!
//! let client = Client::new(&options, registry);
//! let channel = client.channel("greeter"); // GreeterClient::new(channel) takes it
//! # drop(channel);
//! server.stop().await
//! # }
//! ```

pub mod auth;
pub mod broker;
pub mod catalog;
pub mod client;
pub mod config;
pub mod debug;
pub mod dynamic;
pub mod events;
pub mod grpc;
mod http_server;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod registry;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
pub mod trace;
pub mod wrapper;

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;

pub use auth::Auth;
pub use broker::Broker;
pub use catalog::Catalog;
pub use client::Client;
pub use config::Config;
pub use error::{BoxError, Error, Result, append_causes, with_causes};
pub use events::Events;
pub use options::Options;
pub use registry::Registry;
pub use server::Server;
pub use store::Store;
