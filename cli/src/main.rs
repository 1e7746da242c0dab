//! `micro`: see, call and scaffold micro services from a terminal.
//!
//! It talks to the registry and the services directly (no gateway), learns their methods by gRPC
//! reflection (no `.proto` files), and picks plugins by name with the same flags, `MICRO_*`
//! variables and `micro.toml` as every other binary:
//!
//! ```sh
//! micro services                                         # what is registered
//! micro describe greeter                                 # nodes, health, endpoints, templates
//! micro call greeter Greeter.SayHello '{"name":"Alice"}' # → {"message": "Hello Alice"}
//! micro --registry etcd --broker rabbitmq publish jobs.email '{"to":"a@b"}'
//! micro new demo                                         # a service project that builds
//! ```
//!
//! Exit codes: 0 success; 1 the operation failed (a call's gRPC code and message on stderr);
//! 2 usage error (bad flags, unknown service or endpoint, JSON that does not fit the message).

mod broker;
mod call;
mod config;
mod error;
mod new;
mod output;
mod services;
mod store;
mod template;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use micro_core::options::{Options, ServiceFlags};
use micro_core::{Catalog, Client};

use crate::error::CliError;
use crate::output::Format;

/// The command line.
#[derive(Parser)]
#[command(
    name = "micro",
    version,
    about = "See, call and scaffold micro services from a terminal",
    after_help = "Plugins are chosen as in every micro binary: code < micro.toml < MICRO_* < flags.\n\
                  Exit codes: 0 success, 1 the operation failed, 2 usage error."
)]
struct Cli {
    #[command(flatten)]
    plugins: ServiceFlags,
    /// Output: `text` for people (tables, colour on a terminal), `json` for scripts
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List registered services: names, versions, node counts
    Services,
    /// Show a service: its nodes (address, metadata, health) and endpoints with request templates
    Describe {
        /// The registered service (`greeter`)
        service: String,
    },
    /// Call an endpoint with a JSON request (streams: one JSON message per line)
    Call(call::CallArgs),
    /// Check the gRPC health of every node of a service, with latency
    Health {
        /// The registered service (`greeter`)
        service: String,
    },
    /// Publish a message on a topic through the broker
    Publish(broker::PublishArgs),
    /// Print the messages published on a topic, one per line
    Subscribe(broker::SubscribeArgs),
    /// Read, write, delete and list records of the store
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Get, set, delete and watch configuration values
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Create a new service project that builds and passes its test as generated
    New(new::NewArgs),
    /// Print a shell completion script (`micro completions bash > /etc/bash_completion.d/micro`)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// The service flags that mean nothing to this command: hidden from `--help`.
const SERVICE_ONLY: [&str; 10] = [
    "server_name",
    "server_address",
    "server_version",
    "register_ttl",
    "register_interval",
    "shutdown_timeout",
    "auth_sessions_table",
    "server_tls_cert",
    "server_tls_key",
    "server_tls_client_ca",
];

/// The command line: plugin flags global (valid after the subcommand too), service-only
/// flags hidden.
fn command() -> clap::Command {
    let command = Cli::command();
    let plugin_flags: Vec<String> =
        <ServiceFlags as clap::Args>::augment_args(clap::Command::new("flags"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
    plugin_flags.iter().fold(command, |command, id| {
        let hidden = SERVICE_ONLY.contains(&id.as_str());
        command.mut_arg(id, |arg| arg.global(true).hide(hidden))
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = command();
    let matches = command
        .clone()
        .try_get_matches_from(std::env::args_os())
        .unwrap_or_else(|e| e.exit());
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let _telemetry = micro_core::logging::init_service_with_default("micro", "warn");
    match run(cli, &command, &matches).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("micro: {error}");
            error.exit_code()
        }
    }
}

async fn run(
    cli: Cli,
    command: &clap::Command,
    matches: &clap::ArgMatches,
) -> Result<(), CliError> {
    let format = cli.output;
    let options = || -> Result<Options, CliError> {
        Options::new("micro")
            .resolve::<Options>(command, matches)
            .and_then(Options::validate)
            .map_err(|e| CliError::Usage(e.to_string()))
    };
    match cli.command {
        Command::Services => {
            let options = options()?;
            services::list(&*catalog().registry(&options).await?, format).await
        }
        Command::Describe { service } => {
            services::describe(&client(&options()?).await?, &service, format).await
        }
        Command::Health { service } => {
            services::health(&client(&options()?).await?, &service, format).await
        }
        Command::Call(args) => call::run(&client(&options()?).await?, args, format).await,
        Command::Publish(args) => {
            let options = options()?;
            broker::publish(&*catalog().broker(&options).await?, args).await
        }
        Command::Subscribe(args) => {
            let options = options()?;
            broker::subscribe(&*catalog().broker(&options).await?, args, format).await
        }
        Command::Store(store) => {
            let options = options()?;
            store::run(&*catalog().store(&options).await?, store, format).await
        }
        Command::Config(config) => {
            let options = options()?;
            config::run(&*catalog().config(&options).await?, config, format).await
        }
        Command::New(args) => new::run(&args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut self::command(), "micro", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// A client over the registry the options name. Without the breaker: a command makes one call
/// and exits, so ejecting a node and probing it would help no later call (and its log line
/// would muddle the command's one-line answer).
async fn client(options: &Options) -> Result<Client, CliError> {
    let registry = catalog().registry(options).await?;
    Ok(Client::new(options, registry).breaker(micro_core::client::BreakerConfig::off()))
}

/// Every plugin `micro` can pick by name.
fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    micro_memory::install(&mut catalog);
    micro_remote::install(&mut catalog);
    micro_etcd::install(&mut catalog);
    micro_consul::install(&mut catalog);
    micro_rabbitmq::install(&mut catalog);
    micro_jwt::install(&mut catalog);
    micro_nats::install(&mut catalog);
    micro_redis::install(&mut catalog);
    catalog
}
