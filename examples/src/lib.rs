//! # micro-examples
//!
//! Runnable services and clients for micro, and what they share: the generated greeter code,
//! the greeter handler, the plugin catalog every example installs, and logging setup.
//!
//! - `greeter`: the greeter service, taking every flag of DESIGN §4;
//! - `greeter-client`: calls it through the registry;
//! - `rate-limited`: the greeter with SayHello limited to N calls per second;
//! - `quickstart`: server and client in one process, prints the reply.

use std::time::Duration;

use micro_core::Catalog;
use tonic::{Request, Response, Status};

/// Generated code and descriptors of `proto/greeter/v1/greeter.proto`.
pub mod greeter {
    /// Package `greeter.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("greeter.v1");
    }

    /// The encoded `FileDescriptorSet` of the greeter protos, for reflection and endpoints.
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/greeter_descriptor.bin"));
}

use greeter::v1::{HelloReply, HelloRequest};

/// The greeter's handler: replies `"<greeting> <name>"`.
#[derive(Clone, Debug)]
pub struct Greeter {
    /// The word before the name ("Hello").
    pub greeting: String,
    /// How long each reply takes (to show graceful shutdown draining a slow call).
    pub delay: Duration,
}

impl Default for Greeter {
    fn default() -> Self {
        Greeter {
            greeting: "Hello".into(),
            delay: Duration::ZERO,
        }
    }
}

#[tonic::async_trait]
impl greeter::v1::greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let name = request.into_inner().name;
        Ok(Response::new(HelloReply {
            message: format!("{} {name}", self.greeting),
        }))
    }
}

/// Every plugin the examples can pick by name.
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    micro_memory::install(&mut catalog);
    catalog
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
