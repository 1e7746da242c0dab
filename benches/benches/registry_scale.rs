//! # Bench `registry_scale`: the gateway over a large registry (issue 17)
//!
//! Fills a registry with many nodes, starts the real `micro-gateway` binary on it as a child
//! process, and prints what the issue asks of it, with "met" or "MISSED" beside each target:
//!
//! - **spawn → first routed call**: from spawning the gateway to the first `200` answer to
//!   `POST /greeter/Greeter/SayHello` (target ≤ 5 s);
//! - **`GET /`**: the median of [`INDEX_SAMPLES`] requests (target ≤ 1 s); `GET /{service}` too;
//! - **the gateway's RSS** (`VmRSS` and the peak `VmHWM` from `/proc/<pid>/status`; the peak is
//!   judged, target ≤ 150 MB);
//! - **how fast the gateway sees a change** while [`CHURN_PER_SECOND`] node registrations and
//!   deregistrations a second hit random filler services for [`CHURN_FOR`] (target p99 ≤ 100 ms).
//!
//! How a change is observed: a dedicated probe service ([`PROBE`], one node: the greeter's
//! address) is registered and deregistered in turn, and after each write the bench polls
//! `POST /scale-probe/Greeter/SayHello` until the answer flips (200 once the node is there, an
//! error once it is gone). The time is from the write being sent to the first flipped answer.
//! A node appearing is routable once the gateway's client cache, kept by a registry watch of
//! the service, has it; a node going away shows as soon as either that watch or the
//! schema cache's watch of the whole registry drops it. The same change is also timed at the
//! registry's own `watch()` API in the bench process (the plugin's code, without the gateway).
//!
//! Two registries:
//!
//! 1. **etcd** at [`ETCD`]: [`ETCD_NODES`] node records over [`ETCD_SERVICES`] services, written
//!    straight into etcd in transactions of [`TXN_OPS`] puts ([`TXNS_IN_FLIGHT`] at a time), on
//!    leases of the bench's, one per [`LEASE_KEYS`] nodes (kept alive while it runs, revoked at
//!    the end: if the bench dies, everything lapses after [`LEASE_TTL_SECS`]; why not one lease:
//!    [`Leases`]). The churn's writes are single puts and deletes. Each record is what
//!    `EtcdRegistry::register` stores: the JSON of the greeter's own registration with one node,
//!    renamed. The greeter runs in process, registered in etcd by its `Server`. The gateway is
//!    spawned after the fill: `--registry etcd --registry-address 127.0.0.1:2379`.
//! 2. **the embedded registry** (the gateway's own, `--registry memory` served by
//!    `plugins/remote`): the gateway is spawned first (it holds the registry), the greeter
//!    registers through `RemoteRegistry`, then [`EMBEDDED_NODES`] nodes over
//!    [`EMBEDDED_SERVICES`] services are registered one node per call, [`REGISTERS_IN_FLIGHT`]
//!    calls at a time. Its "first routed call" is made on an empty registry: not comparable to
//!    the target, and printed as such.
//!
//! At the end the filler is deleted from etcd in transactions of [`TXN_OPS`] deletes (one huge
//! delete would hand every watcher of the registry one huge watch response), the leases are
//! revoked, and etcd's history is compacted up to that point so repeated runs do not fill
//! etcd's space quota.
//!
//! Run: `cargo build --release -p micro-gateway && cargo bench -p micro-benches --bench
//! registry_scale` (the bench spawns `target/release/micro-gateway`; cargo does not build
//! another package's binary for a bench). etcd must answer on 127.0.0.1:2379
//! (`bash scripts/setup`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client as Etcd, CompactionOptions, GetOptions, PutOptions, Txn, TxnOp};
use futures::StreamExt;
use micro_core::Registry;
use micro_core::registry::{EventKind, Node, Service};
use micro_core::server::RunningServer;
use micro_etcd::{EtcdRegistry, REGISTRY_PREFIX};
use micro_remote::RemoteRegistry;
use micro_testkit::{Greeter, greeter_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

// ---------------------------------------------------------------------------------------------
// What is measured, and at what scale.

/// etcd's client address.
const ETCD: &str = "127.0.0.1:2379";
/// Nodes written into etcd: issue 17's figure.
const ETCD_NODES: usize = 100_000;
/// Services the etcd nodes are spread over (evenly: node `k` is in service `k % services`).
const ETCD_SERVICES: usize = 20_000;
/// Nodes registered in the embedded registry, through its gRPC API one node per call.
const EMBEDDED_NODES: usize = 20_000;
/// Services the embedded registry's nodes are spread over.
const EMBEDDED_SERVICES: usize = 4_000;

/// Puts per etcd transaction: etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// etcd transactions in flight while filling and cleaning up.
const TXNS_IN_FLIGHT: usize = 8;
/// Keys per page when listing etcd (the etcd plugin's page size).
const PAGE: i64 = 500;
/// Registration calls in flight while filling the embedded registry.
const REGISTERS_IN_FLIGHT: usize = 64;
/// Filler nodes per etcd lease of the bench's (see [`Leases`]).
const LEASE_KEYS: usize = 1024;
/// The TTL of the bench's etcd leases (kept alive while the bench runs).
const LEASE_TTL_SECS: i64 = 300;
/// How often the leases are kept alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(60);
/// The TTL of the embedded registry's filler (the gateway is stopped long before).
const EMBEDDED_TTL: Duration = Duration::from_secs(3600);

/// Node registrations plus deregistrations per second during the churn (half each).
const CHURN_PER_SECOND: usize = 1_000;
/// How long the churn lasts.
const CHURN_FOR: Duration = Duration::from_secs(10);
/// Churn writes in flight at most; past it the churn falls behind (and says so).
const CHURN_IN_FLIGHT: usize = 256;
/// How long the churn's last writes may take to be answered after its window.
const DRAIN_WITHIN: Duration = Duration::from_secs(10);
/// The pause between one probe change being seen and the next write.
const PROBE_GAP: Duration = Duration::from_millis(25);
/// The pause between two polls of the gateway for a probe change.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long a probe change may take to be seen before it counts as missed.
const SEEN_WITHIN: Duration = Duration::from_secs(5);
/// How long the gateway may take to print its startup line, or to route its first call.
const STARTUP_WITHIN: Duration = Duration::from_secs(120);
/// How long the gateway's RSS must hold still to count as settled.
const SETTLED_FOR: Duration = Duration::from_secs(2);
/// How long the gateway's RSS may take to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// `GET /` and `GET /{service}` requests timed (the median is reported).
const INDEX_SAMPLES: usize = 3;

/// The greeter's registered name.
const GREETER: &str = "greeter";
/// The probe service: registered and deregistered in turn while the churn runs.
const PROBE: &str = "scale-probe";
/// The body of every call.
const CALL_BODY: &str = r#"{"name":"bench"}"#;

/// Issue 17's targets.
const TARGET_FIRST_CALL: Duration = Duration::from_secs(5);
const TARGET_INDEX: Duration = Duration::from_secs(1);
const TARGET_RSS_MB: f64 = 150.0;
const TARGET_SEEN_P99: Duration = Duration::from_millis(100);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let binary = gateway_binary()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bench registry_scale: gateway {}, {cpus} CPUs; churn {CHURN_PER_SECOND} writes/s for {} s",
        binary.display(),
        CHURN_FOR.as_secs()
    );
    // `cargo bench ... -- etcd` or `-- embedded` runs one round only.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |round: &str| {
        let named: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        named.is_empty() || named.iter().any(|a| *a == round)
    };
    let mut columns = Vec::new();
    let mut failed = Vec::new();
    if wanted("etcd") {
        println!();
        println!("-- etcd at {ETCD}: {ETCD_NODES} nodes over {ETCD_SERVICES} services");
        match etcd_round(&binary).await {
            Ok(figures) => columns.push(figures),
            Err(e) => {
                println!("etcd round FAILED: {e}");
                failed.push("etcd");
            }
        }
    }
    if wanted("embedded") {
        println!();
        println!(
            "-- embedded registry (memory, served by the gateway): {EMBEDDED_NODES} nodes over {EMBEDDED_SERVICES} services"
        );
        match embedded_round(&binary).await {
            Ok(figures) => columns.push(figures),
            Err(e) => {
                println!("embedded round FAILED: {e}");
                failed.push("embedded");
            }
        }
    }
    println!();
    print_table(&columns);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("rounds failed: {}", failed.join(", ")).into())
    }
}

/// `micro-gateway` beside this bench's executable (`target/release/deps/..` → `target/release`).
fn gateway_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("no target directory above the bench executable")?;
    let path = dir.join("micro-gateway");
    if !path.is_file() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p micro-gateway` first",
            path.display()
        )
        .into());
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// The figures of one registry.

/// Everything measured on one registry.
struct Figures {
    /// Column heading.
    name: String,
    nodes: usize,
    services: usize,
    /// JSON bytes of one filler record.
    record_bytes: usize,
    /// Writing the filler.
    fill: Duration,
    /// Spawn → the startup line.
    listening: Duration,
    /// Spawn → the first `200` for `POST /greeter/Greeter/SayHello`.
    first_call: Duration,
    /// Whether the first call was made on the full registry (not for the embedded one).
    first_call_at_scale: bool,
    /// `list_services()` from the bench process, as the gateway's watch lists at start.
    listed: Result<(Duration, usize), String>,
    /// etcd only: the prefix read in raw pages.
    paged: Option<Paged>,
    observed: Observed,
}

/// What is measured on a gateway routing over a filled registry.
struct Observed {
    index: Vec<Duration>,
    index_bytes: usize,
    index_services: usize,
    describe: Vec<Duration>,
    /// VmRSS (kiB) once filled, called and settled (before any `GET /`), after `GET /`, after
    /// the churn; VmHWM at the end.
    rss_filled_kib: u64,
    rss_index_kib: u64,
    rss_churned_kib: u64,
    hwm_kib: u64,
    churn: Churned,
    probe: Probed,
}

/// The churn's writes.
#[derive(Default)]
struct Churned {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    /// Writes not sent: [`CHURN_IN_FLIGHT`] were still unanswered when they were due.
    skipped: usize,
    /// Writes still unanswered [`DRAIN_WITHIN`] after the window (abandoned).
    unfinished: usize,
    /// From the first write sent to the last answered.
    elapsed: Duration,
}

/// The probe's changes: from the write being sent to the gateway answering otherwise (and to
/// the registry watch's event in the bench process), and the write's own acknowledgement.
#[derive(Default)]
struct Probed {
    gateway_appear: Vec<Duration>,
    gateway_disappear: Vec<Duration>,
    /// Changes the gateway did not show within [`SEEN_WITHIN`] (counted as that long above).
    gateway_missed: usize,
    watch: Vec<Duration>,
    watch_missed: usize,
    acked: Vec<Duration>,
    /// Probe writes the registry refused (not measured).
    write_errors: usize,
}

/// The value at quantile `q` (0..=1) of `samples`.
fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn p50_p99(samples: &[Duration]) -> String {
    match (quantile(samples, 0.5), quantile(samples, 0.99)) {
        (Some(p50), Some(p99)) => format!("{} / {} (n={})", ms(p50), ms(p99), samples.len()),
        _ => "no samples".into(),
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_table(columns: &[Figures]) {
    println!("-- summary (registry_scale, issue 17)");
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, cell: &dyn Fn(&Figures) -> String| {
        rows.push((label.to_string(), columns.iter().map(cell).collect()));
    };
    row("scale", &|f| {
        format!(
            "{} nodes / {} services, {} B a record",
            f.nodes, f.services, f.record_bytes
        )
    });
    row("fill (written by the bench)", &|f| {
        format!(
            "{} ({:.0} nodes/s)",
            ms(f.fill),
            f.nodes as f64 / f.fill.as_secs_f64()
        )
    });
    row("list_services() in the bench", &|f| match &f.listed {
        Ok((took, nodes)) => format!("{} ({nodes} nodes)", ms(*took)),
        Err(e) => format!("FAILED: {}", truncate(e, 60)),
    });
    row(
        "  raw etcd pages: all / first / last",
        &|f| match &f.paged {
            Some(p) => format!(
                "{} / {} / {} ({} pages)",
                ms(p.all),
                ms(p.first),
                ms(p.last),
                p.pages
            ),
            None => "n/a".into(),
        },
    );
    row("gateway spawn -> listening", &|f| ms(f.listening));
    row("spawn -> first routed call (<= 5 s)", &|f| {
        if f.first_call_at_scale {
            format!(
                "{} {}",
                ms(f.first_call),
                verdict(f.first_call <= TARGET_FIRST_CALL)
            )
        } else {
            format!("{} (empty registry: n/a)", ms(f.first_call))
        }
    });
    row("GET / median (<= 1 s)", &|f| {
        let median = quantile(&f.observed.index, 0.5).unwrap_or(Duration::MAX);
        format!(
            "{} {} ({} services, {} kB)",
            ms(median),
            verdict(median <= TARGET_INDEX),
            f.observed.index_services,
            f.observed.index_bytes / 1000
        )
    });
    row("GET /{service} median", &|f| {
        ms(quantile(&f.observed.describe, 0.5).unwrap_or_default())
    });
    row("RSS settled / after GET / / churned", &|f| {
        format!(
            "{:.0} / {:.0} / {:.0} MB",
            mb(f.observed.rss_filled_kib),
            mb(f.observed.rss_index_kib),
            mb(f.observed.rss_churned_kib)
        )
    });
    row("peak RSS, VmHWM (<= 150 MB)", &|f| {
        let peak = mb(f.observed.hwm_kib);
        format!("{peak:.0} MB {}", verdict(peak <= TARGET_RSS_MB))
    });
    row("churn writes answered (rate)", &|f| {
        let c = &f.observed.churn;
        let mut cell = format!(
            "{} in {} ({:.0}/s)",
            c.latencies.len(),
            ms(c.elapsed),
            c.latencies.len() as f64 / c.elapsed.as_secs_f64()
        );
        if c.skipped > 0 {
            cell.push_str(&format!(", {} skipped", c.skipped));
        }
        if c.unfinished > 0 {
            cell.push_str(&format!(", {} unanswered", c.unfinished));
        }
        if c.errors > 0 {
            cell.push_str(&format!(", ERRORS {}", c.errors));
        }
        cell
    });
    row("churn write ack p50 / p99", &|f| {
        p50_p99(&f.observed.churn.latencies)
    });
    row("gateway sees a change p50/p99 (<=100ms)", &|f| {
        let p = &f.observed.probe;
        let all: Vec<Duration> = p
            .gateway_appear
            .iter()
            .chain(&p.gateway_disappear)
            .copied()
            .collect();
        let missed = if p.gateway_missed > 0 {
            format!(", {} missed", p.gateway_missed)
        } else {
            String::new()
        };
        match quantile(&all, 0.99) {
            Some(p99) => format!(
                "{} {}{missed}",
                p50_p99(&all),
                verdict(p99 <= TARGET_SEEN_P99 && p.gateway_missed == 0)
            ),
            None => "no samples".into(),
        }
    });
    row("  node appears (routable) p50 / p99", &|f| {
        p50_p99(&f.observed.probe.gateway_appear)
    });
    row("  node goes (call refused) p50 / p99", &|f| {
        p50_p99(&f.observed.probe.gateway_disappear)
    });
    row("registry watch() in the bench p50/p99", &|f| {
        let p = &f.observed.probe;
        let mut cell = p50_p99(&p.watch);
        if p.watch_missed > 0 {
            cell.push_str(&format!(", {} missed", p.watch_missed));
        }
        cell
    });
    row("probe write ack p50 / p99", &|f| {
        let p = &f.observed.probe;
        let mut cell = p50_p99(&p.acked);
        if p.write_errors > 0 {
            cell.push_str(&format!(", {} FAILED", p.write_errors));
        }
        cell
    });
    let width = 42;
    let cell_width = rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().map(|c| c.chars().count()))
        .chain(columns.iter().map(|f| f.name.len()))
        .max()
        .unwrap_or(0)
        + 2;
    let mut heading = format!("{:<width$}", "figure (target)");
    for f in columns {
        heading.push_str(&format!("{:<cell_width$}", f.name));
    }
    println!("{}", heading.trim_end());
    for (label, cells) in &rows {
        let mut line = format!("{label:<width$}");
        for cell in cells {
            line.push_str(&format!("{cell:<cell_width$}"));
        }
        println!("{}", line.trim_end());
    }
    for f in columns {
        if let Some(e) = &f.observed.churn.first_error {
            println!("{}: first churn error: {e}", f.name);
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The filler: node `k` of `nodes` is in service `k % services`, shaped like the greeter's own
// registration.

#[derive(Clone)]
struct Filler {
    template: Arc<Service>,
    services: usize,
    nodes: usize,
}

impl Filler {
    fn new(template: &Service, services: usize, nodes: usize) -> Filler {
        Filler {
            template: Arc::new(template.clone()),
            services,
            nodes,
        }
    }

    /// Node `k`'s record: the template renamed, with one node at an address nobody dials.
    fn record(&self, k: usize) -> Service {
        let name = format!("scale-{:05}", k % self.services);
        let mut node = self.template.nodes.first().cloned().unwrap_or_default();
        node.id = format!("{name}-n{k}");
        node.address = format!("10.{}.{}.{}:9090", (k >> 16) & 255, (k >> 8) & 255, k & 255);
        Service {
            name,
            ..self.template.with_node(node)
        }
    }
}

/// The probe service's record: one node, the greeter's.
fn probe_record(template: &Service, greeter: SocketAddr) -> Service {
    let mut node: Node = template.nodes.first().cloned().unwrap_or_default();
    node.id = format!("{PROBE}-1");
    node.address = greeter.to_string();
    Service {
        name: PROBE.to_string(),
        ..template.with_node(node)
    }
}

/// The etcd key of a one-node record (`EtcdRegistry`'s layout).
fn etcd_key(record: &Service) -> String {
    let id = record.nodes.first().map_or("", |n| n.id.as_str());
    format!("{REGISTRY_PREFIX}{}/{id}", record.name)
}

/// The bench's etcd leases: one per [`LEASE_KEYS`] filler nodes, then one for the probe.
///
/// Not one lease for everything: etcd 3.4 makes a put on a lease slower the more keys the lease
/// holds (measured here: 814 puts/s with the lease empty, 91/s once it held 20 000 keys, 888/s on
/// another lease), and a lease of 100 000 keys that expires is one revocation that stalls etcd
/// for seconds.
struct Leases {
    ids: Vec<i64>,
}

impl Leases {
    /// Grants enough leases for `nodes` filler nodes and the probe.
    async fn grant(client: &Etcd, nodes: usize) -> Result<Leases, BoxError> {
        let mut client = client.clone();
        let mut ids = Vec::new();
        for _ in 0..nodes.div_ceil(LEASE_KEYS) + 1 {
            ids.push(client.lease_grant(LEASE_TTL_SECS, None).await?.id());
        }
        Ok(Leases { ids })
    }

    /// The lease of filler node `k`, or of the probe (`None`).
    fn of(&self, k: Option<usize>) -> i64 {
        let probe = self.ids.len() - 1;
        self.ids[k.map_or(probe, |k| (k / LEASE_KEYS).min(probe))]
    }
}

/// Where churn and probe changes are written.
#[derive(Clone)]
enum Writer {
    /// Straight into etcd (as `EtcdRegistry::register` stores them), on the bench's leases.
    Etcd {
        client: Box<Etcd>,
        leases: Arc<Leases>,
    },
    /// Through the embedded registry's gRPC API.
    Remote(Box<RemoteRegistry>),
}

impl Writer {
    /// Registers `record`: filler node `k`, or the probe (`None`).
    async fn add(&self, record: &Service, k: Option<usize>) -> Result<(), BoxError> {
        match self {
            Writer::Etcd { client, leases } => {
                let options = PutOptions::new().with_lease(leases.of(k));
                client
                    .clone()
                    .put(
                        etcd_key(record),
                        serde_json::to_string(record)?,
                        Some(options),
                    )
                    .await?;
            }
            Writer::Remote(registry) => registry.register(record, EMBEDDED_TTL).await?,
        }
        Ok(())
    }

    /// Deregisters `record`.
    async fn remove(&self, record: &Service) -> Result<(), BoxError> {
        match self {
            Writer::Etcd { client, .. } => {
                client.clone().delete(etcd_key(record), None).await?;
            }
            Writer::Remote(registry) => registry.deregister(record).await?,
        }
        Ok(())
    }
}

/// A greeter in this process, registered in `registry` by its `Server`.
async fn start_greeter(registry: Arc<dyn Registry>) -> Result<RunningServer, BoxError> {
    let options = micro_core::Options::new(GREETER).load_from(["bench"])?;
    Ok(greeter_server(options, registry, Greeter::default())
        .start()
        .await?)
}

/// `list_services()` timed, with the nodes it found.
async fn timed_list(registry: &dyn Registry) -> Result<(Duration, usize), String> {
    let started = Instant::now();
    let services = registry.list_services().await.map_err(|e| e.to_string())?;
    let took = started.elapsed();
    Ok((took, services.iter().map(|s| s.nodes.len()).sum()))
}

// ---------------------------------------------------------------------------------------------
// Round 1: etcd.

async fn etcd_round(binary: &std::path::Path) -> Result<Figures, BoxError> {
    let mut client = Etcd::connect([ETCD], None)
        .await
        .map_err(|e| format!("etcd at {ETCD}: {e} (start it with `bash scripts/setup`)"))?;
    let before = client
        .get(
            REGISTRY_PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map_err(|e| format!("etcd at {ETCD} does not answer: {e}"))?
        .count();
    if before > 0 {
        println!("note: {before} keys were under {REGISTRY_PREFIX} already (not the bench's)");
    }
    let leases = Arc::new(Leases::grant(&client, ETCD_NODES).await?);
    let keep_alive = tokio::spawn(keep_leases(client.clone(), leases.clone()));
    let filler = std::sync::OnceLock::new();
    let result = etcd_measure(binary, &client, &leases, &filler).await;
    keep_alive.abort();
    // Cleanup whatever happened: the filler in batches, then the leases (the probe, and anything
    // left), then the history.
    let cleanup = async {
        if let Some(filler) = filler.get() {
            let started = Instant::now();
            etcd_batches(&client, filler, |_, record| {
                TxnOp::delete(etcd_key(record), None)
            })
            .await?;
            println!("filler deleted in {}", ms(started.elapsed()));
        }
        for &lease in &leases.ids {
            client.lease_revoke(lease).await?;
        }
        let revision = client
            .get(REGISTRY_PREFIX, Some(GetOptions::new().with_count_only()))
            .await?
            .header()
            .map_or(0, |h| h.revision());
        client
            .compact(revision, Some(CompactionOptions::new()))
            .await?;
        println!("leases revoked; etcd history compacted up to revision {revision}");
        Ok::<(), BoxError>(())
    }
    .await;
    match (result, cleanup) {
        (Ok(figures), Ok(())) => Ok(figures),
        (Ok(_), Err(e)) => Err(format!("cleanup failed: {e}").into()),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => Err(format!("{e}; cleanup failed too: {cleanup}").into()),
    }
}

/// Keeps the bench's leases alive: every [`KEEP_ALIVE_EVERY`], one keep-alive for each (a
/// failure is reported and tried again next time; the TTL leaves several chances), until
/// aborted.
async fn keep_leases(mut client: Etcd, leases: Arc<Leases>) {
    loop {
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        for &lease in &leases.ids {
            let kept = async {
                let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                let ack = acks.message().await?;
                Ok::<_, etcd_client::Error>(ack.map_or(0, |a| a.ttl()))
            };
            match tokio::time::timeout(KEEP_ALIVE_EVERY, kept).await {
                Ok(Ok(ttl)) if ttl > 0 => {}
                Ok(Ok(_)) => println!("warning: the bench's etcd lease {lease:x} expired"),
                Ok(Err(e)) => println!("warning: keep-alive of lease {lease:x} failed: {e}"),
                Err(_) => println!("warning: keep-alive of lease {lease:x}: no answer"),
            }
        }
    }
}

/// Reads everything under the registry prefix in pages of [`PAGE`] keys at one revision, as the
/// etcd plugin lists (`plugins/etcd/src/range.rs`), without decoding: the time of the first
/// page, of the last, of all, and the bytes read.
async fn raw_pages(client: &Etcd) -> Result<Paged, BoxError> {
    let mut client = client.clone();
    let mut end = REGISTRY_PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = REGISTRY_PREFIX.as_bytes().to_vec();
    let mut revision = 0;
    let mut paged = Paged::default();
    let started = Instant::now();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(revision);
        let page_started = Instant::now();
        let page = client.get(from.clone(), Some(options)).await?;
        let took = page_started.elapsed();
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
            paged.first = took;
        }
        paged.last = took;
        paged.pages += 1;
        paged.bytes += page.kvs().iter().map(|kv| kv.value().len()).sum::<usize>();
        match page.kvs().last() {
            Some(last) if page.more() => from = [last.key(), b"\0"].concat(),
            _ => break,
        }
    }
    paged.all = started.elapsed();
    Ok(paged)
}

/// What [`raw_pages`] measured.
#[derive(Default)]
struct Paged {
    pages: usize,
    bytes: usize,
    first: Duration,
    last: Duration,
    all: Duration,
}

async fn etcd_measure(
    binary: &std::path::Path,
    client: &Etcd,
    leases: &Arc<Leases>,
    filler_slot: &std::sync::OnceLock<Filler>,
) -> Result<Figures, BoxError> {
    let registry: Arc<dyn Registry> = Arc::new(EtcdRegistry::connect(ETCD).await?);
    let greeter = start_greeter(registry.clone()).await?;
    let template = greeter.registration().clone();
    // The record EtcdRegistry stored for the greeter is the shape of every filler record.
    let stored = client
        .clone()
        .get(etcd_key(&template), None)
        .await?
        .kvs()
        .first()
        .map(|kv| kv.value().len())
        .ok_or("the greeter's registration is not in etcd")?;
    let filler = filler_slot.get_or_init(|| Filler::new(&template, ETCD_SERVICES, ETCD_NODES));
    let record_bytes = serde_json::to_string(&filler.record(0))?.len();
    println!(
        "greeter on {} registered in etcd ({stored} B record); filling...",
        greeter.address()
    );
    let started = Instant::now();
    etcd_batches(client, filler, |k, record| {
        let value = serde_json::to_string(record).unwrap_or_default();
        TxnOp::put(
            etcd_key(record),
            value,
            Some(PutOptions::new().with_lease(leases.of(Some(k)))),
        )
    })
    .await?;
    let fill = started.elapsed();
    println!(
        "filled in {} ({:.0} nodes/s)",
        ms(fill),
        ETCD_NODES as f64 / fill.as_secs_f64()
    );
    let writer = Writer::Etcd {
        client: Box::new(client.clone()),
        leases: leases.clone(),
    };
    let probe = probe_record(&template, greeter.address());
    writer.add(&probe, None).await?;
    let listed = timed_list(&*registry).await;
    if let Ok((took, nodes)) = &listed {
        println!(
            "list_services() in the bench: {nodes} nodes in {}",
            ms(*took)
        );
    }
    let paged = raw_pages(client).await?;
    println!(
        "the same prefix read raw, {} pages of {PAGE}: {} ({} MB); first page {}, last page {}",
        paged.pages,
        ms(paged.all),
        paged.bytes / 1_000_000,
        ms(paged.first),
        ms(paged.last)
    );

    let gateway =
        GatewayProcess::spawn(binary, &["--registry", "etcd", "--registry-address", ETCD]).await?;
    let first_call = gateway.first_call().await?;
    println!(
        "gateway (pid {}) listening after {}, first routed call after {}",
        gateway.pid,
        ms(gateway.listening),
        ms(first_call)
    );
    let observed = observe(&gateway, writer, filler.clone(), &probe, registry.clone()).await?;
    let listening = gateway.listening;
    drop(gateway);
    greeter.stop().await?;
    Ok(Figures {
        name: format!("etcd ({}k nodes)", ETCD_NODES / 1000),
        nodes: ETCD_NODES,
        services: ETCD_SERVICES,
        record_bytes,
        fill,
        listening,
        first_call,
        first_call_at_scale: true,
        listed,
        paged: Some(paged),
        observed,
    })
}

/// One transaction per [`TXN_OPS`] filler records, [`TXNS_IN_FLIGHT`] at a time.
async fn etcd_batches(
    client: &Etcd,
    filler: &Filler,
    op: impl Fn(usize, &Service) -> TxnOp,
) -> Result<(), BoxError> {
    let op = &op;
    let batches = (0..filler.nodes).step_by(TXN_OPS).map(|from| {
        let mut client = client.clone();
        let ops: Vec<TxnOp> = (from..(from + TXN_OPS).min(filler.nodes))
            .map(|k| op(k, &filler.record(k)))
            .collect();
        async move {
            // An overloaded etcd answers "request timed out" now and then: two more tries.
            let mut tries = 0;
            loop {
                match client.txn(Txn::new().and_then(ops.clone())).await {
                    Err(e) if tries < 2 => {
                        println!("warning: etcd transaction failed ({e}); trying again");
                        tries += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    result => return result,
                }
            }
        }
    });
    let mut done = futures::stream::iter(batches).buffer_unordered(TXNS_IN_FLIGHT);
    while let Some(result) = done.next().await {
        result?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Round 2: the embedded registry.

async fn embedded_round(binary: &std::path::Path) -> Result<Figures, BoxError> {
    let gateway = GatewayProcess::spawn(binary, &[]).await?;
    let address = gateway.registry.to_string();
    let greeter_registry: Arc<dyn Registry> = Arc::new(RemoteRegistry::new(&address)?);
    let greeter = start_greeter(greeter_registry).await?;
    let first_call = gateway.first_call().await?;
    println!(
        "gateway (pid {}) listening after {}, first routed call (empty registry) after {}",
        gateway.pid,
        ms(gateway.listening),
        ms(first_call)
    );
    let template = greeter.registration().clone();
    let filler = Filler::new(&template, EMBEDDED_SERVICES, EMBEDDED_NODES);
    let record_bytes = serde_json::to_string(&filler.record(0))?.len();
    let remote = RemoteRegistry::new(&address)?;
    let started = Instant::now();
    let registrations = (0..filler.nodes).map(|k| {
        let (remote, record) = (remote.clone(), filler.record(k));
        async move { remote.register(&record, EMBEDDED_TTL).await }
    });
    let mut done = futures::stream::iter(registrations).buffer_unordered(REGISTERS_IN_FLIGHT);
    while let Some(result) = done.next().await {
        result?;
    }
    drop(done);
    let fill = started.elapsed();
    println!(
        "filled in {} ({:.0} nodes/s)",
        ms(fill),
        EMBEDDED_NODES as f64 / fill.as_secs_f64()
    );
    let writer = Writer::Remote(Box::new(remote.clone()));
    let probe = probe_record(&template, greeter.address());
    writer.add(&probe, None).await?;
    let listed = timed_list(&remote).await;
    match &listed {
        Ok((took, nodes)) => println!(
            "list_services() in the bench (over gRPC): {nodes} nodes in {}",
            ms(*took)
        ),
        Err(e) => println!("list_services() in the bench (over gRPC) FAILED: {e}"),
    }
    let observed = observe(&gateway, writer, filler, &probe, Arc::new(remote)).await?;
    let listening = gateway.listening;
    drop(gateway);
    // Its registry went with the gateway: stopping it only ends its registration loop.
    let _ = greeter.stop().await;
    Ok(Figures {
        name: format!("embedded ({}k nodes)", EMBEDDED_NODES / 1000),
        nodes: EMBEDDED_NODES,
        services: EMBEDDED_SERVICES,
        record_bytes,
        fill,
        listening,
        first_call,
        first_call_at_scale: false,
        listed,
        paged: None,
        observed,
    })
}

// ---------------------------------------------------------------------------------------------
// What both rounds measure on a gateway over a filled registry.

async fn observe(
    gateway: &GatewayProcess,
    writer: Writer,
    filler: Filler,
    probe: &Service,
    registry: Arc<dyn Registry>,
) -> Result<Observed, BoxError> {
    let mut http = Http::new(gateway.http);
    let probe_path = format!("/{PROBE}/Greeter/SayHello");
    // The probe answers before anything is timed (its descriptors fetched once).
    let deadline = Deadline::new(
        "the probe service to answer through the gateway",
        SEEN_WITHIN,
    );
    loop {
        let answer = http.post(&probe_path, CALL_BODY).await;
        if matches!(answer, Ok((200, _))) {
            break;
        }
        deadline.pause(&describe(&answer), POLL_EVERY).await?;
    }
    let rss_filled_kib = gateway.settled_rss().await?;

    let mut index = Vec::new();
    let (mut index_bytes, mut index_services) = (0, 0);
    for _ in 0..INDEX_SAMPLES {
        let started = Instant::now();
        let (status, body) = http.get("/").await?;
        index.push(started.elapsed());
        if status != 200 {
            return Err(format!("GET / answered {status}: {}", lossy(&body)).into());
        }
        index_bytes = body.len();
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        index_services = value["services"].as_array().map_or(0, Vec::len);
    }
    println!(
        "GET /: {} services, {} bytes, median {}",
        index_services,
        index_bytes,
        ms(quantile(&index, 0.5).unwrap_or_default())
    );
    let mut describe_times = Vec::new();
    for i in 0..INDEX_SAMPLES {
        let name = filler.record(i * 7919 % filler.nodes).name;
        let started = Instant::now();
        let (status, body) = http.get(&format!("/{name}")).await?;
        describe_times.push(started.elapsed());
        if status != 200 {
            return Err(format!("GET /{name} answered {status}: {}", lossy(&body)).into());
        }
    }
    let rss_index_kib = gateway.status_kib("VmRSS:")?;

    // The registry's own watch of the probe, timing each event as it arrives.
    let mut watcher = registry.watch(Some(PROBE)).await?;
    let (sender, mut events) = mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        while let Some(event) = watcher.next().await {
            let item = event.map(|e| (e.kind, Instant::now()));
            if sender.send(item.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });

    let until = Instant::now() + CHURN_FOR;
    let churning = tokio::spawn(churn(writer.clone(), filler));
    let mut probed = Probed::default();
    let mut present = true;
    let probing = async {
        while Instant::now() < until {
            let appear = !present;
            while events.try_recv().is_ok() {}
            let written = Instant::now();
            let write = if appear {
                writer.add(probe, None).await
            } else {
                writer.remove(probe).await
            };
            if let Err(e) = write {
                println!("probe: writing the probe node failed: {e}");
                probed.write_errors += 1;
                tokio::time::sleep(PROBE_GAP).await;
                continue;
            }
            probed.acked.push(written.elapsed());
            let what = if appear { "appear" } else { "go" };
            // Polled until the answer flips, or SEEN_WITHIN passes (a miss, counted as that).
            let until_seen = written + SEEN_WITHIN;
            let seen = loop {
                let answer = http.post(&probe_path, CALL_BODY).await;
                let at = Instant::now();
                match &answer {
                    Ok((200, _)) if appear => break Some(at),
                    Ok((status, _)) if !appear && *status != 200 => break Some(at),
                    _ if at >= until_seen => {
                        println!(
                            "probe: the gateway did not see the node {what} within {SEEN_WITHIN:?}; last answer: {}",
                            describe(&answer)
                        );
                        break None;
                    }
                    _ => tokio::time::sleep(POLL_EVERY).await,
                }
            };
            let watched = tokio::time::timeout_at(until_seen.into(), async {
                while let Some(event) = events.recv().await {
                    match event {
                        Ok((kind, at)) if (kind == EventKind::Delete) != appear => {
                            return Ok(at);
                        }
                        Ok(_) => {}
                        Err(e) => return Err(format!("registry watch failed: {e}")),
                    }
                }
                Err("registry watch ended".to_string())
            })
            .await;
            let watched = match watched {
                Ok(Ok(at)) => Some(at),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    println!(
                        "probe: the registry watch saw no node {what} within {SEEN_WITHIN:?}"
                    );
                    None
                }
            };
            let took = |at: Option<Instant>| at.map_or(SEEN_WITHIN, |at| at - written);
            if appear {
                probed.gateway_appear.push(took(seen));
            } else {
                probed.gateway_disappear.push(took(seen));
            }
            probed.gateway_missed += usize::from(seen.is_none());
            probed.watch.push(took(watched));
            probed.watch_missed += usize::from(watched.is_none());
            present = appear;
            tokio::time::sleep(PROBE_GAP).await;
        }
        Ok::<(), BoxError>(())
    }
    .await;
    if probing.is_err() {
        churning.abort();
    }
    let churned = churning.await;
    watching.abort();
    probing?;
    let churn = churned?;
    let rss_churned_kib = gateway.status_kib("VmRSS:")?;
    let hwm_kib = gateway.status_kib("VmHWM:")?;
    Ok(Observed {
        index,
        index_bytes,
        index_services,
        describe: describe_times,
        rss_filled_kib,
        rss_index_kib,
        rss_churned_kib,
        hwm_kib,
        churn,
        probe: probed,
    })
}

/// [`CHURN_PER_SECOND`] writes a second for [`CHURN_FOR`], alternately removing a random present
/// filler node and adding back a random removed one (so the count stays put), each write its
/// own request. A write due while [`CHURN_IN_FLIGHT`] are unanswered is skipped (the backend is
/// behind), so the churn never outlasts its window by more than [`DRAIN_WITHIN`].
async fn churn(writer: Writer, filler: Filler) -> Churned {
    let mut present: Vec<usize> = (0..filler.nodes).collect();
    let mut absent: Vec<usize> = Vec::new();
    let slots = Arc::new(Semaphore::new(CHURN_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut churned = Churned::default();
    let mut last_answer = Instant::now();
    let mut record = |result: Result<(Duration, Option<String>), tokio::task::JoinError>,
                      churned: &mut Churned| {
        last_answer = Instant::now();
        match result {
            Ok((took, None)) => churned.latencies.push(took),
            Ok((_, Some(e))) => {
                churned.errors += 1;
                churned.first_error.get_or_insert(e);
            }
            Err(e) => {
                churned.errors += 1;
                churned.first_error.get_or_insert(e.to_string());
            }
        }
    };
    let total = CHURN_PER_SECOND * CHURN_FOR.as_secs() as usize;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut due_so_far = 0;
    while due_so_far < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * CHURN_PER_SECOND as f64) as usize).min(total);
        while due_so_far < due {
            let op = due_so_far;
            due_so_far += 1;
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                churned.skipped += 1;
                continue;
            };
            let add = op % 2 == 1 && !absent.is_empty();
            let k = if add {
                let k = absent.swap_remove(fastrand::usize(..absent.len()));
                present.push(k);
                k
            } else {
                let k = present.swap_remove(fastrand::usize(..present.len()));
                absent.push(k);
                k
            };
            let (writer, node) = (writer.clone(), filler.record(k));
            tasks.spawn(async move {
                let _slot = slot;
                let started = Instant::now();
                let result = if add {
                    writer.add(&node, Some(k)).await
                } else {
                    writer.remove(&node).await
                };
                (started.elapsed(), result.err().map(|e| e.to_string()))
            });
        }
        while let Some(result) = tasks.try_join_next() {
            record(result, &mut churned);
        }
    }
    let drain_until = tokio::time::Instant::now() + DRAIN_WITHIN;
    while let Ok(Some(result)) = tokio::time::timeout_at(drain_until, tasks.join_next()).await {
        record(result, &mut churned);
    }
    churned.unfinished = tasks.len();
    tasks.abort_all();
    churned.elapsed = last_answer.saturating_duration_since(started);
    churned
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

/// A `micro-gateway` child on ephemeral ports, killed when dropped.
struct GatewayProcess {
    child: Child,
    pid: u32,
    spawned: Instant,
    /// Spawn → its startup line.
    listening: Duration,
    http: SocketAddr,
    registry: SocketAddr,
    stderr: PathBuf,
}

impl GatewayProcess {
    /// Spawns it with `extra` flags (and none of this process's `MICRO_*` variables) and waits
    /// for its `listening on` line.
    async fn spawn(binary: &std::path::Path, extra: &[&str]) -> Result<GatewayProcess, BoxError> {
        let stderr = std::env::temp_dir().join(format!(
            "registry-scale-gateway-{}-{:08x}.log",
            std::process::id(),
            fastrand::u32(..)
        ));
        let mut command = Command::new(binary);
        command
            .args([
                "--address",
                "127.0.0.1:0",
                "--registry-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MICRO_")) {
            command.env_remove(key);
        }
        let spawned = Instant::now();
        let mut child = command.spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut process = GatewayProcess {
            child,
            pid,
            spawned,
            listening: Duration::ZERO,
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            registry: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr,
        };
        let (sender, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let line = tokio::time::timeout(STARTUP_WITHIN, async {
            while let Some(line) = lines.recv().await {
                if line.contains("listening on") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let Ok(Some(line)) = line else {
            return Err(format!(
                "micro-gateway printed no startup line within {STARTUP_WITHIN:?}; its stderr: {}",
                process.stderr_tail()
            )
            .into());
        };
        process.listening = spawned.elapsed();
        process.http = address_after(&line, "://")?;
        process.registry = address_after(&line, "served on ")?;
        Ok(process)
    }

    /// Spawn → the first `200` answer to `POST /greeter/Greeter/SayHello`.
    async fn first_call(&self) -> Result<Duration, BoxError> {
        let mut http = Http::new(self.http);
        let path = format!("/{GREETER}/Greeter/SayHello");
        let deadline = Deadline::new("the gateway's first routed call", STARTUP_WITHIN);
        loop {
            let answer = http.post(&path, CALL_BODY).await;
            if let Ok((200, body)) = &answer {
                let value: serde_json::Value = serde_json::from_slice(body)?;
                if value != serde_json::json!({"message": "Hello bench"}) {
                    return Err(format!("unexpected reply {value}").into());
                }
                return Ok(self.spawned.elapsed());
            }
            if let Err(e) = deadline.pause(&describe(&answer), POLL_EVERY).await {
                return Err(format!("{e}; its stderr: {}", self.stderr_tail()).into());
            }
        }
    }

    /// Its VmRSS (kiB) once it has stopped growing for [`SETTLED_FOR`] (the gateway's watch of
    /// the whole registry lists it in the background after start), or after [`SETTLE_WITHIN`].
    async fn settled_rss(&self) -> Result<u64, BoxError> {
        let until = Instant::now() + SETTLE_WITHIN;
        let (mut last, mut since) = (self.status_kib("VmRSS:")?, Instant::now());
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.status_kib("VmRSS:")?;
            if now.abs_diff(last) > 1024 {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= SETTLED_FOR {
                return Ok(now);
            }
        }
        println!("note: the gateway's RSS was still moving after {SETTLE_WITHIN:?}");
        Ok(last)
    }

    /// A field of its `/proc/<pid>/status`, in kiB.
    fn status_kib(&self, field: &str) -> Result<u64, BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .ok_or_else(|| format!("no {field} in /proc/{}/status", self.pid))?;
        Ok(line
            .trim_start_matches(field)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// The address after `marker` in the startup line
/// (`micro-gateway listening on http://127.0.0.1:1234 (registry etcd, served on 127.0.0.1:5678)`).
fn address_after(line: &str, marker: &str) -> Result<SocketAddr, BoxError> {
    let rest = line
        .split(marker)
        .nth(1)
        .ok_or_else(|| format!("no `{marker}` in {line:?}"))?;
    let address: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    Ok(address.parse()?)
}

// ---------------------------------------------------------------------------------------------
// Waiting with a deadline, and a minimal HTTP/1.1 client.

/// A deadline for waiting on a condition that is checked again and again.
struct Deadline {
    what: String,
    within: Duration,
    until: Instant,
}

impl Deadline {
    fn new(what: &str, within: Duration) -> Deadline {
        Deadline {
            what: what.to_string(),
            within,
            until: Instant::now() + within,
        }
    }

    /// Pauses `every` before the next check; an error naming the wait and the `last` answer
    /// once the deadline has passed.
    async fn pause(&self, last: &str, every: Duration) -> Result<(), BoxError> {
        if Instant::now() >= self.until {
            return Err(format!(
                "waited {:?} for {}; last answer: {last}",
                self.within, self.what
            )
            .into());
        }
        tokio::time::sleep(every).await;
        Ok(())
    }
}

fn describe(answer: &Result<(u16, Vec<u8>), String>) -> String {
    match answer {
        Ok((status, body)) => format!("HTTP {status} {}", truncate(&lossy(body), 200)),
        Err(e) => e.clone(),
    }
}

fn lossy(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// One keep-alive HTTP/1.1 connection, made again after any failure.
struct Http {
    address: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Http {
    fn new(address: SocketAddr) -> Http {
        Http {
            address,
            stream: None,
            buffer: Vec::with_capacity(64 * 1024),
        }
    }

    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let head = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.address);
        self.send(head, b"").await
    }

    async fn post(&mut self, path: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.address,
            body.len()
        );
        self.send(head, body.as_bytes()).await
    }

    async fn send(&mut self, head: String, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let result = self.exchange(head, body).await;
        if result.is_err() {
            self.stream = None;
            self.buffer.clear();
        }
        result
    }

    async fn exchange(&mut self, head: String, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.address)
                .await
                .map_err(|e| format!("connect {}: {e}", self.address))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            self.stream = Some(stream);
            self.buffer.clear();
        }
        let stream = self.stream.as_mut().ok_or("no connection")?;
        let request = [head.as_bytes(), body].concat();
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head_end = loop {
            if let Some(i) = find(&self.buffer, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end])
            .map_err(|_| "response head is not UTF-8".to_string())?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        self.buffer.drain(..head_end);
        let body = if chunked {
            self.chunked().await?
        } else {
            let length = length.ok_or("response has neither length nor chunks")?;
            while self.buffer.len() < length {
                self.fill().await?;
            }
            self.buffer.drain(..length).collect()
        };
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }

    async fn chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buffer, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buffer[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or("bad chunk size")?;
            while self.buffer.len() < line_end + 2 + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buffer[line_end + 2..line_end + 2 + size]);
            self.buffer.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        let stream = self.stream.as_mut().ok_or("no connection")?;
        let mut chunk = [0u8; 16 * 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the gateway".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
