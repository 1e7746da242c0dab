//! `micro-gateway`: see `micro-gateway --help`.

use std::process::ExitCode;
use std::sync::Arc;

use micro_core::Catalog;
use micro_gateway::{Gateway, GatewayOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("micro-gateway: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> micro_core::Result<()> {
    let options = GatewayOptions::load()?;
    let mut catalog = Catalog::new();
    micro_memory::install(&mut catalog);
    micro_remote::install(&mut catalog);
    micro_etcd::install(&mut catalog);
    micro_consul::install(&mut catalog);
    let registry: Arc<dyn micro_core::Registry> = catalog.registry(&options.service).await?;
    let registry_name = registry.name().to_string();
    let mut gateway = Gateway::new(options.clone(), registry);
    if let Some(rules) = &options.auth_rules {
        let auth = micro_jwt::JwtAuth::from_env()?;
        let rules = micro_jwt::Rules::watch_file(rules, micro_jwt::DEFAULT_POLL)?;
        gateway = gateway.with_access(micro_gateway::Access::new(
            Arc::new(auth),
            rules,
            options.auth_cookie.clone(),
        ));
    }
    let running = gateway.start().await?;
    println!(
        "micro-gateway listening on http://{} (registry {registry_name}, served on {})",
        running.http_address(),
        running.registry_address()
    );
    micro_core::server::shutdown_signal().await;
    running.stop().await
}
