//! `micro-gateway`: see `micro-gateway --help`.

use std::process::ExitCode;
use std::sync::Arc;

use micro_core::Catalog;
use micro_core::auth::{DEFAULT_POLL, Rules};
use micro_gateway::{Gateway, GatewayAuth, GatewayOptions};

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = micro_core::logging::init_service("micro-gateway");
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
    micro_jwt::install(&mut catalog);
    micro_nats::install(&mut catalog);
    // The Store auth sessions are checked in (--auth-sessions --store redis).
    micro_redis::install(&mut catalog);
    let registry: Arc<dyn micro_core::Registry> = catalog.registry(&options.service).await?;
    let registry_name = registry.name().to_string();
    let mut gateway = Gateway::new(options.clone(), registry);
    // `--auth` and `--auth-rules` come together (checked when the options load).
    if let (Some(auth), Some(path)) = (catalog.auth(&options.service).await?, &options.auth_rules) {
        let rules = Rules::watch_file(path, DEFAULT_POLL)?;
        // With --auth-sessions the catalog wraps the plugin in a SessionAuth over --store, the
        // Store the services keep their sessions in: old and logged-out tokens are refused here.
        tracing::info!(
            auth = auth.name(),
            rules = %path.display(),
            sessions = options.service.auth_sessions,
            "token checks on"
        );
        gateway = gateway.with_auth(GatewayAuth::new(auth, rules, options.auth_cookie.clone()));
    }
    // CPU profiles on --debug-address and metrics on --metrics-address (each off unless set;
    // /metrics on the gateway's own address is always there), served until the process exits.
    let _debug = micro_core::debug::serve(&options.service).await?;
    let _metrics = micro_core::metrics::serve(&options.service).await?;
    // Listening before start: a SIGTERM right after the gateway is up still stops it gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = gateway.start().await?;
    println!(
        "micro-gateway listening on {} (registry {registry_name}, served on {})",
        running.url(),
        running.registry_address()
    );
    signal.await;
    running.stop().await
}
