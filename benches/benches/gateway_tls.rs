//! # Bench `gateway_tls`: what TLS costs on the gateway path (issue 15)
//!
//! Two greeters run in process on `127.0.0.1:0`, one plaintext and one serving gRPC over TLS
//! (`--server-tls-cert/--server-tls-key`, a CA made by the bench with `micro_testkit::TestPki`).
//! Two gateways run as **child processes** (this binary re-run with `--child plain|tls`), each
//! with an in-process `MemoryRegistry` holding its greeter's registration:
//!
//! - **(a)** plaintext: HTTP → gateway → plaintext gRPC → greeter;
//! - **(b)** TLS on both hops: HTTPS (`--tls-cert/--tls-key`) → gateway → gRPC over TLS
//!   (the node is registered `secure=true`; the gateway verifies it with `--client-tls-ca`).
//!
//! The load is the same for both, interleaved (a, b, a, b) against drift: one keep-alive
//! HTTP/1.1 connection per caller (for (b) a rustls client trusting the bench CA, ALPN
//! `http/1.1`, handshaken before the window), `POST /greeter/Greeter/SayHello` with
//! `{"name":"bench"}`, a minimal response parser. At 32 callers (throughput, p99) and at one
//! (the p50 TLS adds without queueing). Prints requests/s, p50 and p99 of each, the ratios b/a
//! and each gateway's peak RSS.
//!
//! Run: `cargo bench -p micro-benches --bench gateway_tls`

// The load runner and figures; this bench has greeters of its own (one with TLS) and no direct
// gRPC phase, so the gRPC helpers go unused here.
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{BoxError, Caller, ROUNDS, Stats, measure, print_setup};
use micro_core::{Options, Registry};
use micro_testkit::{Greeter, TestPki, greeter_server};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PATH: &str = "/greeter/Greeter/SayHello";
const BODY: &str = r#"{"name":"bench"}"#;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.iter().position(|a| a == "--child") {
        Some(i) => {
            let role = args.get(i + 1).ok_or("--child needs a role")?;
            let rest = args.get(i + 2..).unwrap_or_default().to_vec();
            runtime.block_on(child(role, &rest))
        }
        None => runtime.block_on(parent()),
    }
}

fn path(p: &Path) -> Result<&str, BoxError> {
    Ok(p.to_str().ok_or("a non-UTF-8 path")?)
}

// ---------------------------------------------------------------------------------------------
// The parent: greeters, load, figures.

async fn parent() -> Result<(), BoxError> {
    let pki = TestPki::new("bench-gateway-tls");
    let greeter_cert = pki.issue("greeter", "greeter");
    let gateway_cert = pki.issue("gateway", "localhost");

    let plain_greeter = greeter(&[]).await?;
    let tls_greeter = greeter(&[
        "--server-tls-cert",
        path(&greeter_cert.cert)?,
        "--server-tls-key",
        path(&greeter_cert.key)?,
    ])
    .await?;
    let secure = tls_greeter.registration().nodes[0]
        .metadata
        .get("secure")
        .cloned();
    if secure.as_deref() != Some("true") {
        return Err(format!("the TLS greeter is not registered secure: {secure:?}").into());
    }

    let mut plain = Served::spawn(
        "plain",
        &[serde_json::to_string(plain_greeter.registration())?],
    )?;
    let mut tls = Served::spawn(
        "tls",
        &[
            serde_json::to_string(tls_greeter.registration())?,
            path(&gateway_cert.cert)?.to_string(),
            path(&gateway_cert.key)?.to_string(),
            path(pki.ca())?.to_string(),
        ],
    )?;
    let client = client_config(pki.ca())?;
    let plain_target = Target::Plain(plain.address);
    let tls_target = Target::Tls(tls.address, client);
    for target in [&plain_target, &tls_target] {
        let mut caller = HttpCaller::connect(target).await?;
        let body = caller.post().await?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        if value != serde_json::json!({"message": "Hello bench"}) {
            return Err(format!("unexpected reply {value} from {}", target.address()).into());
        }
    }

    print_setup(&format!(
        "bench gateway_tls: plaintext gateway child (pid {}) on {} -> greeter {}, TLS gateway child (pid {}) on {} -> TLS greeter {}",
        plain.process.id(),
        plain.address,
        plain_greeter.address(),
        tls.process.id(),
        tls.address,
        tls_greeter.address()
    ));
    let n = common::CONCURRENCY;
    println!("-- {n} concurrent callers (throughput and p99)");
    let (a, b) = level(n, &plain_target, &tls_target).await?;
    println!();
    println!("-- 1 caller (latency without queueing)");
    let (a1, b1) = level(1, &plain_target, &tls_target).await?;

    let plain_rss = plain.stop()?;
    let tls_rss = tls.stop()?;
    plain_greeter.stop().await?;
    tls_greeter.stop().await?;

    println!();
    println!("-- summary");
    println!("{}", a.line(&format!("{n} callers (a) HTTP -> gRPC")));
    println!("{}", b.line(&format!("{n} callers (b) HTTPS -> gRPC+TLS")));
    println!("{}", a1.line("1 caller  (a) HTTP -> gRPC"));
    println!("{}", b1.line("1 caller  (b) HTTPS -> gRPC+TLS"));
    println!(
        "ratio b/a throughput ({n} callers) {:.3}",
        b.rate() / a.rate()
    );
    println!(
        "ratio b/a p99 ({n} callers)        {:.3}",
        b.quantile_us(0.99) / a.quantile_us(0.99)
    );
    println!(
        "p50 added by TLS (1 caller)        {:.1} µs ({:.1} -> {:.1})",
        b1.quantile_us(0.5) - a1.quantile_us(0.5),
        a1.quantile_us(0.5),
        b1.quantile_us(0.5)
    );
    for (name, (started, peak)) in [("plaintext", plain_rss), ("TLS", tls_rss)] {
        println!(
            "{name} gateway RSS: {:.1} MiB after start, peak (VmHWM) {:.1} MiB",
            started as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    Ok(())
}

/// A greeter in process on `127.0.0.1:0` with `flags`, registered in a registry of its own.
async fn greeter(flags: &[&str]) -> Result<micro_core::server::RunningServer, BoxError> {
    let options =
        Options::new("greeter").load_from(std::iter::once("bench").chain(flags.iter().copied()))?;
    let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
    Ok(greeter_server(options, registry, Greeter::default())
        .start()
        .await?)
}

/// Measures (a) and (b) with `n` callers each, interleaved over the rounds.
async fn level(n: usize, plain: &Target, tls: &Target) -> Result<(Stats, Stats), BoxError> {
    let (mut a, mut b) = (Stats::default(), Stats::default());
    for round in 1..=ROUNDS {
        for (target, stats, label) in [
            (plain, &mut a, "(a) HTTP -> gRPC"),
            (tls, &mut b, "(b) HTTPS -> gRPC+TLS"),
        ] {
            let mut callers = Vec::with_capacity(n);
            for _ in 0..n {
                callers.push(HttpCaller::connect(target).await?);
            }
            let measured = measure(callers).await;
            println!("{}", measured.line(&format!("round {round} {label}")));
            stats.merge(&measured);
        }
    }
    Ok((a, b))
}

/// A rustls client configuration trusting `ca` only, ALPN `http/1.1`.
fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca)? {
        roots.add(certificate?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where the load goes: a plaintext gateway, or an HTTPS one and the client TLS to reach it.
enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl Target {
    fn address(&self) -> SocketAddr {
        match self {
            Target::Plain(address) | Target::Tls(address, _) => *address,
        }
    }
}

/// A connection of the load generator: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// The HTTP load generator: one keep-alive HTTP/1.1 connection.
struct HttpCaller {
    stream: Box<dyn Stream>,
    request: Arc<[u8]>,
    buffer: Vec<u8>,
}

impl HttpCaller {
    async fn connect(target: &Target) -> Result<HttpCaller, BoxError> {
        let tcp = TcpStream::connect(target.address()).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match target {
            Target::Plain(_) => Box::new(tcp),
            Target::Tls(_, config) => {
                let name = ServerName::try_from("localhost")?;
                Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await?,
                )
            }
        };
        let request = format!(
            "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        Ok(HttpCaller {
            stream,
            request: request.into_bytes().into(),
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends the request, reads the whole response (`Content-Length` bodies: the gateway's
    /// unary replies), returns its body (status 200 only).
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
        let status = head.get(9..12).unwrap_or("").to_string();
        let length = head
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .ok_or("response without content-length")?;
        self.buffer.drain(..head_end);
        while self.buffer.len() < length {
            self.fill().await?;
        }
        let body: Vec<u8> = self.buffer.drain(..length).collect();
        if status != "200" {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(body)
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

/// A gateway child process.
struct Served {
    role: &'static str,
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    address: SocketAddr,
    started_rss_kib: u64,
}

impl Served {
    /// Re-runs this binary as `--child <role> <args>` and reads `<address> <VmRSS kiB>`.
    fn spawn(role: &'static str, args: &[String]) -> Result<Served, BoxError> {
        let mut process = Command::new(std::env::current_exe()?)
            .args(["--child", role])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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

// ---------------------------------------------------------------------------------------------
// The children: a gateway each; print `<address> <VmRSS kiB>`, serve until stdin closes, print
// VmHWM kiB.

async fn child(role: &str, args: &[String]) -> Result<(), BoxError> {
    let registration = args
        .first()
        .ok_or("--child needs the greeter's registration")?;
    let registration: micro_core::registry::Service = serde_json::from_str(registration)?;
    let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
    registry
        .register(&registration, Duration::from_secs(3600))
        .await?;
    let mut flags: Vec<&str> = vec![
        "gw",
        "--address",
        "127.0.0.1:0",
        "--registry-listen",
        "127.0.0.1:0",
    ];
    match (role, args) {
        ("plain", [_]) => {}
        ("tls", [_, cert, key, ca]) => flags.extend([
            "--tls-cert",
            cert.as_str(),
            "--tls-key",
            key.as_str(),
            "--client-tls-ca",
            ca.as_str(),
        ]),
        _ => return Err(format!("unknown child role `{role}` with {args:?}").into()),
    }
    let options = micro_gateway::GatewayOptions::load_from(flags)?;
    let running = micro_gateway::Gateway::new(options, registry)
        .start()
        .await?;
    println!("{} {}", running.http_address(), status_kib("VmRSS:")?);
    std::io::stdout().flush()?;
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    let peak = status_kib("VmHWM:")?;
    running.stop().await?;
    println!("{peak}");
    std::io::stdout().flush()?;
    Ok(())
}

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
