//! Sends email jobs: `jobs-worker --broker rabbitmq`. Start several: they share the
//! `email-workers` queue, so each job is sent once. Prints `sent <id> to <address>` per job.
//! A message that is not an EmailJob is dead-lettered at once, not retried.

use std::process::ExitCode;

use clap::Parser;
use micro_core::Server;
use micro_core::broker::{SubscribeOptions, typed};
use micro_core::options::{Options, ServiceFlags};
use micro_examples::catalog;
use micro_examples::jobs::v1::EmailJob;
use micro_examples::jobs::{EMAIL_TOPIC, EMAIL_WORKERS};

#[derive(Parser)]
#[command(name = "jobs-worker", about = "Sends the email jobs of a shared queue")]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("jobs-worker", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, _cli) = Options::new("jobs-worker").load_with::<Cli>()?;
    let catalog = catalog();
    let registry = catalog.registry(&options).await?;
    let broker = catalog.broker(&options).await?;
    let send = typed(|job: EmailJob, _message| async move {
        // A real worker would talk to an SMTP server here; an Err would have the job redelivered.
        println!("sent {} to {}", job.id, job.to);
        Ok(())
    });
    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = Server::new(options, registry)
        .subscribe(
            &broker,
            EMAIL_TOPIC,
            SubscribeOptions::queue(EMAIL_WORKERS),
            send,
        )
        .start()
        .await?;
    println!(
        "jobs-worker: consuming `{EMAIL_TOPIC}` in queue `{EMAIL_WORKERS}` ({}) on {}",
        broker.name(),
        running.address()
    );
    running.stop_on(signal).await
}
