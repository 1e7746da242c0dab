//! The greeter with its greeting read from the Config component and followed live:
//! `config-watch --config etcd --registry etcd`, then
//! `etcdctl put /micro/config/greeter/greeting '"Howdy"'` and the next reply says "Howdy <name>".
//! The config path is `<server-name>.greeting`; until it is set the greeting is "Hello". A value
//! that is not a string is reported (naming the key) and the previous greeting kept.

use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use clap::Parser;
use futures::StreamExt;
use micro_core::Server;
use micro_core::options::{Options, ServiceFlags};
use micro_examples::greeter::v1::greeter_server::{Greeter, GreeterServer};
use micro_examples::greeter::v1::{HelloReply, HelloRequest, StreamRequest};
use micro_examples::{ReplyStream, catalog, greeter};
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser)]
#[command(
    name = "config-watch",
    about = "The greeter, its greeting read live from the Config component"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
}

/// Replies with whatever the config says now (in a stream: at each reply).
struct ConfiguredGreeter {
    greeting: Arc<RwLock<String>>,
}

impl ConfiguredGreeter {
    /// What reads the greeting at each call, wherever it runs (a reply stream's task too).
    fn greeting(&self) -> impl Fn() -> String + Send + 'static {
        let greeting = self.greeting.clone();
        move || read(&greeting)
    }
}

/// The greeting now.
fn read(greeting: &RwLock<String>) -> String {
    greeting
        .read()
        .map(|g| g.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

#[tonic::async_trait]
impl Greeter for ConfiguredGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let greeting = read(&self.greeting);
        Ok(Response::new(HelloReply {
            message: format!("{greeting} {}", request.into_inner().name),
        }))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        micro_examples::say_hello_stream(request.into_inner(), self.greeting()).map(Response::new)
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Ok(Response::new(micro_examples::chat(
            request.into_inner(),
            self.greeting(),
        )))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("config-watch", run()).await
}

async fn run() -> micro_core::Result<()> {
    let (options, _cli) = Options::new("greeter").load_with::<Cli>()?;
    let catalog = catalog();
    let registry = catalog.registry(&options).await?;
    let config = catalog.config(&options).await?;
    let path = format!("{}.greeting", options.server_name);

    // Watch before reading, so a change in between is not missed.
    let mut changes = config.watch(&path).await?;
    let initial = config.get_as::<String>(&path).await.unwrap_or_else(|e| {
        tracing::error!(%path, error = %e, "greeting unreadable; using \"Hello\"");
        None
    });
    let greeting = Arc::new(RwLock::new(initial.unwrap_or_else(|| "Hello".to_string())));
    let current = greeting.clone();
    let watched = path.clone();
    tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            let next = match change {
                Ok(Some(serde_json::Value::String(text))) => text,
                Ok(None) => "Hello".to_string(),
                Ok(Some(other)) => {
                    tracing::error!(path = %watched, value = %other, "greeting is not a string; keeping the previous one");
                    continue;
                }
                Err(e) => {
                    tracing::error!(path = %watched, error = %e, "config error; keeping the previous greeting");
                    continue;
                }
            };
            tracing::info!(path = %watched, greeting = %next, "greeting changed");
            *current.write().unwrap_or_else(|p| p.into_inner()) = next;
        }
    });

    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = Server::new(options.clone(), registry.clone())
        .descriptors(greeter::DESCRIPTORS)?
        .add_service(GreeterServer::new(ConfiguredGreeter { greeting }))
        .start()
        .await?;
    println!(
        "config-watch: service {} listening on {} (registry {}, config {} at `{path}`)",
        options.server_name,
        running.address(),
        registry.name(),
        config.name()
    );
    running.stop_on(signal).await
}
