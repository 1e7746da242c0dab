//! Publishes placed orders on the event stream: `orders-producer --events nats --count 100`.
//! Every `orders-consumer` group reads all of them, each at its own pace; the stream keeps
//! them, so a group started tomorrow can still replay them from the first.

use std::process::ExitCode;

use clap::Parser;
use micro_core::options::{Options, ServiceFlags};
use micro_examples::catalog;
use micro_examples::orders::PLACED_TOPIC;
use micro_examples::orders::v1::OrderPlaced;

#[derive(Parser)]
#[command(
    name = "orders-producer",
    about = "Publishes placed orders on the event stream"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// How many orders to publish
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// Prefix of the order ids (`<batch>-<n>`)
    #[arg(long, default_value = "order")]
    batch: String,
    /// The topic to publish on
    #[arg(long, default_value = PLACED_TOPIC)]
    topic: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("orders-producer", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, cli) = Options::new("orders-producer").load_with::<Cli>()?;
    let events = catalog().events(&options).await?;
    let mut sequences = None;
    for n in 0..cli.count {
        let order = OrderPlaced {
            id: format!("{}-{n}", cli.batch),
            customer: format!("customer{}", n % 7),
            total_cents: 1_000 + i64::from(n) * 25,
        };
        let stored = events.publish_message(&cli.topic, &order).await?;
        let (first, _) = sequences.get_or_insert((stored.sequence, stored.sequence));
        sequences = Some((*first, stored.sequence));
    }
    match sequences {
        Some((first, last)) => println!(
            "orders-producer: published {} orders on `{}` ({}), sequences {first} to {last}",
            cli.count,
            cli.topic,
            events.name()
        ),
        None => println!("orders-producer: published no orders"),
    }
    Ok(())
}
