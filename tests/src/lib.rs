//! Helpers for micro's end-to-end tests: greeter servers in process, binaries as child
//! processes, and waiting on conditions with deadlines (never fixed sleeps).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use micro_core::server::RunningServer;
use micro_core::{Options, Registry, Server};
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::{Greeter, greeter};

/// Options for an in-process test server: port 0, short TTL.
pub fn test_options(name: &str) -> Options {
    Options::new(name)
        .set("register-ttl", "2s")
        .set("register-interval", "500ms")
        .set("shutdown-timeout", "5s")
        .load_from(["test"])
        .expect("test options")
}

/// Starts a greeter replying `"<greeting> <name>"`, registered in `registry`.
pub async fn start_greeter(registry: Arc<dyn Registry>, greeting: &str) -> RunningServer {
    Server::new(test_options("greeter"), registry)
        .descriptors(greeter::DESCRIPTORS)
        .expect("descriptors")
        .add_service(GreeterServer::new(Greeter {
            greeting: greeting.into(),
            ..Greeter::default()
        }))
        .start()
        .await
        .expect("start greeter")
}

/// Polls `check` every 25 ms until true; panics naming `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not true within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` every 25 ms, blocking, until true; panics naming `what` after `deadline`.
/// Returns how long it took.
pub fn wait_until(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    started.elapsed()
}

/// The path of a workspace binary built next to this test executable.
///
/// `cargo test`/`nextest` build the binaries of the packages under test; the README's test
/// command builds every binary first, so this only fails when run some other way.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A child process, killed when dropped, whose stdout lines can be awaited.
pub struct Process {
    /// The child.
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

impl Process {
    /// Starts binary `name` with `args` and extra environment `env` (the parent's `MICRO_*`
    /// variables are removed so tests are not steered by the caller's environment).
    pub fn start(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: Option<&std::path::Path>,
    ) -> Process {
        let mut command = Command::new(binary(name));
        let stderr_path = std::env::temp_dir().join(format!(
            "micro-test-{name}-{}-{:08x}.log",
            std::process::id(),
            fastrand_u32()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log file");
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MICRO_")) {
            command.env_remove(key);
        }
        command.envs(env.iter().copied());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
            stderr_path,
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The first stdout line containing `needle`, waiting up to `deadline`.
    pub fn line_containing(&mut self, needle: &str, deadline: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let until = std::time::Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stdout line containing `{needle}` within {deadline:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Collects the stdout lines that arrive within `wait` into [`Process::seen`].
    pub fn read_lines(&mut self, wait: Duration) {
        let until = std::time::Instant::now() + wait;
        while let Ok(line) = self
            .lines
            .recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
        {
            self.seen.push(line);
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        signal(self.child.id(), "KILL");
    }

    /// Waits for the exit status, up to `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "process did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A gateway process on ephemeral ports: its HTTP and embedded registry addresses.
pub struct GatewayProcess {
    /// The process.
    pub process: Process,
    /// HTTP address.
    pub http: std::net::SocketAddr,
    /// Embedded registry address.
    pub registry: std::net::SocketAddr,
}

impl GatewayProcess {
    /// Starts `micro-gateway` on ports 0 with `extra` flags.
    pub fn start(extra: &[&str]) -> GatewayProcess {
        let mut args = vec![
            "--address",
            "127.0.0.1:0",
            "--registry-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut process = Process::start("micro-gateway", &args, &[], None);
        let line = process.line_containing("listening on", Duration::from_secs(30));
        GatewayProcess {
            http: address_after(&line, "http://"),
            registry: address_after(&line, "served on "),
            process,
        }
    }

    /// Starts a `greeter` process registering with this gateway, with `extra` flags, and waits
    /// for its startup line.
    pub fn greeter(&self, extra: &[&str]) -> Process {
        let registry = self.registry.to_string();
        let mut args = vec!["--registry-address", registry.as_str()];
        // Short TTLs unless the caller sets its own.
        if !extra.contains(&"--register-ttl") {
            args.extend_from_slice(&["--register-ttl", "2s", "--register-interval", "500ms"]);
        }
        args.extend_from_slice(extra);
        let mut process = Process::start("greeter", &args, &[], None);
        process.line_containing("listening on", Duration::from_secs(30));
        process
    }
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    hasher.finish() as u32
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// An HTTP response read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics naming the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends raw bytes as one HTTP/1.1 request (the caller writes `Connection: close`) and reads
/// the whole response. Raw on purpose: bad-input tests send what no HTTP client would.
pub fn raw_http(address: std::net::SocketAddr, request: &[u8]) -> HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // A server may answer and close before reading everything (413); that is fine.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let body = if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// `POST path` with a JSON body.
pub fn post(address: std::net::SocketAddr, path: &str, body: &str) -> HttpResponse {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(address, request.as_bytes())
}

/// `GET path`.
pub fn get(address: std::net::SocketAddr, path: &str) -> HttpResponse {
    raw_http(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The address in a startup line after `marker` (`listening on http://127.0.0.1:8080`).
pub fn address_after(line: &str, marker: &str) -> std::net::SocketAddr {
    let rest = line
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no `{marker}` in {line:?}"));
    let address: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    address
        .parse()
        .unwrap_or_else(|e| panic!("bad address {address:?} in {line:?}: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// An etcd of a test's own, on free ports, that the test may stop and start again.
pub struct PrivateEtcd {
    /// Its client address (`127.0.0.1:port`).
    pub address: String,
    peer: String,
    data: PathBuf,
    process: Option<Child>,
}

impl PrivateEtcd {
    /// Starts etcd (installed by `scripts/setup`) and waits until it answers.
    pub fn start() -> PrivateEtcd {
        Self::start_on(&free_port().to_string())
    }

    /// Starts etcd with its client on `127.0.0.1:<port>`.
    pub fn start_on(port: &str) -> PrivateEtcd {
        let data = std::env::temp_dir().join(format!(
            "micro-test-etcd-{}-{:08x}",
            std::process::id(),
            fastrand_u32()
        ));
        let mut etcd = PrivateEtcd {
            address: format!("127.0.0.1:{port}"),
            peer: format!("127.0.0.1:{}", free_port()),
            data,
            process: None,
        };
        etcd.resume();
        etcd
    }

    /// Kills it (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &format!("http://{}", self.address),
                "--advertise-client-urls",
                &format!("http://{}", self.address),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://{}", self.peer),
                "--initial-advertise-peer-urls",
                &format!("http://{}", self.peer),
            ])
            .args(["--initial-cluster", &format!("test=http://{}", self.peer)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (run scripts/setup to install it)");
        self.process = Some(child);
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                std::time::Instant::now() < until,
                "private etcd on {} not healthy",
                self.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let response = std::net::TcpStream::connect(&self.address)
            .ok()
            .map(|_| get(self.address.parse().expect("address"), "/health"));
        response.is_some_and(|r| r.status == 200 && r.body.contains("true"))
    }

    /// Runs `etcdctl` against it.
    pub fn etcdctl(&self, args: &[&str]) {
        let status = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.address)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run etcdctl");
        assert!(status.success(), "etcdctl {args:?} failed");
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
    }
}
