//! Server and client in one process over the in-memory registry: starts the greeter, calls it
//! through `client.channel("greeter")`, prints the reply, stops.

use std::sync::Arc;

use micro_core::{Client, Options, Server};
use micro_examples::greeter::v1::HelloRequest;
use micro_examples::greeter::v1::greeter_client::GreeterClient;
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::{Greeter, greeter};
use micro_memory::MemoryRegistry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = micro_core::logging::init_service("quickstart");
    let options = Options::new("greeter").registry("memory").load()?;
    let registry = Arc::new(MemoryRegistry::new());
    let server = Server::new(options.clone(), registry.clone())
        .descriptors(greeter::DESCRIPTORS)?
        .add_service(GreeterServer::new(Greeter::default()))
        .start()
        .await?;

    let client = Client::new(&options, registry);
    let mut greeter = GreeterClient::new(client.channel("greeter"));
    let reply = greeter
        .say_hello(HelloRequest {
            name: "Alice".into(),
        })
        .await?;
    println!("{}", reply.into_inner().message);

    server.stop().await?;
    Ok(())
}
