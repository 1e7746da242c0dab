//! The greeter fixture: handlers, test options with short TTLs, and deadlines derived from them.

use std::sync::Arc;
use std::time::Duration;

use micro_core::server::RunningServer;
use micro_core::{Options, Registry, Server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::greeter;
use crate::greeter::v1::greeter_server::GreeterServer;
use crate::greeter::v1::{HelloReply, HelloRequest, StreamRequest};

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

/// The environment that gives a process the `jwt` auth plugin with a test issuer, audience and
/// HS256 secret: a gateway with `--auth jwt` and the `auth` example share it, so tokens the one
/// issues the other verifies.
pub const JWT_ENV: [(&str, &str); 3] = [
    ("MICRO_AUTH_JWT_ISSUER", "micro-test"),
    ("MICRO_AUTH_JWT_AUDIENCE", "micro"),
    (
        "MICRO_AUTH_JWT_SECRET",
        "a-test-secret-of-at-least-32-bytes!!",
    ),
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

/// The greeter's handler: SayHello replies `"<greeting> <name>"`, after `delay`;
/// SayHelloStream replies `"<greeting> <name> <i>"` for i in 1..=count (0: 3; above 10000:
/// `INVALID_ARGUMENT`), `interval_ms` apart, and for the name `fail-after-<n>` fails with
/// `ABORTED` after `n` replies; Chat replies `"<greeting> <name>"` to each request of the
/// client's stream until it ends. Each stream's end is reported to `stream_ends`, if set.
#[derive(Clone, Debug)]
pub struct Greeter {
    /// The word before the name ("Hello").
    pub greeting: String,
    /// How long each SayHello reply takes (for timeouts and draining a slow call).
    pub delay: Duration,
    /// Where SayHelloStream and Chat report how each of their streams ended (a test watching
    /// for a cancelled call).
    pub stream_ends: Option<mpsc::UnboundedSender<StreamEnd>>,
}

/// How one SayHelloStream or Chat stream ended, as its producer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// `SayHelloStream` or `Chat`.
    pub method: &'static str,
    /// The request's name (SayHelloStream), or the last name chatted (Chat).
    pub name: String,
    /// Replies handed to the stream before it ended.
    pub sent: u32,
    /// How it ended.
    pub how: Ended,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every reply was sent (SayHelloStream), or the client's requests ended (Chat; tonic hands
    /// a handler a request stream reset by the client as one that ended, so a cancelled Chat
    /// idle between messages reads as this too).
    Completed,
    /// The stream failed on purpose (`fail-after-<n>`).
    Failed,
    /// The client went away (the call was cancelled): the producer stopped early.
    ClientGone,
}

/// Sends `end` to `ends`, when a test listens.
fn report(ends: Option<&mpsc::UnboundedSender<StreamEnd>>, end: StreamEnd) {
    if let Some(ends) = ends {
        let _ = ends.send(end);
    }
}

/// The most replies one SayHelloStream call may ask for.
const MAX_STREAM_COUNT: u32 = 10_000;
/// How many replies SayHelloStream sends when `count` is 0.
const DEFAULT_STREAM_COUNT: u32 = 3;
/// How many replies a stream buffers ahead of a slow client.
const STREAM_BUFFER: usize = 16;

/// The replies of a streaming greeter method, fed by a task that stops when the client goes
/// away.
type ReplyStream = ReceiverStream<Result<HelloReply, Status>>;

/// The streams of a test greeter that answers SayHello only (a relay, an echo).
pub type NoStream = tokio_stream::Empty<Result<HelloReply, Status>>;

/// What a SayHello-only greeter answers to SayHelloStream and Chat.
pub fn no_stream() -> Result<Response<NoStream>, Status> {
    Err(Status::unimplemented("this greeter answers SayHello only"))
}

impl Greeter {
    /// A greeter replying `"<greeting> <name>"` at once.
    pub fn new(greeting: &str) -> Self {
        Greeter {
            greeting: greeting.into(),
            delay: Duration::ZERO,
            stream_ends: None,
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

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let StreamRequest {
            name,
            count,
            interval_ms,
        } = request.into_inner();
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
        let greeting = self.greeting.clone();
        let fail_after = name
            .strip_prefix("fail-after-")
            .and_then(|n| n.parse::<u32>().ok());
        let ends = self.stream_ends.clone();
        let (replies, stream) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let end = |sent: u32, how: Ended| StreamEnd {
                method: "SayHelloStream",
                name: name.clone(),
                sent,
                how,
            };
            for i in 1..=count {
                if fail_after == Some(i - 1) {
                    let status =
                        Status::aborted(format!("{name}: failing after {} replies", i - 1));
                    let _ = replies.send(Err(status)).await;
                    return report(ends.as_ref(), end(i - 1, Ended::Failed));
                }
                if i > 1 && !interval.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = replies.closed() => {
                            return report(ends.as_ref(), end(i - 1, Ended::ClientGone));
                        }
                    }
                }
                let reply = HelloReply {
                    message: format!("{greeting} {name} {i}"),
                };
                if replies.send(Ok(reply)).await.is_err() {
                    return report(ends.as_ref(), end(i - 1, Ended::ClientGone));
                }
            }
            report(ends.as_ref(), end(count, Ended::Completed));
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let mut requests = request.into_inner();
        let greeting = self.greeting.clone();
        let ends = self.stream_ends.clone();
        let (replies, stream) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let (mut sent, mut name) = (0, String::new());
            let how = loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    () = replies.closed() => break Ended::ClientGone,
                };
                let (reply, last) = match next {
                    Ok(Some(request)) => {
                        name = request.name;
                        (
                            Ok(HelloReply {
                                message: format!("{greeting} {name}"),
                            }),
                            false,
                        )
                    }
                    Ok(None) => break Ended::Completed,
                    Err(status) => (Err(status), true),
                };
                if replies.send(reply).await.is_err() {
                    break Ended::ClientGone;
                }
                if last {
                    // The client's stream failed (it went away mid-stream).
                    break Ended::ClientGone;
                }
                sent += 1;
            };
            let end = StreamEnd {
                method: "Chat",
                name,
                sent,
                how,
            };
            report(ends.as_ref(), end);
        });
        Ok(Response::new(ReceiverStream::new(stream)))
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

    use crate::greeter::v1::greeter_client::GreeterClient;
    use tonic::transport::Channel;

    /// A [`Greeter`] served by plain tonic on a free port (no registry), and a client to it.
    async fn serve(greeting: &str) -> GreeterClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let service = GreeterServer::new(Greeter::new(greeting));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        GreeterClient::connect(format!("http://{address}"))
            .await
            .expect("connect")
    }

    fn ask(name: &str, count: u32, interval_ms: u32) -> StreamRequest {
        StreamRequest {
            name: name.into(),
            count,
            interval_ms,
        }
    }

    async fn messages(mut replies: Streaming<HelloReply>) -> Vec<String> {
        let mut messages = Vec::new();
        while let Some(reply) = replies.message().await.expect("reply") {
            messages.push(reply.message);
        }
        messages
    }

    #[tokio::test]
    async fn say_hello_stream_counts_and_caps() {
        let mut client = serve("Hi").await;
        let replies = client
            .say_hello_stream(ask("Ann", 0, 0))
            .await
            .expect("call");
        assert_eq!(
            messages(replies.into_inner()).await,
            ["Hi Ann 1", "Hi Ann 2", "Hi Ann 3"],
            "count 0 means 3"
        );
        let replies = client
            .say_hello_stream(ask("Bo", 2, 20))
            .await
            .expect("call");
        assert_eq!(messages(replies.into_inner()).await, ["Hi Bo 1", "Hi Bo 2"]);
        let replies = client
            .say_hello_stream(ask("Cy", MAX_STREAM_COUNT, 0))
            .await
            .expect("call");
        assert_eq!(
            messages(replies.into_inner()).await.len(),
            MAX_STREAM_COUNT as usize
        );
        let status = client
            .say_hello_stream(ask("Di", MAX_STREAM_COUNT + 1, 0))
            .await
            .expect_err("too many");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("count"), "{status:?}");
    }

    #[tokio::test]
    async fn chat_answers_each_request_as_it_arrives() {
        let mut client = serve("Hello").await;
        let (requests, outgoing) = mpsc::channel(1);
        let mut replies = client
            .chat(ReceiverStream::new(outgoing))
            .await
            .expect("call")
            .into_inner();
        for name in ["Ann", "Bo"] {
            let request = HelloRequest { name: name.into() };
            requests.send(request).await.expect("send");
            // The reply comes while the client's stream is still open.
            let reply = replies.message().await.expect("reply").expect("a reply");
            assert_eq!(reply.message, format!("Hello {name}"));
        }
        drop(requests);
        assert!(
            replies.message().await.expect("end").is_none(),
            "the replies end with the requests"
        );
    }

    #[tokio::test]
    async fn a_stream_stops_when_its_client_goes_away() {
        let mut client = serve("Hello").await;
        client
            .say_hello(HelloRequest::default())
            .await
            .expect("warm up the connection");
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let mut replies = client
            .say_hello_stream(ask("Ann", MAX_STREAM_COUNT, 60_000))
            .await
            .expect("call")
            .into_inner();
        replies.message().await.expect("reply").expect("the first");
        assert!(metrics.num_alive_tasks() > before, "a producer runs");
        drop(replies);
        // Without the stop it would sleep a minute before finding out.
        micro_core::conformance::eventually(SLACK, "the producer stops", || async {
            metrics.num_alive_tasks() <= before
        })
        .await;
    }
}
