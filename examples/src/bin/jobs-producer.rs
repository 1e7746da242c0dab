//! Enqueues email jobs: `jobs-producer --broker rabbitmq --count 100`. Each job goes to one of
//! the `jobs-worker` processes sharing the `email-workers` queue.

use std::process::ExitCode;

use clap::Parser;
use micro_core::options::{Options, ServiceFlags};
use micro_examples::catalog;
use micro_examples::jobs::EMAIL_TOPIC;
use micro_examples::jobs::v1::EmailJob;

#[derive(Parser)]
#[command(name = "jobs-producer", about = "Enqueues email jobs on the broker")]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// How many jobs to enqueue
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// Prefix of the job ids (`<batch>-<n>`)
    #[arg(long, default_value = "job")]
    batch: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("jobs-producer", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, cli) = Options::new("jobs-producer").load_with::<Cli>()?;
    let broker = catalog().broker(&options).await?;
    for n in 0..cli.count {
        let job = EmailJob {
            id: format!("{}-{n}", cli.batch),
            to: format!("user{n}@example.com"),
            subject: "Welcome".into(),
            body: "Hello from micro".into(),
        };
        broker.publish_message(EMAIL_TOPIC, &job).await?;
    }
    println!(
        "jobs-producer: enqueued {} jobs on `{EMAIL_TOPIC}` ({})",
        cli.count,
        broker.name()
    );
    Ok(())
}
