//! A service in front of the greeter: `greeter-relay --broker nats`. Its SayHello calls the
//! `greeter` service through the registry and publishes the reply on topic `greeted` (`--topic`), so one
//! request makes a trace across three processes (and a message) when they export spans:
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 greeter-relay --broker nats
//! ```
//!
//! Its streaming methods are relayed to the greeter as they are.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use micro_core::options::{Options, ServiceFlags};
use micro_core::{Broker, Client, Server};
use micro_examples::greeter::v1::greeter_client::GreeterClient;
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::greeter::v1::{HelloReply, HelloRequest, StreamRequest};
use micro_examples::{catalog, greeter};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser)]
#[command(
    name = "greeter-relay",
    about = "Relays SayHello to the greeter service and publishes each reply on `greeted`"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// The service to relay to
    #[arg(long, default_value = "greeter")]
    to: String,
    /// The topic each reply is published on
    #[arg(long, default_value = "greeted")]
    topic: String,
}

#[derive(Clone)]
struct Relay {
    client: Client,
    to: String,
    topic: String,
    broker: Arc<dyn Broker>,
}

impl Relay {
    fn greeter(&self) -> GreeterClient<micro_core::client::ServiceChannel> {
        GreeterClient::new(self.client.channel(&self.to))
    }
}

#[tonic::async_trait]
impl greeter::v1::greeter_server::Greeter for Relay {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        // Runs inside the server's `handle` span: the call and the message carry its trace.
        let reply = self
            .greeter()
            .say_hello(request.into_inner())
            .await?
            .into_inner();
        self.broker
            .publish_message(&self.topic, &reply)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the reply was not published on `{}`: {e}",
                    self.topic
                ))
            })?;
        Ok(Response::new(reply))
    }

    type SayHelloStreamStream = Streaming<HelloReply>;

    async fn say_hello_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Streaming<HelloReply>>, Status> {
        let replies = self
            .greeter()
            .say_hello_stream(request.into_inner())
            .await?;
        Ok(Response::new(replies.into_inner()))
    }

    type ChatStream = Streaming<HelloReply>;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Streaming<HelloReply>>, Status> {
        // The client's stream relayed until it ends or fails (a failure ends the relayed one).
        let requests = request.into_inner().map_while(Result::ok);
        let replies = self.greeter().chat(requests).await?;
        Ok(Response::new(replies.into_inner()))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("greeter-relay", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, cli) = Options::new("greeter-relay").load_with::<Cli>()?;
    let catalog = catalog();
    let registry = catalog.registry(&options).await?;
    let broker = catalog.broker(&options).await?;
    let relay = Relay {
        client: Client::new(&options, registry.clone()),
        to: cli.to,
        topic: cli.topic,
        broker: broker.clone(),
    };
    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = Server::new(options.clone(), registry.clone())
        .descriptors(greeter::DESCRIPTORS)?
        .add_service(GreeterServer::new(relay))
        .start()
        .await?;
    println!(
        "greeter-relay: service {} node {} listening on {} (registry {}, broker {})",
        options.server_name,
        running.registration().nodes[0].id,
        running.address(),
        registry.name(),
        broker.name()
    );
    running.stop_on(signal).await
}
