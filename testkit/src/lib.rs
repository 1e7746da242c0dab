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
//! - fixtures: [`greeter`], [`jobs`], [`Greeter`] (its streams report how they end:
//!   [`StreamEnd`], [`Ended`]), [`GreeterV2`], [`test_options`],
//!   [`greeter_server`], [`start_greeter`], [`start_greeter_v2`]; [`testing`] (every shape of
//!   the JSON mapping) and its echo service [`EchoEverything`], [`start_everything`];
//! - deadlines: [`REGISTER_TTL`], [`REGISTER_INTERVAL`], [`SLACK`], [`EXPIRY`], [`PROPAGATION`];
//! - waiting: [`eventually`] (async, the conformance suites' own), [`wait_until`] (blocking),
//!   [`prompt_error`] and [`error_naming`] (an attempt that must fail, naming what it tried);
//! - processes: [`binary`], [`Process`], [`GatewayProcess`], [`PrivateServer`] (any server
//!   of a test's own, on a [`free_port`]), [`PrivateEtcd`];
//! - HTTP: [`raw_http`], [`post`], [`get`], [`HttpResponse`];
//! - plugin values: [`Wrapped`] (a registry, store or config with a hook on writes and one on
//!   drop, for cleaning up);
//! - brokers: [`collecting`] (a handler that keeps what it gets, in a [`Collected`]);
//! - events: [`dead_letters`] (a topic's dead letters, from the earliest);
//! - consumer groups: [`checker`] (a Jepsen-style queue checker and its publishers),
//!   [`doomed`] (a consumer in a child process, killed with SIGKILL);
//! - benches: [`bench`] (publishing rounds, latency percentiles, rates).

pub mod bench;
pub mod checker;
mod collect;
pub mod doomed;
mod etcd;
mod events;
mod everything;
mod fixture;
mod http;
pub mod large_registry;
pub mod otlp;
mod pki;
mod process;
mod rabbit;
mod server;
mod wait;
mod wrapped;

pub use collect::{Collected, collecting};
pub use etcd::PrivateEtcd;
pub use events::dead_letters;
pub use everything::{EchoEverything, start_everything};
pub use fixture::{
    EXPIRY, Ended, Greeter, GreeterV2, JWT_ENV, NoStream, PROPAGATION, REGISTER_INTERVAL,
    REGISTER_INTERVAL_ARG, REGISTER_TTL, REGISTER_TTL_ARG, SHORT_TTL_ARGS, SLACK, StreamEnd,
    greeter_server, no_stream, start_greeter, start_greeter_v2, test_options,
};
pub use http::{HttpResponse, get, post, raw_http};
pub use pki::{Issued, TestPki};
pub use process::{
    Finished, GatewayProcess, KillOnDrop, Process, binary, memory_kib, python, run, run_command,
};
pub use rabbit::PrivateRabbit;
pub use server::{PrivateServer, accepts, free_port};
pub use wait::{error_naming, eventually, prompt_error, wait_until};
pub use wrapped::Wrapped;

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

/// Generated code and descriptors of `proto/testing/v1/everything.proto`: every shape of the
/// proto3 JSON mapping, served by [`EchoEverything`] ([`start_everything`]).
pub mod testing {
    /// Package `testing.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("testing.v1");
    }

    /// The encoded `FileDescriptorSet` of `testing.v1` (with its well-known imports).
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/everything_descriptor.bin"));
}

/// Generated code of `proto/jobs/v1/jobs.proto`.
pub mod jobs {
    /// Package `jobs.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("jobs.v1");
    }
}
