//! # Bench `client`: what discovery, balancing and the client's defences cost per call (issues 3, 13)
//!
//! Starts the greeter in-process on `127.0.0.1:0`, registered in a `MemoryRegistry`, then calls
//! `SayHello` with the same load two ways, interleaved (a, b, a, b) to cancel drift:
//!
//! - **(a)** `micro_core::Client` with everything it does by default — registry resolution from
//!   its cache, round-robin pick, the per-call timeout, the breaker (outlier ejection), the retry
//!   budget, the client metrics, the caller's trace context injected as `traceparent` — wrapped
//!   with a no-op tower layer (`tower::layer::util::Identity`), through
//!   `GreeterClient::new(client.channel("greeter"))`;
//! - **(b)** a plain `tonic::transport::Channel` to the same address (the baseline).
//!
//! The process installs micro's log and trace subscriber as every binary does
//! (`logging::init_service`; no exporter, so the propagation layer keeps span ids) and each call
//! is made inside a `caller` span on both sides, as a handler calling another service would: (a)
//! pays for carrying the trace on, (b) does not carry it.
//!
//! Prints calls/s, p50 and p99 for each and the throughput ratio a/b (target ≥ 0.95: discovery
//! costs at most 5%). Both use one HTTP/2 connection (TCP_NODELAY) shared by all callers. Then
//! instructions per call of (a) and (b) under callgrind and their ratio b/a: the figure that
//! repeats on a noisy machine (see `common/callgrind.rs`; skipped without valgrind).
//!
//! Under callgrind only, **(t)**: the plain channel of (b) carrying the caller's trace on
//! (`micro_core::trace::inject` in a `map_request` layer), to tell the client's own cost apart
//! from the cost of the `traceparent` header itself, which (b) does not pay; and **(h)**:
//! hyper's HTTP/2 connection called from the caller's task, carrying the trace on — the
//! transport the micro client's links use, without the client around it.
//!
//! A **two-node** pair (a2, b) then calls through the micro client balancing over two greeter
//! nodes (a second greeter registered under the same name) against the plain channel to one
//! (issue 17: target ≥ 0.98).
//!
//! A **control** pair (a', b') then repeats the comparison against the same greeter served by a
//! bare `tonic::transport::Server` whose accepted sockets have TCP_NODELAY (registered by hand in
//! a second `MemoryRegistry`): `micro_core::Server` serves a `TcpListenerStream`, whose accepted
//! sockets keep Nagle on, and the resulting ~40 ms stalls (Nagle × delayed ACK) can swamp the
//! client's own cost. The control isolates what the client costs.
//!
//! Run: `cargo bench -p micro-benches --bench client`

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BoxError, Caller, ROUNDS, Stats, callgrind, direct, measure, print_setup, say_hello};
use micro_core::client::ServiceChannel;
use micro_core::{Client, Registry};
use micro_testkit::Greeter;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::greeter::v1::greeter_server::GreeterServer;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tower::layer::util::Identity;
use tracing::Instrument;

/// Calls `SayHello` through a channel of `T`, each call inside a `caller` span: the micro
/// client (discovery, balancing, a no-op layer), a plain tonic channel, or one that carries the
/// trace on.
struct Through<T>(GreeterClient<T>);

impl<T> Caller for Through<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
    T::Future: Send,
    T::Error: Into<BoxError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<BoxError> + Send,
{
    async fn call(&mut self) -> Result<(), String> {
        say_hello(&mut self.0)
            .instrument(tracing::info_span!("caller"))
            .await
    }
}

/// A plain tonic channel that carries the caller's trace on, as a tonic user who traces would
/// write it: `micro_core::trace::inject` in a `map_request` layer.
type TracedChannel = tower::util::MapRequest<
    Channel,
    fn(
        tonic::codegen::http::Request<tonic::body::Body>,
    ) -> tonic::codegen::http::Request<tonic::body::Body>,
>;

/// `request` with the current span's trace context in its headers.
fn traced(
    mut request: tonic::codegen::http::Request<tonic::body::Body>,
) -> tonic::codegen::http::Request<tonic::body::Body> {
    micro_core::trace::inject(request.headers_mut());
    request
}

/// hyper's HTTP/2 connection called straight from the caller's task, carrying the trace on:
/// the transport the micro client's links use, with none of the client's machinery. (h) is
/// the floor (a) stands on.
#[derive(Clone)]
struct Hyper(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for Hyper {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(
        &mut self,
        mut request: tonic::codegen::http::Request<tonic::body::Body>,
    ) -> Self::Future {
        micro_core::trace::inject(request.headers_mut());
        let response = self.0.send_request(request);
        Box::pin(async move { Ok(response.await?.map(tonic::body::Body::new)) })
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // As a binary would: logs (warnings only here) and trace context, nothing exported.
    let _telemetry = micro_core::logging::init_service_with_default("bench-client", "warn");
    let (options, registry, server) = common::start_greeter().await?;
    let address = server.address();
    if let Some((configuration, calls)) = callgrind::child() {
        // A run under callgrind: `calls` sequential calls of (a) or (b), then exit.
        let result = match configuration.as_str() {
            "a" => {
                let micro = Client::new(&options, registry).wrap(Identity::new());
                repeat(Through(GreeterClient::new(micro.channel("greeter"))), calls).await
            }
            "a2" => {
                let second = second_greeter(&options, &registry).await?;
                let micro = Client::new(&options, registry).wrap(Identity::new());
                let result =
                    repeat(Through(GreeterClient::new(micro.channel("greeter"))), calls).await;
                second.stop().await?;
                result
            }
            "b" => repeat(Through(direct(address).await?), calls).await,
            "t" => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?;
                let traced: TracedChannel = tower::util::MapRequest::new(channel, traced);
                repeat(Through(GreeterClient::new(traced)), calls).await
            }
            "h" => {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .timer(hyper_util::rt::TokioTimer::new())
                        .handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await?;
                tokio::spawn(connection);
                let origin = format!("http://{address}").parse()?;
                repeat(
                    Through(GreeterClient::with_origin(Hyper(sender), origin)),
                    calls,
                )
                .await
            }
            other => Err(format!("no configuration {other:?}")),
        };
        server.stop().await?;
        return result.map_err(Into::into);
    }

    let micro = Client::new(&options, registry.clone()).wrap(Identity::new());
    let micro = GreeterClient::new(micro.channel("greeter"));
    let tonic = direct(address).await?;

    print_setup(&format!("bench client: greeter SayHello on {address}"));
    println!("-- greeter on micro_core::Server (the comparison of issue 3)");
    compare(&micro, &tonic, "", 0.95).await;

    let second = second_greeter(&options, &registry).await?;
    let micro = Client::new(&options, registry.clone()).wrap(Identity::new());
    let micro = GreeterClient::new(micro.channel("greeter"));
    println!();
    println!(
        "-- two greeter nodes ({address} and {}) through the micro client, one through tonic",
        second.address()
    );
    compare(&micro, &tonic, "2", 0.98).await;
    second.stop().await?;

    // The control: the same greeter on a bare tonic server with TCP_NODELAY on accepted sockets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GreeterServer::new(Greeter::default()))
            .serve_with_incoming(incoming),
    );
    let mut registration = server.registration().clone();
    registration.nodes[0].id = "greeter-control".into();
    registration.nodes[0].address = control.to_string();
    let control_registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
    control_registry
        .register(&registration, Duration::from_secs(3600))
        .await?;
    let micro = Client::new(&options, control_registry).wrap(Identity::new());
    let micro = GreeterClient::new(micro.channel("greeter"));
    let tonic = direct(control).await?;
    println!();
    println!("-- control: greeter on a bare tonic server with TCP_NODELAY on {control}");
    compare(&micro, &tonic, "'", 0.95).await;

    serving.abort();
    server.stop().await?;
    println!();
    let micro = callgrind::per_call_in_child("a");
    let plain = callgrind::per_call_in_child("b");
    callgrind::print(
        "call",
        &[
            ("(a) micro Client (defaults) + no-op layer", micro.clone()),
            ("(b) plain tonic Channel", plain.clone()),
        ],
        ("b/a", |counts| counts[1] / counts[0]),
        0.95,
        true,
    );
    // What the client's own machinery costs, apart from carrying the trace on (which the plain
    // channel of (b) does not: ~8 000 instructions a call between the two ends, most of it
    // HTTP/2's Huffman coding of the header and the server continuing the trace). (h) is the
    // transport the client's links use with none of the client around it: resolution,
    // balancing, the deadline, breaker, budget and metrics are what (a) adds to it.
    callgrind::print(
        "call",
        &[
            ("(a) micro Client (defaults) + no-op layer", micro),
            (
                "(t) plain tonic Channel carrying traceparent",
                callgrind::per_call_in_child("t"),
            ),
            (
                "(h) hyper HTTP/2 connection carrying traceparent",
                callgrind::per_call_in_child("h"),
            ),
        ],
        ("t/a", |counts| counts[1] / counts[0]),
        0.95,
        true,
    );
    callgrind::print(
        "call",
        &[
            (
                "(a2) micro Client (defaults) over two nodes",
                callgrind::per_call_in_child("a2"),
            ),
            ("(b) plain tonic Channel", plain),
        ],
        ("b/a2", |counts| counts[1] / counts[0]),
        0.98,
        true,
    );
    Ok(())
}

/// A second greeter node of the same service, registered in `registry`.
async fn second_greeter(
    options: &micro_core::Options,
    registry: &Arc<dyn Registry>,
) -> Result<micro_core::server::RunningServer, BoxError> {
    Ok(
        micro_testkit::greeter_server(options.clone(), registry.clone(), Greeter::default())
            .start()
            .await?,
    )
}

/// `calls` calls of `caller`, one after the other.
async fn repeat(mut caller: impl Caller, calls: u64) -> Result<(), String> {
    for _ in 0..calls {
        caller.call().await?;
    }
    Ok(())
}

/// Measures (a) and (b) interleaved, prints each round, the totals and the ratio (`target`:
/// the least a/b the issue asks).
async fn compare(
    micro: &GreeterClient<ServiceChannel>,
    tonic: &GreeterClient<Channel>,
    mark: &str,
    target: f64,
) {
    let (mut a, mut b) = (Stats::default(), Stats::default());
    for round in 1..=ROUNDS {
        let stats = measure(
            (0..common::CONCURRENCY)
                .map(|_| Through(micro.clone()))
                .collect(),
        )
        .await;
        println!(
            "{}",
            stats.line(&format!(
                "round {round} (a{mark}) micro Client (defaults) + no-op layer"
            ))
        );
        a.merge(&stats);
        let stats = measure(
            (0..common::CONCURRENCY)
                .map(|_| Through(tonic.clone()))
                .collect(),
        )
        .await;
        println!(
            "{}",
            stats.line(&format!("round {round} (b{mark}) plain tonic Channel"))
        );
        b.merge(&stats);
    }
    println!(
        "{}",
        a.line(&format!(
            "all (a{mark}) micro Client (defaults) + no-op layer"
        ))
    );
    println!("{}", b.line(&format!("all (b{mark}) plain tonic Channel")));
    let ratio = a.rate() / b.rate();
    println!(
        "ratio a{mark}/b{mark} throughput {ratio:.3} (target >= {target}: {}); p50 a-b {:+.1} µs, p99 a/b {:.2}",
        if ratio >= target { "met" } else { "MISSED" },
        a.quantile_us(0.5) - b.quantile_us(0.5),
        a.quantile_us(0.99) / b.quantile_us(0.99),
    );
}
