//! The greeter service: `cargo run -p micro-examples --bin greeter -- --help` lists its flags.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use micro_core::Server;
use micro_core::options::{Options, ServiceFlags};
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::{Greeter, catalog, greeter};

#[derive(Parser)]
#[command(name = "greeter", about = "The greeter service of micro's examples")]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// The word before the name in replies
    #[arg(long, default_value = "Hello")]
    greeting: String,
    /// How long each reply takes, e.g. 2s (to watch graceful shutdown drain a slow call)
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    reply_delay: Option<Duration>,
    /// The share of calls (0 to 1) answered UNAVAILABLE instead of by the handler, while
    /// health still says SERVING: a sick node, to watch clients route around it
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = fail_rate)]
    fail_rate: f64,
}

fn fail_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{text}` is not a rate from 0 to 1, e.g. 0.5")),
    }
}

/// A server wrapper answering a share of the calls `UNAVAILABLE` before they reach the handler.
/// It wraps the user's handlers only, so the health service keeps answering SERVING.
#[derive(Clone, Copy)]
struct FailLayer(f64);

impl<S> tower::Layer<S> for FailLayer {
    type Service = Fail<S>;

    fn layer(&self, inner: S) -> Fail<S> {
        Fail {
            inner,
            rate: self.0,
        }
    }
}

#[derive(Clone)]
struct Fail<S> {
    inner: S,
    rate: f64,
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl<S> tower::Service<Request> for Fail<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if fastrand::f64() < self.rate {
            let status = tonic::Status::unavailable("this greeter fails on purpose (--fail-rate)");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    text.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("`{text}` is not a duration like 2s: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("greeter", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, cli) = Options::new("greeter").load_with::<Cli>()?;
    let registry = catalog().registry(&options).await?;
    let handler = Greeter {
        greeting: cli.greeting,
        delay: cli.reply_delay.unwrap_or_default(),
    };
    let mut server = Server::new(options.clone(), registry.clone());
    if cli.fail_rate > 0.0 {
        server = server.wrap(FailLayer(cli.fail_rate));
    }
    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = server
        .descriptors(greeter::DESCRIPTORS)?
        .add_service(GreeterServer::new(handler))
        .start()
        .await?;
    println!(
        "greeter: service {} node {} listening on {} (registry {})",
        options.server_name,
        running.registration().nodes[0].id,
        running.address(),
        registry.name()
    );
    running.stop_on(signal).await
}
