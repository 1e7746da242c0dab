//! Calls the greeter through the registry: `greeter-client --name Alice [--count N]`.

use std::process::ExitCode;

use clap::Parser;
use micro_core::Client;
use micro_core::options::{Options, ServiceFlags};
use micro_examples::catalog;
use micro_examples::greeter::v1::HelloRequest;
use micro_examples::greeter::v1::greeter_client::GreeterClient;

#[derive(Parser)]
#[command(
    name = "greeter-client",
    about = "Calls the greeter service through the registry"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// Who to greet
    #[arg(long, default_value = "World")]
    name: String,
    /// How many calls to make
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The service to call
    #[arg(long, default_value = "greeter")]
    service: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("greeter-client", run()).await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (options, cli) = Options::new("greeter-client").load_with::<Cli>()?;
    let registry = catalog().registry(&options).await?;
    let client = Client::new(&options, registry);
    let mut greeter = GreeterClient::new(client.channel(&cli.service));
    for _ in 0..cli.count {
        let reply = greeter
            .say_hello(HelloRequest {
                name: cli.name.clone(),
            })
            .await?;
        println!("{}", reply.into_inner().message);
    }
    Ok(())
}
