//! The greeter service: `cargo run -p micro-examples --bin greeter -- --help` lists its flags.

use std::process::ExitCode;
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
    let running = Server::new(options.clone(), registry.clone())
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
    running.stop_on_signal().await
}
