//! Processes placed orders as a member of a consumer group:
//! `orders-consumer --events nats --group billing`. Prints `processed <id> (sequence <n>)` per
//! order and acknowledges it.
//!
//! Members of one group share the orders; a group remembers where it is, so a consumer killed
//! mid-stream and started again resumes after the last order its group acknowledged (what it
//! held unacknowledged comes again after `--ack-wait`). A new group reads from `--from`
//! (`earliest`: every order ever placed; `latest`: only new ones).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use micro_core::Server;
use micro_core::events::{ConsumeOptions, Offset, typed};
use micro_core::options::{Options, ServiceFlags};
use micro_examples::catalog;
use micro_examples::orders::PLACED_TOPIC;
use micro_examples::orders::v1::OrderPlaced;

#[derive(Parser)]
#[command(
    name = "orders-consumer",
    about = "Processes placed orders in a consumer group"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// The consumer group: its members share the orders and its position
    #[arg(long, default_value = "billing")]
    group: String,
    /// Where a new group starts: earliest or latest
    #[arg(long, default_value = "earliest", value_parser = parse_offset)]
    from: Offset,
    /// How long an order may stay unacknowledged before it is delivered again
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// How long processing one order takes (to watch a slow consumer)
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// The topic to consume
    #[arg(long, default_value = PLACED_TOPIC)]
    topic: String,
}

fn parse_offset(text: &str) -> Result<Offset, String> {
    match text {
        "earliest" => Ok(Offset::Earliest),
        "latest" => Ok(Offset::Latest),
        other => Err(format!("`{other}` is not earliest or latest")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("orders-consumer", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, cli) = Options::new("orders-consumer").load_with::<Cli>()?;
    let catalog = catalog();
    let registry = catalog.registry(&options).await?;
    let events = catalog.events(&options).await?;
    let delay = cli.delay;
    let process = typed(move |order: OrderPlaced, event| async move {
        // A real consumer would bill the order here; an Err would have it delivered again.
        tokio::time::sleep(delay).await;
        println!("processed {} (sequence {})", order.id, event.sequence);
        Ok(())
    });
    let consume = ConsumeOptions::group(&cli.group)
        .with_offset(cli.from)
        .with_ack_wait(cli.ack_wait);
    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = Server::new(options, registry)
        .consume(&events, &cli.topic, consume, process)
        .start()
        .await?;
    println!(
        "orders-consumer: group `{}` consuming `{}` ({}) on {}",
        cli.group,
        cli.topic,
        events.name(),
        running.address()
    );
    running.stop_on(signal).await
}
