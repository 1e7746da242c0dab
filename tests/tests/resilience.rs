//! A client that routes around sick nodes, as a user runs it: greeter processes registered with
//! the gateway's registry, one of them failing every call (`--fail-rate 1.0`, health still
//! SERVING) or frozen with SIGSTOP, and a client calling at a steady rate through the same
//! registry; in process, servers that count the calls reaching them, for the retry budget and
//! the fallback.
//!
//! The two 40 s runs are separate tests so the harness runs them side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use micro_core::client::{BreakerConfig, Fallback, RetryBudget};
use micro_core::registry::Registry;
use micro_core::{Client, Server};
use micro_memory::MemoryRegistry;
use micro_remote::RemoteRegistry;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::greeter::v1::greeter_server::{Greeter, GreeterServer};
use micro_testkit::greeter::v1::{HelloReply, HelloRequest, StreamRequest};
use micro_testkit::{
    GatewayProcess, NoStream, Process, SLACK, eventually, greeter, no_stream, test_options,
};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::{Request, Response, Status};

/// How long the steady calls run.
const RUN: Duration = Duration::from_secs(40);
/// One call every this long: 50 a second.
const PACE: Duration = Duration::from_millis(20);
/// The client's per-call timeout.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The most calls a sick node may cost the callers over a run.
const MOST_FAILURES: usize = 2;

/// How the calls of one run went.
#[derive(Debug, Default)]
struct Tally {
    calls: usize,
    failures: Vec<String>,
    /// Each reply's greeting (the first word), with when it came.
    replies: Vec<(Instant, String)>,
}

impl Tally {
    fn served_by(&self, greeting: &str) -> usize {
        self.replies.iter().filter(|(_, g)| g == greeting).count()
    }
}

/// Calls `Greeter.SayHello` every [`PACE`] for `run`, one call at a time, each with the
/// client's [`TIMEOUT`]; `at` is called with the time since the start before each call (to
/// freeze and thaw a node on cue).
async fn steady_calls(client: &Client, run: Duration, mut at: impl FnMut(Duration)) -> Tally {
    let mut greeter = GreeterClient::new(client.channel("greeter"));
    let mut tally = Tally::default();
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    while started.elapsed() < run {
        pace.tick().await;
        at(started.elapsed());
        tally.calls += 1;
        match greeter
            .say_hello(HelloRequest {
                name: "steady".into(),
            })
            .await
        {
            Ok(reply) => {
                let message = reply.into_inner().message;
                let greeting = message.split_whitespace().next().unwrap_or("").to_string();
                tally.replies.push((Instant::now(), greeting));
            }
            Err(status) => tally.failures.push(format!(
                "at {:?}: {:?} {}",
                started.elapsed(),
                status.code(),
                status.message()
            )),
        }
    }
    tally
}

/// A client of the gateway's registry with the test's timeout, once it sees `nodes` greeters.
async fn client_of(gateway: &GatewayProcess, nodes: usize) -> Client {
    let registry: Arc<dyn Registry> =
        Arc::new(RemoteRegistry::new(&gateway.registry.to_string()).expect("remote registry"));
    eventually(SLACK, "every greeter is registered", || {
        let registry = registry.clone();
        async move {
            registry
                .get_service("greeter")
                .await
                .map(|s| s.iter().map(|s| s.nodes.len()).sum::<usize>() == nodes)
                .unwrap_or(false)
        }
    })
    .await;
    Client::new(&test_options("client"), registry).timeout(TIMEOUT)
}

fn signal(process: &Process, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(process.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

#[test]
fn a_node_failing_every_call_costs_the_callers_at_most_two_calls() {
    let gateway = GatewayProcess::start(&[]);
    let _a = gateway.greeter(&["--greeting", "A"]);
    let _b = gateway.greeter(&["--greeting", "B"]);
    let _sick = gateway.greeter(&["--greeting", "Sick", "--fail-rate", "1.0"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let tally = runtime.block_on(async {
        let client = client_of(&gateway, 3).await;
        steady_calls(&client, RUN, |_| {}).await
    });
    eprintln!(
        "fail-rate run: {} calls, {} failed, A {} B {} Sick {}",
        tally.calls,
        tally.failures.len(),
        tally.served_by("A"),
        tally.served_by("B"),
        tally.served_by("Sick")
    );
    assert!(
        tally.failures.len() <= MOST_FAILURES,
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.calls,
        tally.failures
    );
    assert_eq!(tally.served_by("Sick"), 0, "the sick node never replies");
    // Both healthy nodes carry the load.
    assert!(
        tally.served_by("A") > tally.calls / 4 && tally.served_by("B") > tally.calls / 4,
        "A {} B {} of {}",
        tally.served_by("A"),
        tally.served_by("B"),
        tally.calls
    );
}

#[test]
fn a_frozen_node_costs_at_most_two_calls_and_takes_calls_again_once_thawed() {
    let gateway = GatewayProcess::start(&[]);
    let _a = gateway.greeter(&["--greeting", "A"]);
    let _b = gateway.greeter(&["--greeting", "B"]);
    // Registered for longer than it stays frozen: the breaker, not the registry, keeps calls
    // away from it.
    let frozen = gateway.greeter(&[
        "--greeting",
        "Frozen",
        "--register-ttl",
        "60s",
        "--register-interval",
        "1s",
    ]);
    // Probes back off up to 4 s here (30 s by default), so the thawed node is back in the run.
    let breaker = BreakerConfig {
        max_backoff: Duration::from_secs(4),
        ..BreakerConfig::default()
    };
    let (freeze_at, thaw_at) = (Duration::from_secs(5), Duration::from_secs(15));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut thawed: Option<Instant> = None;
    let mut frozen_yet = false;
    let tally = runtime.block_on(async {
        let client = client_of(&gateway, 3).await.breaker(breaker);
        steady_calls(&client, RUN, |elapsed| {
            if !frozen_yet && elapsed >= freeze_at {
                signal(&frozen, "STOP");
                frozen_yet = true;
            }
            if thawed.is_none() && elapsed >= thaw_at {
                signal(&frozen, "CONT");
                thawed = Some(Instant::now());
            }
        })
        .await
    });
    let thawed = thawed.expect("thawed during the run");
    let served_after: Vec<&Instant> = tally
        .replies
        .iter()
        .filter(|(at, greeting)| greeting == "Frozen" && *at > thawed)
        .map(|(at, _)| at)
        .collect();
    eprintln!(
        "frozen run: {} calls, {} failed, A {} B {} Frozen {} ({} after thawing, first {:?} after)",
        tally.calls,
        tally.failures.len(),
        tally.served_by("A"),
        tally.served_by("B"),
        tally.served_by("Frozen"),
        served_after.len(),
        served_after.first().map(|at| at.duration_since(thawed))
    );
    assert!(
        tally.failures.len() <= MOST_FAILURES,
        "{} of {} calls failed: {:?}",
        tally.failures.len(),
        tally.calls,
        tally.failures
    );
    // Back within one probe round: the longest back-off (jittered up to +20 %), the probe's
    // own timeout, and slack.
    let first = served_after
        .first()
        .unwrap_or_else(|| panic!("the thawed node served no call: {tally:?}"));
    let within = breaker.max_backoff.mul_f64(1.2) + breaker.probe_timeout + SLACK;
    assert!(
        first.duration_since(thawed) < within,
        "the thawed node took {:?} to get calls again (want < {within:?})",
        first.duration_since(thawed)
    );
    assert!(
        served_after.len() > 10,
        "the thawed node is back in balancing"
    );
}

/// A greeter whose SayHello answers UNAVAILABLE (or `reply`, once set), counting the calls that
/// reach it.
struct Sick {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Greeter for Sick {
    type SayHelloStreamStream = NoStream;
    type ChatStream = NoStream;

    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Err(Status::unavailable("sick on purpose"))
    }

    async fn say_hello_stream(
        &self,
        _: Request<StreamRequest>,
    ) -> Result<Response<NoStream>, Status> {
        no_stream()
    }

    async fn chat(
        &self,
        _: Request<tonic::Streaming<HelloRequest>>,
    ) -> Result<Response<NoStream>, Status> {
        no_stream()
    }
}

/// Starts `n` sick greeters in `registry`, sharing one call counter.
async fn sick_greeters(
    registry: &Arc<dyn Registry>,
    n: usize,
) -> (Vec<micro_core::server::RunningServer>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    for _ in 0..n {
        let server = Server::new(test_options("greeter"), registry.clone())
            .descriptors(greeter::DESCRIPTORS)
            .expect("descriptors")
            .add_service(GreeterServer::new(Sick {
                calls: calls.clone(),
            }))
            .start()
            .await
            .expect("start sick greeter");
        servers.push(server);
    }
    (servers, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_add_at_most_a_fifth_to_the_calls_when_every_node_fails() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let (servers, calls) = sick_greeters(&registry, 3).await;
    // No ejection, so the budget alone limits retries (with ejection, a retry finds no healthy
    // node to go to).
    let client = Client::new(&test_options("client"), registry.clone())
        .breaker(BreakerConfig::off())
        .retry_budget(RetryBudget::default());
    let mut greeter = GreeterClient::new(client.channel("greeter"));
    let requests: u32 = 500;
    let started = Instant::now();
    for _ in 0..requests {
        let status = greeter
            .say_hello(HelloRequest { name: "x".into() })
            .await
            .expect_err("every node fails");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    let elapsed = started.elapsed();
    let made = calls.load(Ordering::Relaxed);
    let budget = RetryBudget::default();
    // A fifth of the calls, the bucket's first burst, and the minimum per second.
    let bound = f64::from(requests) * (1.0 + budget.ratio)
        + budget.cap()
        + budget.min_per_second * (elapsed.as_secs_f64() + 1.0);
    eprintln!(
        "retry budget: {requests} requests made {made} calls ({:.2}x) in {elapsed:?}; bound {bound:.0}",
        made as f64 / f64::from(requests)
    );
    assert!(made > requests as usize, "some calls were retried: {made}");
    assert!(
        (made as f64) <= bound,
        "{made} calls for {requests} requests (bound {bound:.0})"
    );
    for server in servers {
        server.stop().await.expect("stop");
    }
}

/// `micro_client_fallbacks_total` for greeter's SayHello in this process's metrics.
fn fallbacks_counted() -> u64 {
    micro_core::metrics::render()
        .lines()
        .find(|line| {
            line.starts_with("micro_client_fallbacks_total{")
                && line.contains(r#"service="greeter""#)
                && line.contains("SayHello")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_answers_while_the_breaker_is_open_and_is_counted() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let (servers, calls) = sick_greeters(&registry, 2).await;
    // Probes wait long here, so the breaker stays open through the test.
    let client = Client::new(&test_options("client"), registry.clone())
        .breaker(BreakerConfig {
            base_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
            ..BreakerConfig::default()
        })
        .fallback(
            Fallback::new("greeter", || HelloReply {
                message: "Hello from the fallback".into(),
            })
            .endpoint("Greeter.SayHello"),
        );
    let mut greeter = GreeterClient::new(client.channel("greeter"));
    let before = fallbacks_counted();

    // The first call finds both nodes failing: each is ejected, and the fallback answers.
    let reply = greeter
        .say_hello(HelloRequest { name: "x".into() })
        .await
        .expect("the fallback answers");
    assert_eq!(reply.into_inner().message, "Hello from the fallback");
    let reached = calls.load(Ordering::Relaxed);
    assert_eq!(reached, 2, "the first call tried both nodes");

    // Breaker open: the fallback answers at once, and no call reaches a node.
    for _ in 0..20 {
        let reply = greeter
            .say_hello(HelloRequest { name: "x".into() })
            .await
            .expect("the fallback answers");
        assert_eq!(reply.into_inner().message, "Hello from the fallback");
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        reached,
        "no call reached a node"
    );
    assert_eq!(
        fallbacks_counted() - before,
        21,
        "{}",
        micro_core::metrics::render()
    );

    // Another endpoint has no fallback: its call goes to a node (the least recently failed)
    // and the node's own answer is the caller's.
    let status = greeter
        .say_hello_stream(StreamRequest {
            name: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("no fallback for SayHelloStream");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    for server in servers {
        server.stop().await.expect("stop");
    }
}
