//! The greeter with SayHello limited to `--rate` calls per second (burst `--burst`); calls over
//! the limit are answered RESOURCE_EXHAUSTED at once.

use std::process::ExitCode;

use clap::Parser;
use micro_core::Server;
use micro_core::options::{Options, ServiceFlags};
use micro_core::wrapper::RateLimitLayer;
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::{Greeter, catalog, greeter};

#[derive(Parser)]
#[command(
    name = "rate-limited",
    about = "The greeter with SayHello rate limited"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// Calls per second allowed on SayHello
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Calls allowed at once above the rate
    #[arg(long, default_value_t = 10)]
    burst: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("rate-limited", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, cli) = Options::new("greeter").load_with::<Cli>()?;
    let registry = catalog().registry(&options).await?;
    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = Server::new(options, registry)
        .descriptors(greeter::DESCRIPTORS)?
        .add_service(GreeterServer::new(Greeter::default()))
        .wrap_endpoint(
            "Greeter.SayHello",
            RateLimitLayer::per_second(cli.rate).burst(cli.burst),
        )
        .start()
        .await?;
    println!(
        "rate-limited: SayHello limited to {}/s (burst {}) on {}",
        cli.rate,
        cli.burst,
        running.address()
    );
    running.stop_on(signal).await
}
