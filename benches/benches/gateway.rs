//! # Bench `gateway`: what the HTTP JSON gateway costs (issue 4)
//!
//! Starts the greeter in-process on `127.0.0.1:0`, then calls `SayHello` with the same load three
//! ways, interleaved (a, b, c, a, b, c) to cancel drift:
//!
//! - **(a)** a direct tonic `GreeterClient` on a plain `Channel` (the floor);
//! - **(b)** the gateway: `POST /greeter/Greeter/SayHello` with `{"name":"bench"}`;
//! - **(c)** a hand-written static axum → tonic proxy for the same route (what a user writes
//!   instead of a gateway: serde JSON into `HelloRequest`, a tonic client on a plain `Channel`,
//!   JSON back).
//!
//! (b) and (c) each run in a **child process** (this binary re-run with `--child gateway` or
//! `--child proxy`), so both sit behind the same kind of hop and the gateway's peak RSS is its
//! own: the child reports `VmRSS` once started and `VmHWM` (peak RSS) from `/proc/self/status`
//! when told to stop. The gateway child holds an in-process `MemoryRegistry` (as the real
//! `micro-gateway` does) in which the greeter's registration is recorded.
//!
//! The HTTP load generator is identical for (b) and (c): one keep-alive HTTP/1.1 connection per
//! caller over a raw tokio `TcpStream` (TCP_NODELAY), a prebuilt request and a minimal response
//! parser (status, `Content-Length` or chunked body).
//!
//! Each configuration is measured at 32 concurrent callers (throughput, p99) and again with one
//! caller: at 32 callers on a small machine every p50 is mostly queueing (Little's law:
//! p50 ≈ callers / rate), so the latency a hop adds is read at one caller.
//!
//! Prints requests/s, p50 and p99 for each, the ratios b/c (throughput, target ≥ 0.9) and b/c
//! (p99, target ≤ 1.2) at 32 callers, the p50 added by b over a at one caller (target ≤ 150 µs),
//! and the RSS of both children. Then instructions per request of the gateway's process and of
//! the proxy's, each child re-run under callgrind (issue 17: target b/c ≤ 1.0; skipped with a
//! message where valgrind is missing). The gateway child logs and traces as the `micro-gateway`
//! binary does (`logging::init_service`, `RUST_LOG` default `info`).
//!
//! Run: `cargo bench -p micro-benches --bench gateway` (with `MICRO_BENCH_INSTRUCTIONS_ONLY=1`,
//! only the instruction counts: a minute instead of several)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use common::{BoxError, Caller, ROUNDS, Stats, callgrind, direct, measure, print_setup, say_hello};
use micro_core::Registry;
use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Set (to anything) to skip the wall-clock figures and count instructions only.
const INSTRUCTIONS_ONLY: &str = "MICRO_BENCH_INSTRUCTIONS_ONLY";
const PATH: &str = "/greeter/Greeter/SayHello";
const BODY: &str = r#"{"name":"bench"}"#;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.iter().position(|a| a == "--child") {
        Some(i) => {
            let role = args.get(i + 1).ok_or("--child needs a role")?;
            let arg = args.get(i + 2).ok_or("--child needs an argument")?;
            runtime.block_on(child(role, arg))
        }
        None => runtime.block_on(parent()),
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: greeter server, load generators, figures.

async fn parent() -> Result<(), BoxError> {
    let (_, _, server) = common::start_greeter().await?;
    let address = server.address();

    let registration = serde_json::to_string(server.registration())?;
    if std::env::var_os(INSTRUCTIONS_ONLY).is_none() {
        wall_clock(address, &registration).await?;
    }

    // The gateway's and the proxy's own processes under callgrind (the greeter stays here).
    println!();
    callgrind::print(
        "request",
        &[
            (
                "(b) gateway process",
                instructions("gateway", &registration).await,
            ),
            (
                "(c) static proxy process",
                instructions("proxy", &address.to_string()).await,
            ),
        ],
        ("b/c", |counts| counts[0] / counts[1]),
        1.0,
        false,
    );
    server.stop().await?;
    Ok(())
}

/// Throughput, latency and RSS of (a), (b) and (c), printed with their ratios.
async fn wall_clock(address: std::net::SocketAddr, registration: &str) -> Result<(), BoxError> {
    let mut gateway = Served::spawn("gateway", registration)?;
    let mut proxy = Served::spawn("proxy", &address.to_string())?;
    for child in [&gateway, &proxy] {
        check(child.address).await.map_err(|e| {
            format!(
                "{} at {} does not answer as expected: {e}",
                child.role, child.address
            )
        })?;
    }

    let tonic = direct(address).await?;

    print_setup(&format!(
        "bench gateway: greeter on {address}, gateway child (pid {}) on {}, static proxy child (pid {}) on {}",
        gateway.process.id(),
        gateway.address,
        proxy.process.id(),
        proxy.address
    ));
    println!(
        "-- {} concurrent callers (throughput and p99)",
        common::CONCURRENCY
    );
    let (a, b, c) = level(common::CONCURRENCY, &tonic, &gateway, &proxy).await?;
    println!();
    println!("-- 1 caller (latency without queueing: the p50 added)");
    let (a1, b1, c1) = level(1, &tonic, &gateway, &proxy).await?;

    let gateway_rss = gateway.stop()?;
    let proxy_rss = proxy.stop()?;

    println!();
    println!("-- summary");
    let n = common::CONCURRENCY;
    println!("{}", a.line(&format!("{n} callers (a) direct tonic gRPC")));
    println!("{}", b.line(&format!("{n} callers (b) gateway HTTP JSON")));
    println!(
        "{}",
        c.line(&format!("{n} callers (c) static axum->tonic proxy"))
    );
    println!("{}", a1.line("1 caller  (a) direct tonic gRPC"));
    println!("{}", b1.line("1 caller  (b) gateway HTTP JSON"));
    println!("{}", c1.line("1 caller  (c) static axum->tonic proxy"));
    let throughput = b.rate() / c.rate();
    let p99 = b.quantile_us(0.99) / c.quantile_us(0.99);
    let added = b1.quantile_us(0.5) - a1.quantile_us(0.5);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "ratio b/c throughput ({n} callers) {throughput:.3} (target >= 0.9: {})",
        verdict(throughput >= 0.9)
    );
    println!(
        "ratio b/c p99 ({n} callers)        {p99:.3} (target <= 1.2: {})",
        verdict(p99 <= 1.2)
    );
    println!(
        "p50 added by b over a (1 caller)  {added:.1} µs (target <= 150 µs: {}); c over a {:.1} µs; at {n} callers b over a {:.1} µs, c over a {:.1} µs",
        verdict(added <= 150.0),
        c1.quantile_us(0.5) - a1.quantile_us(0.5),
        b.quantile_us(0.5) - a.quantile_us(0.5),
        c.quantile_us(0.5) - a.quantile_us(0.5),
    );
    println!(
        "gateway process RSS: {:.1} MiB after start, peak (VmHWM) {:.1} MiB",
        gateway_rss.0 as f64 / 1024.0,
        gateway_rss.1 as f64 / 1024.0
    );
    println!(
        "proxy process RSS:   {:.1} MiB after start, peak (VmHWM) {:.1} MiB",
        proxy_rss.0 as f64 / 1024.0,
        proxy_rss.1 as f64 / 1024.0
    );
    Ok(())
}

/// Measures (a), (b), (c) with `n` callers each, interleaved over the rounds.
async fn level(
    n: usize,
    tonic: &GreeterClient<Channel>,
    gateway: &Served,
    proxy: &Served,
) -> Result<(Stats, Stats, Stats), BoxError> {
    let (mut a, mut b, mut c) = (Stats::default(), Stats::default(), Stats::default());
    for round in 1..=ROUNDS {
        let stats = measure((0..n).map(|_| Direct(tonic.clone())).collect()).await;
        println!(
            "{}",
            stats.line(&format!("round {round} (a) direct tonic gRPC"))
        );
        a.merge(&stats);
        let stats = measure(http_callers(gateway.address, n).await?).await;
        println!(
            "{}",
            stats.line(&format!("round {round} (b) gateway HTTP JSON"))
        );
        b.merge(&stats);
        let stats = measure(http_callers(proxy.address, n).await?).await;
        println!(
            "{}",
            stats.line(&format!("round {round} (c) static axum->tonic proxy"))
        );
        c.merge(&stats);
    }
    Ok((a, b, c))
}

/// Calls the greeter directly over gRPC.
struct Direct(GreeterClient<Channel>);

impl Caller for Direct {
    async fn call(&mut self) -> Result<(), String> {
        say_hello(&mut self.0).await
    }
}

/// A child process serving HTTP (the gateway or the static proxy).
struct Served {
    role: &'static str,
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    address: SocketAddr,
    started_rss_kib: u64,
}

impl Served {
    /// Re-runs this binary as `--child <role> <arg>` and reads `<address> <VmRSS kiB>`.
    fn spawn(role: &'static str, arg: &str) -> Result<Served, BoxError> {
        Self::spawn_with(
            Command::new(std::env::current_exe()?),
            role,
            arg,
            Stdio::inherit(),
        )
    }

    /// [`spawn`](Self::spawn) as `command` runs this binary (under callgrind, say), its stderr
    /// going to `stderr`.
    fn spawn_with(
        mut command: Command,
        role: &'static str,
        arg: &str,
        stderr: Stdio,
    ) -> Result<Served, BoxError> {
        let mut process = command
            .args(["--child", role, arg])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdin = process.stdin.take();
        let mut stdout = BufReader::new(process.stdout.take().ok_or("no child stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        let (Some(address), Some(rss)) = (words.next(), words.next()) else {
            return Err(format!("{role} child did not start: {line:?}").into());
        };
        Ok(Served {
            role,
            address: address.parse()?,
            started_rss_kib: rss.parse()?,
            process,
            stdin,
            stdout,
        })
    }

    /// Closes its stdin (it stops) and returns (VmRSS after start, VmHWM) in kiB.
    fn stop(&mut self) -> Result<(u64, u64), BoxError> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let status = self.process.wait()?;
        if !status.success() {
            return Err(format!("{} child exited with {status}", self.role).into());
        }
        let peak = line
            .trim()
            .parse()
            .map_err(|e| format!("{} child sent {line:?}: {e}", self.role))?;
        Ok((self.started_rss_kib, peak))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Instructions the `role` child spends per request under callgrind: one keep-alive connection,
/// [`callgrind::FEW`] and then [`callgrind::MANY`] sequential requests in two runs.
async fn instructions(role: &'static str, arg: &str) -> Result<f64, String> {
    let mut totals = Vec::new();
    for requests in [callgrind::FEW, callgrind::MANY] {
        let mut child = Served::spawn_with(callgrind::command()?, role, arg, Stdio::piped())
            .map_err(|e| format!("{role} under callgrind: {e}"))?;
        let mut caller = HttpCaller::connect(child.address)
            .await
            .map_err(|e| format!("{role} under callgrind: {e}"))?;
        for _ in 0..requests {
            caller.post().await?;
        }
        drop(caller);
        child
            .stop()
            .map_err(|e| format!("{role} under callgrind: {e}"))?;
        let mut stderr = String::new();
        if let Some(mut pipe) = child.process.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)
                .map_err(|e| format!("{role}'s stderr: {e}"))?;
        }
        totals.push(callgrind::collected(&stderr)?);
    }
    callgrind::per_call(totals[0], totals[1])
}

/// One POST through the HTTP load generator, checking the reply.
async fn check(address: SocketAddr) -> Result<(), String> {
    let mut caller = HttpCaller::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let body = caller.post().await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("reply is not JSON: {e}"))?;
    if value != serde_json::json!({"message": "Hello bench"}) {
        return Err(format!("unexpected reply {value}"));
    }
    Ok(())
}

async fn http_callers(address: SocketAddr, n: usize) -> Result<Vec<HttpCaller>, BoxError> {
    let mut callers = Vec::with_capacity(n);
    for _ in 0..n {
        callers.push(HttpCaller::connect(address).await?);
    }
    Ok(callers)
}

/// The HTTP load generator: one keep-alive HTTP/1.1 connection.
struct HttpCaller {
    stream: TcpStream,
    request: Arc<[u8]>,
    buffer: Vec<u8>,
}

impl HttpCaller {
    async fn connect(address: SocketAddr) -> std::io::Result<HttpCaller> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "POST {PATH} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        Ok(HttpCaller {
            stream,
            request: request.into_bytes().into(),
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends the request, reads the whole response, returns its body (status 200 only).
    async fn post(&mut self) -> Result<Vec<u8>, String> {
        self.stream
            .write_all(&self.request)
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
        let status = head.get(9..12).unwrap_or("");
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        let status_ok = status == "200";
        let status = status.to_string();
        self.buffer.drain(..head_end);
        let body = match (length, chunked) {
            (Some(length), false) => {
                while self.buffer.len() < length {
                    self.fill().await?;
                }
                self.buffer.drain(..length).collect()
            }
            (_, true) => self.chunked().await?,
            (None, false) => return Err("response has neither length nor chunks".into()),
        };
        if !status_ok {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
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
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

impl Caller for HttpCaller {
    async fn call(&mut self) -> Result<(), String> {
        self.post().await.map(drop)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The children: print `<http address> <VmRSS kiB>`, serve until stdin closes, print VmHWM kiB.

async fn child(role: &str, arg: &str) -> Result<(), BoxError> {
    // The gateway logs and traces as the `micro-gateway` binary does (the proxy, as a user's
    // hand-written one might, not at all).
    let _telemetry = (role == "gateway")
        .then(|| micro_core::logging::init_service_with_default("micro-gateway", "info"));
    let (address, stop): (SocketAddr, Box<dyn FnOnce() -> StopFuture>) = match role {
        "gateway" => {
            let registration: micro_core::registry::Service = serde_json::from_str(arg)?;
            let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
            registry
                .register(&registration, Duration::from_secs(3600))
                .await?;
            let options = micro_gateway::GatewayOptions::load_from([
                "gw",
                "--address",
                "127.0.0.1:0",
                "--registry-listen",
                "127.0.0.1:0",
            ])?;
            let running = micro_gateway::Gateway::new(options, registry)
                .start()
                .await?;
            let address = running.http_address();
            (
                address,
                Box::new(move || {
                    Box::pin(async move { running.stop().await.map_err(BoxError::from) })
                }),
            )
        }
        "proxy" => {
            let channel = Endpoint::from_shared(format!("http://{arg}"))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            let app = axum::Router::new()
                .route(PATH, axum::routing::post(proxy_say_hello))
                .with_state(GreeterClient::new(channel));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            let serving = tokio::spawn(async move { axum::serve(listener, app).await });
            (
                address,
                Box::new(move || {
                    Box::pin(async move {
                        serving.abort();
                        Ok(())
                    })
                }),
            )
        }
        other => return Err(format!("unknown child role `{other}`").into()),
    };
    println!("{address} {}", status_kib("VmRSS:")?);
    std::io::stdout().flush()?;
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    let peak = status_kib("VmHWM:")?;
    stop().await?;
    println!("{peak}");
    std::io::stdout().flush()?;
    Ok(())
}

type StopFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>>>>;

/// A field of `/proc/self/status`, in kiB.
fn status_kib(field: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    Ok(line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

/// The reply body of the static proxy.
#[derive(serde::Serialize)]
struct HelloReplyJson {
    message: String,
}

/// The request body of the static proxy.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloRequestJson {
    #[serde(default)]
    name: String,
}

/// The static proxy's one route: JSON in, tonic call, JSON out.
async fn proxy_say_hello(
    State(mut client): State<GreeterClient<Channel>>,
    Json(request): Json<HelloRequestJson>,
) -> Result<Json<HelloReplyJson>, (StatusCode, String)> {
    let reply = client
        .say_hello(HelloRequest { name: request.name })
        .await
        .map_err(|status| (StatusCode::BAD_GATEWAY, status.message().to_string()))?;
    Ok(Json(HelloReplyJson {
        message: reply.into_inner().message,
    }))
}
