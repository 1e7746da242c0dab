//! What both benches share: the greeter they call (in process, in a `MemoryRegistry`), a
//! checked `SayHello`, a closed-loop load runner (N concurrent callers for a fixed time after a
//! warm-up) and the figures it prints.

// Not every bench counts instructions.
#[allow(dead_code)]
pub(crate) mod callgrind;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_core::server::RunningServer;
use micro_core::{Options, Registry};
use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::{Greeter, greeter_server};
use tonic::transport::{Channel, Endpoint};

/// Concurrent callers in every phase.
pub(crate) const CONCURRENCY: usize = 32;
/// Calls made before the measured window (connections, caches, reflection, allocator).
pub(crate) const WARMUP: Duration = Duration::from_millis(500);
/// The measured window of every phase.
pub(crate) const DURATION: Duration = Duration::from_secs(3);

/// The error type of the benches' plumbing.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The greeter both benches call: started on `127.0.0.1:0` with default options, registered
/// in a fresh `MemoryRegistry`. Returns the options (for a client) and the registry with it.
pub(crate) async fn start_greeter() -> Result<(Options, Arc<dyn Registry>, RunningServer), BoxError>
{
    let options = Options::new("greeter").load_from(["bench"])?;
    let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
    let server = greeter_server(options.clone(), registry.clone(), Greeter::default())
        .start()
        .await?;
    Ok((options, registry, server))
}

/// A greeter client on a plain tonic channel to `address` (one HTTP/2 connection, TCP_NODELAY).
pub(crate) async fn direct(address: SocketAddr) -> Result<GreeterClient<Channel>, BoxError> {
    let channel = Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(GreeterClient::new(channel))
}

/// One `SayHello` of `bench`, failing unless the reply is `Hello bench`.
pub(crate) async fn say_hello<T>(client: &mut GreeterClient<T>) -> Result<(), String>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<BoxError> + Send,
{
    let reply = client
        .say_hello(HelloRequest {
            name: "bench".into(),
        })
        .await
        .map_err(|status| status.to_string())?;
    if reply.get_ref().message != "Hello bench" {
        return Err(format!("unexpected reply {:?}", reply.get_ref().message));
    }
    Ok(())
}

/// One caller: makes one call and says whether it succeeded.
pub(crate) trait Caller: Send + 'static {
    /// One call, awaited to the end of its reply.
    fn call(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// What one or more measured windows gave.
#[derive(Default)]
pub(crate) struct Stats {
    /// Latencies of the calls completed in the window, in nanoseconds.
    latencies: Vec<u64>,
    /// Calls that failed in the window.
    errors: u64,
    /// The first failure seen.
    first_error: Option<String>,
    /// Total measured time.
    window: Duration,
}

impl Stats {
    /// Calls per second.
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1_000.0
    }

    /// Adds another window (for the interleaved rounds).
    pub(crate) fn merge(&mut self, other: &Stats) {
        self.latencies.extend_from_slice(&other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.window += other.window;
    }

    /// One line: label, calls, rate, p50, p99, errors.
    pub(crate) fn line(&self, label: &str) -> String {
        let mut line = format!(
            "{label:<44} {:>8} calls {:>10.0}/s  p50 {:>8.1} µs  p99 {:>8.1} µs",
            self.latencies.len(),
            self.rate(),
            self.quantile_us(0.50),
            self.quantile_us(0.99),
        );
        if self.errors > 0 {
            line.push_str(&format!(
                "  ERRORS {} (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        line
    }
}

/// Runs `callers` concurrently (one task each) for [`WARMUP`] then [`DURATION`]; counts the
/// calls that completed inside the measured window.
pub(crate) async fn measure<C: Caller>(callers: Vec<C>) -> Stats {
    let start = Instant::now();
    let (from, until) = (start + WARMUP, start + WARMUP + DURATION);
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let mut stats = Stats::default();
                loop {
                    let begun = Instant::now();
                    if begun >= until {
                        break;
                    }
                    let result = caller.call().await;
                    let done = Instant::now();
                    if done < from || done > until {
                        continue;
                    }
                    match result {
                        Ok(()) => stats.latencies.push((done - begun).as_nanos() as u64),
                        Err(e) => {
                            stats.errors += 1;
                            stats.first_error.get_or_insert(e);
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut all = Stats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => all.merge(&stats),
            Err(e) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert(format!("caller task failed: {e}"));
            }
        }
    }
    all.window = DURATION;
    all
}

/// How many times each configuration is measured, interleaved (a, b, a, b) against drift.
pub(crate) const ROUNDS: usize = 2;

/// Prints the machine the figures come from.
pub(crate) fn print_setup(what: &str) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{what}: {CONCURRENCY} concurrent callers, {} ms warm-up + {} s measured per phase, {ROUNDS} interleaved rounds, {cpus} CPUs",
        WARMUP.as_millis(),
        DURATION.as_secs(),
    );
}
