//! The registry of a large organisation behind the gateway (issue 17), at CI's size: 20 000
//! nodes over 4 000 services in a private etcd, plus a greeter. The gateway starts and routes
//! its first call; `GET /` names every service; a greeter node started later gets calls, and
//! one stopped gets none; the gateway's memory is that of the services it routes, not of the
//! registry. Times are printed, not asserted (`cargo bench -p micro-benches --bench
//! registry_scale` measures 100 000 nodes).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use micro_testkit::large_registry::{clean_etcd, fill_etcd, service_names};
use micro_testkit::{
    GatewayProcess, PROPAGATION, PrivateEtcd, Process, SHORT_TTL_ARGS, get, memory_kib, post,
    wait_until,
};

/// Services of the filler, each with [`NODES`] nodes.
const SERVICES: usize = 4_000;
const NODES: usize = 5;

/// What the gateway may hold at its peak: issue 17's goal is 150 MB at 100 000 nodes.
const PEAK_RSS_KIB: u64 = 150 * 1024;

/// The greeting of one call through the gateway, if it succeeded.
fn hello(http: SocketAddr) -> Option<String> {
    let response = post(http, "/greeter/Greeter/SayHello", r#"{"name":"x"}"#);
    (response.status == 200).then(|| {
        response.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

/// A greeter registered in `etcd`, answering `greeting x`.
fn greeter(etcd: &PrivateEtcd, greeting: &str) -> Process {
    let mut args = vec!["--registry", "etcd", "--registry-address", &etcd.address];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    args.extend_from_slice(&["--greeting", greeting]);
    let mut process = Process::start("greeter", &args, &[], None);
    process.listening_address();
    process
}

#[test]
fn twenty_thousand_nodes_behind_the_gateway() {
    let etcd = PrivateEtcd::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime
        .block_on(etcd_client::Client::connect([etcd.address.as_str()], None))
        .expect("etcd client");
    let run = "org";
    let names = service_names(run, SERVICES);
    let started = Instant::now();
    let filled = runtime.block_on(fill_etcd(&client, &names, NODES, 5));
    let fill = started.elapsed();
    let a = greeter(&etcd, "A");

    let started = Instant::now();
    let gateway =
        GatewayProcess::start(&["--registry", "etcd", "--registry-address", &etcd.address]);
    let http = gateway.http;
    wait_until(PROPAGATION, "the first call through the gateway", || {
        hello(http).is_some()
    });
    let first_call = started.elapsed();

    let started = Instant::now();
    let index = get(http, "/");
    let index_time = started.elapsed();
    assert_eq!(index.status, 200, "{}", index.body);
    let listed: Vec<String> = index.json()["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let mut expected = names.clone();
    expected.push("greeter".to_string());
    expected.sort();
    assert_eq!(listed, expected, "GET / names every service once, in order");

    // A node that comes is called; one that goes is not, seen through the gateway's watch of
    // the one service it routes to.
    let started = Instant::now();
    let _b = greeter(&etcd, "B");
    wait_until(PROPAGATION, "a call answered by the new node", || {
        hello(http).as_deref() == Some("B x")
    });
    let came = started.elapsed();
    let started = Instant::now();
    a.terminate();
    wait_until(PROPAGATION, "calls only to the node that stayed", || {
        let replies: HashSet<String> = (0..6).filter_map(|_| hello(http)).collect();
        replies == HashSet::from(["B x".to_string()])
    });
    let went = started.elapsed();

    let pid = gateway.process.child.id();
    let (rss, peak) = (memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM"));
    runtime.block_on(clean_etcd(&client, run, &filled));
    eprintln!(
        "registry scale: {SERVICES} services x {NODES} nodes ({:.1} MiB of JSON, filled in \
         {fill:?}): gateway start to first call {first_call:?}, GET / {index_time:?}, a new node \
         called after {came:?}, a stopped one left after {went:?}, gateway RSS {} MiB (peak {} MiB)",
        filled.bytes as f64 / 1_048_576.0,
        rss / 1024,
        peak / 1024,
    );
    assert!(
        peak <= PEAK_RSS_KIB,
        "the gateway's peak RSS is {peak} KiB, over {PEAK_RSS_KIB} KiB: it holds more than the \
         services it routes to"
    );
}
