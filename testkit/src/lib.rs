//! # micro-testkit
//!
//! What micro's tests and benches share, so none of them depends on `micro-examples` (a leaf
//! that only users read): the generated greeter and jobs code, the greeter handlers, servers
//! started in process with short TTLs, deadlines derived from those TTLs, polls that wait on a
//! condition with a deadline (never fixed sleeps), and a harness that runs the workspace's
//! binaries as processes and talks raw HTTP to them. Dev-only: `publish = false`, and a crate
//! takes it as a `[dev-dependencies]` entry.
//!
//! ```ignore
//! use micro_testkit::{EXPIRY, eventually, start_greeter};
//!
//! let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
//! let server = start_greeter(registry.clone(), "Hello").await;   // "Hello <name>"
//! // ... crash it ...
//! eventually(EXPIRY, "the node leaves the registry", || async {
//!     registry.get_service("greeter").await.unwrap().is_empty()
//! })
//! .await;
//! ```
//!
//! - fixtures: [`greeter`], [`jobs`], [`Greeter`], [`GreeterV2`], [`test_options`],
//!   [`greeter_server`], [`start_greeter`], [`start_greeter_v2`];
//! - deadlines: [`REGISTER_TTL`], [`REGISTER_INTERVAL`], [`SLACK`], [`EXPIRY`], [`PROPAGATION`];
//! - waiting: [`eventually`] (async, the conformance suites' own), [`wait_until`] (blocking);
//! - processes: [`binary`], [`Process`], [`GatewayProcess`], [`PrivateEtcd`];
//! - HTTP: [`raw_http`], [`post`], [`get`], [`HttpResponse`].

mod etcd;
mod fixture;
mod http;
mod process;
mod wait;

pub use etcd::PrivateEtcd;
pub use fixture::{
    EXPIRY, Greeter, GreeterV2, PROPAGATION, REGISTER_INTERVAL, REGISTER_INTERVAL_ARG,
    REGISTER_TTL, REGISTER_TTL_ARG, SHORT_TTL_ARGS, SLACK, greeter_server, start_greeter,
    start_greeter_v2, test_options,
};
pub use http::{HttpResponse, get, post, raw_http};
pub use process::{GatewayProcess, Process, binary};
pub use wait::{eventually, wait_until};

/// Generated code and descriptors of `proto/greeter/{v1,v2}/greeter.proto`.
pub mod greeter {
    /// Package `greeter.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("greeter.v1");
    }

    /// Package `greeter.v2`: v1 plus `SayGoodbye`, for redeploying a service under the gateway.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v2 {
        tonic::include_proto!("greeter.v2");
    }

    /// The encoded `FileDescriptorSet` of `greeter.v1`, for reflection and endpoints.
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/greeter_v1_descriptor.bin"));

    /// The encoded `FileDescriptorSet` of `greeter.v2`.
    pub const DESCRIPTORS_V2: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/greeter_v2_descriptor.bin"));
}

/// Generated code of `proto/jobs/v1/jobs.proto`.
pub mod jobs {
    /// Package `jobs.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("jobs.v1");
    }
}
