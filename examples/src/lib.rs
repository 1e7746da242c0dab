//! # micro-examples
//!
//! Runnable services and clients for micro, and what they share: the generated greeter code,
//! the greeter handler, the plugin catalog every example installs, and logging setup.
//!
//! - `greeter`: the greeter service, taking every service flag (README, "Options and precedence");
//! - `greeter-client`: calls it through the registry;
//! - `rate-limited`: the greeter with SayHello limited to N calls per second;
//! - `quickstart`: server and client in one process, prints the reply;
//! - `config-watch`: the greeter with its greeting read live from the Config component;
//! - `jobs-producer`, `jobs-worker`: email jobs through the broker, workers sharing one queue;
//! - `auth`: Login and Refresh for JWT pairs, and a greeter whose SayHello needs a scope;
//! - `orders-producer`, `orders-consumer`: an order stream through the Events component,
//!   consumer groups that resume where they left off, and replay from the start.

use std::time::Duration;

use micro_core::Catalog;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Generated code and descriptors of `proto/greeter/v1/greeter.proto`.
pub mod greeter {
    /// Package `greeter.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("greeter.v1");
    }

    /// The encoded `FileDescriptorSet` of `greeter.v1`, for reflection and endpoints.
    pub const DESCRIPTORS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/greeter_v1_descriptor.bin"));
}

/// Generated code and descriptors of `proto/auth/v1/auth.proto`.
pub mod auth {
    /// Package `auth.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("auth.v1");
    }

    /// The encoded `FileDescriptorSet` of `auth.v1`.
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/auth_descriptor.bin"));
}

/// Generated code of `proto/jobs/v1/jobs.proto`.
pub mod jobs {
    /// Package `jobs.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("jobs.v1");
    }

    /// The topic email jobs are published on.
    pub const EMAIL_TOPIC: &str = "jobs.email";
    /// The queue the email workers share.
    pub const EMAIL_WORKERS: &str = "email-workers";
}

/// Generated code of `proto/orders/v1/orders.proto`.
pub mod orders {
    /// Package `orders.v1`.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("orders.v1");
    }

    /// The topic placed orders are published on.
    pub const PLACED_TOPIC: &str = "orders.placed";
}

use greeter::v1::{HelloReply, HelloRequest, StreamRequest};

/// The greeter's handler: SayHello replies `"<greeting> <name>"` (an empty or blank name is
/// `INVALID_ARGUMENT` with a `BadRequest` field violation on `name`); SayHelloStream replies
/// `"<greeting> <name> <i>"` `count` times, `interval_ms` apart; Chat replies
/// `"<greeting> <name>"` to each request of the client's stream.
#[derive(Clone, Debug)]
pub struct Greeter {
    /// The word before the name ("Hello").
    pub greeting: String,
    /// How long each SayHello reply takes (to show graceful shutdown draining a slow call).
    pub delay: Duration,
}

/// The most replies one SayHelloStream call may ask for.
pub const MAX_STREAM_COUNT: u32 = 10_000;
/// How many replies SayHelloStream sends when `count` is 0.
pub const DEFAULT_STREAM_COUNT: u32 = 3;
/// How many replies a stream buffers ahead of a slow client.
const STREAM_BUFFER: usize = 16;

/// The replies of a streaming method, fed by a task that stops when the client goes away.
pub type ReplyStream = ReceiverStream<Result<HelloReply, Status>>;

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
        if name.trim().is_empty() {
            // A rich error: the gateway shows the field violation in its error body's `details`.
            return Err(
                micro_core::status::invalid_argument("the name to greet is empty")
                    .field_violation("name", "must not be empty or only whitespace")
                    .into(),
            );
        }
        Ok(Response::new(HelloReply {
            message: format!("{} {name}", self.greeting),
        }))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let greeting = self.greeting.clone();
        say_hello_stream(request.into_inner(), move || greeting.clone()).map(Response::new)
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let greeting = self.greeting.clone();
        Ok(Response::new(chat(request.into_inner(), move || {
            greeting.clone()
        })))
    }
}

/// SayHelloStream with the greeting `greeting()` returns before each reply: `"<greeting> <name>
/// <i>"` for i in 1..=count (0: [`DEFAULT_STREAM_COUNT`]; above [`MAX_STREAM_COUNT`]:
/// `INVALID_ARGUMENT`), `interval_ms` apart. The replies are produced by a task that stops as
/// soon as the client goes away.
pub fn say_hello_stream(
    request: StreamRequest,
    greeting: impl Fn() -> String + Send + 'static,
) -> Result<ReplyStream, Status> {
    let StreamRequest {
        name,
        count,
        interval_ms,
    } = request;
    if count > MAX_STREAM_COUNT {
        return Err(Status::invalid_argument(format!(
            "count must be at most {MAX_STREAM_COUNT}, got {count}"
        )));
    }
    let count = if count == 0 {
        DEFAULT_STREAM_COUNT
    } else {
        count
    };
    let interval = Duration::from_millis(interval_ms.into());
    let (replies, stream) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        for i in 1..=count {
            if i > 1 && !interval.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = replies.closed() => return,
                }
            }
            let reply = HelloReply {
                message: format!("{} {name} {i}", greeting()),
            };
            if replies.send(Ok(reply)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(stream))
}

/// Chat with the greeting `greeting()` returns before each reply: `"<greeting> <name>"` for
/// each request as it arrives, until the client's stream ends (or fails: its error is the
/// last item). The replies are produced by a task that stops as soon as the client goes away.
pub fn chat(
    mut requests: Streaming<HelloRequest>,
    greeting: impl Fn() -> String + Send + 'static,
) -> ReplyStream {
    let (replies, stream) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = requests.message() => next,
                () = replies.closed() => return,
            };
            let (reply, last) = match next {
                Ok(Some(request)) => (
                    Ok(HelloReply {
                        message: format!("{} {}", greeting(), request.name),
                    }),
                    false,
                ),
                Ok(None) => return,
                Err(status) => (Err(status), true),
            };
            if replies.send(reply).await.is_err() || last {
                return;
            }
        }
    });
    ReceiverStream::new(stream)
}

/// Every plugin the examples can pick by name.
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    micro_memory::install(&mut catalog);
    micro_remote::install(&mut catalog);
    micro_etcd::install(&mut catalog);
    micro_consul::install(&mut catalog);
    micro_rabbitmq::install(&mut catalog);
    micro_jwt::install(&mut catalog);
    micro_nats::install(&mut catalog);
    micro_redis::install(&mut catalog);
    catalog
}

/// The `main` of every example binary: logging set up, `run` awaited, an error printed as
/// `<name>: <error>` with exit status 2.
pub async fn run_binary<E: std::fmt::Display>(
    name: &str,
    run: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    let _telemetry = micro_core::logging::init_service(name);
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
