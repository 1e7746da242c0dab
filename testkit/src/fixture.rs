//! The greeter fixture: handlers, test options with short TTLs, and deadlines derived from them.

use std::sync::Arc;
use std::time::Duration;

use micro_core::server::RunningServer;
use micro_core::{Options, Registry, Server};
use tonic::{Request, Response, Status};

use crate::greeter;
use crate::greeter::v1::greeter_server::GreeterServer;
use crate::greeter::v1::{HelloReply, HelloRequest};

/// The registration TTL of every test server and greeter process.
pub const REGISTER_TTL: Duration = Duration::from_secs(2);
/// [`REGISTER_TTL`] as the `--register-ttl` flag and the `register-ttl` option take it.
pub const REGISTER_TTL_ARG: &str = "2s";
/// How often test servers and greeter processes renew their registration.
pub const REGISTER_INTERVAL: Duration = Duration::from_millis(500);
/// [`REGISTER_INTERVAL`] as the `--register-interval` flag takes it.
pub const REGISTER_INTERVAL_ARG: &str = "500ms";
/// The flags that give a greeter process the short TTL and interval above.
pub const SHORT_TTL_ARGS: [&str; 4] = [
    "--register-ttl",
    REGISTER_TTL_ARG,
    "--register-interval",
    REGISTER_INTERVAL_ARG,
];

/// What a deadline allows on top of what the protocol needs, for a loaded 2-core machine
/// (scheduling, a test binary next door compiling or running). A broken behaviour still fails:
/// the defaults it would fall back to (a 30 s TTL, a 10 s interval) are well beyond.
pub const SLACK: Duration = Duration::from_secs(5);

/// How long a node that stopped renewing may stay listed: its TTL (counted from its last
/// renewal, up to one interval before it died), another interval for the registry's sweep or
/// a watcher's refresh, and [`SLACK`].
pub const EXPIRY: Duration = REGISTER_TTL
    .saturating_add(REGISTER_INTERVAL.saturating_mul(2))
    .saturating_add(SLACK);

/// How long a change in the registry (a node registered or deregistered, a new method) may
/// take to reach a watcher such as the gateway or a client's cache: two intervals and
/// [`SLACK`].
pub const PROPAGATION: Duration = REGISTER_INTERVAL.saturating_mul(2).saturating_add(SLACK);

/// Options for an in-process test server named `name`: port 0, [`REGISTER_TTL`],
/// [`REGISTER_INTERVAL`], a 5 s shutdown timeout.
pub fn test_options(name: &str) -> Options {
    Options::new(name)
        .set("register-ttl", REGISTER_TTL_ARG)
        .set("register-interval", REGISTER_INTERVAL_ARG)
        .set("shutdown-timeout", "5s")
        .load_from(["test"])
        .expect("test options")
}

/// The greeter's handler: replies `"<greeting> <name>"`, after `delay`.
#[derive(Clone, Debug)]
pub struct Greeter {
    /// The word before the name ("Hello").
    pub greeting: String,
    /// How long each reply takes (for timeouts and draining a slow call).
    pub delay: Duration,
}

impl Greeter {
    /// A greeter replying `"<greeting> <name>"` at once.
    pub fn new(greeting: &str) -> Self {
        Greeter {
            greeting: greeting.into(),
            delay: Duration::ZERO,
        }
    }
}

impl Default for Greeter {
    fn default() -> Self {
        Greeter::new("Hello")
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

/// The redeployed greeter (`greeter.v2`): SayHello, and SayGoodbye repeating its goodbye
/// `times` (negative: `INVALID_ARGUMENT`) and echoing `request_id` (an int64).
#[derive(Clone, Debug, Default)]
pub struct GreeterV2;

#[tonic::async_trait]
impl greeter::v2::greeter_server::Greeter for GreeterV2 {
    async fn say_hello(
        &self,
        request: Request<greeter::v2::HelloRequest>,
    ) -> Result<Response<greeter::v2::HelloReply>, Status> {
        Ok(Response::new(greeter::v2::HelloReply {
            message: format!("Hello {}", request.into_inner().name),
        }))
    }

    async fn say_goodbye(
        &self,
        request: Request<greeter::v2::GoodbyeRequest>,
    ) -> Result<Response<greeter::v2::GoodbyeReply>, Status> {
        let request = request.into_inner();
        let times = usize::try_from(request.times)
            .map_err(|_| Status::invalid_argument("times must not be negative"))?;
        let message = vec![format!("Goodbye {}", request.name); times.max(1)].join(" ");
        Ok(Response::new(greeter::v2::GoodbyeReply {
            message,
            request_id: request.request_id,
            polite: false,
        }))
    }
}

/// A server serving `handler` as `greeter.v1.Greeter`, with its descriptors registered, not yet
/// started: wrap it or start it.
pub fn greeter_server(options: Options, registry: Arc<dyn Registry>, handler: Greeter) -> Server {
    Server::new(options, registry)
        .descriptors(greeter::DESCRIPTORS)
        .expect("greeter descriptors")
        .add_service(GreeterServer::new(handler))
}

/// Starts a greeter named `greeter` replying `"<greeting> <name>"`, registered in `registry`
/// with [`test_options`].
pub async fn start_greeter(registry: Arc<dyn Registry>, greeting: &str) -> RunningServer {
    greeter_server(test_options("greeter"), registry, Greeter::new(greeting))
        .start()
        .await
        .expect("start greeter")
}

/// Starts the redeployed greeter ([`GreeterV2`], named `greeter`), registered in `registry`
/// with [`test_options`] and the `greeter.v2` descriptors.
pub async fn start_greeter_v2(registry: Arc<dyn Registry>) -> RunningServer {
    Server::new(test_options("greeter"), registry)
        .descriptors(greeter::DESCRIPTORS_V2)
        .expect("greeter.v2 descriptors")
        .add_service(greeter::v2::greeter_server::GreeterServer::new(GreeterV2))
        .start()
        .await
        .expect("start greeter v2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_texts_are_the_durations() {
        let options = test_options("t");
        assert_eq!(options.register_ttl, REGISTER_TTL);
        assert_eq!(options.register_interval, REGISTER_INTERVAL);
        assert!(EXPIRY > REGISTER_TTL + REGISTER_INTERVAL && PROPAGATION > REGISTER_INTERVAL);
    }
}
