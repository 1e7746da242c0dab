//! The workspace's binaries run as child processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::fixture::SHORT_TTL_ARGS;

/// How long a process may take to print its startup line (a cold, loaded machine included).
const STARTUP: Duration = Duration::from_secs(30);

/// The path of workspace binary `name`, built next to the running test executable.
///
/// `cargo test` builds the binaries of the package under test only; the README's test command
/// builds every binary first (`cargo build --workspace --bins`), and this says so when one is
/// missing.
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

/// A child process, killed when dropped, whose stdout lines can be awaited and whose stderr
/// goes to a file (removed on drop).
#[derive(Debug)]
pub struct Process {
    /// The child.
    pub child: Child,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

impl Process {
    /// Starts binary `name` with `args`, extra environment `env`, in `dir` (or this one). The
    /// parent's `MICRO_*` variables are removed so the caller's environment does not steer it.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)], dir: Option<&Path>) -> Process {
        let mut command = Command::new(binary(name));
        let stderr_path = std::env::temp_dir().join(format!(
            "micro-test-{name}-{}-{:08x}.log",
            std::process::id(),
            fastrand::u32(..)
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
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stdout line containing `{needle}` within {deadline:?}; saw {:?}; stderr: {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// The address in its `listening on <address>` startup line, waiting for the line.
    pub fn listening_address(&mut self) -> String {
        let line = self.line_containing("listening on", STARTUP);
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string()
    }

    /// Collects the stdout lines that arrive within `wait` into [`Process::seen`].
    pub fn read_lines(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while let Ok(line) = self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
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
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
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

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A `micro-gateway` process on ephemeral ports: its HTTP and embedded registry addresses.
#[derive(Debug)]
pub struct GatewayProcess {
    /// The process.
    pub process: Process,
    /// HTTP address.
    pub http: SocketAddr,
    /// Embedded registry address.
    pub registry: SocketAddr,
}

impl GatewayProcess {
    /// Starts `micro-gateway` on ports 0 with `extra` flags and waits for its startup line.
    pub fn start(extra: &[&str]) -> GatewayProcess {
        Self::start_with_env(extra, &[])
    }

    /// [`GatewayProcess::start`] with extra environment `env`.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut args = vec![
            "--address",
            "127.0.0.1:0",
            "--registry-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut process = Process::start("micro-gateway", &args, env, None);
        let line = process.line_containing("listening on", STARTUP);
        GatewayProcess {
            http: address_after(&line, "://"),
            registry: address_after(&line, "served on "),
            process,
        }
    }

    /// Starts a `greeter` process registering with this gateway, with `extra` flags, and waits
    /// for its startup line. It gets [`SHORT_TTL_ARGS`] unless `extra` sets `--register-ttl`.
    pub fn greeter(&self, extra: &[&str]) -> Process {
        let registry = self.registry.to_string();
        let mut args = vec!["--registry-address", registry.as_str()];
        if !extra.contains(&"--register-ttl") {
            args.extend_from_slice(&SHORT_TTL_ARGS);
        }
        args.extend_from_slice(extra);
        let mut process = Process::start("greeter", &args, &[], None);
        process.line_containing("listening on", STARTUP);
        process
    }
}

/// The address in a startup line after `marker` (`listening on http://127.0.0.1:8080`).
fn address_after(line: &str, marker: &str) -> SocketAddr {
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

/// What a process that ran to the end left behind.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Finished {
    /// Asserts exit code 0 and returns stdout.
    pub fn success(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "expected success; stderr: {}",
            self.stderr
        );
        &self.stdout
    }

    /// Asserts exit code `code` with exactly one stderr line, and returns that line.
    pub fn failure(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}; stdout: {}; stderr: {}",
            self.stdout,
            self.stderr
        );
        let stderr = self.stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "one stderr line: {stderr:?}");
        stderr
    }
}

/// Runs workspace binary `name` to the end with `args`, extra environment `env` (the parent's
/// `MICRO_*` removed) and `stdin`; kills it and panics if it runs longer than `deadline`.
pub fn run(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    deadline: Duration,
) -> Finished {
    let mut command = Command::new(binary(name));
    command.args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MICRO_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    run_command(command, stdin, deadline)
}

/// A memory figure of process `pid` in KiB: `field` of `/proc/<pid>/status`, e.g. `VmRSS`
/// (resident now) or `VmHWM` (the resident peak).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A child process started by hand (a Python server or client, say), killed and reaped when
/// dropped: a failing assertion must not leave it running, holding the test run's output open
/// (CI waits for that output to end).
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tests/python/<script>` with `python3` to the end (the Python clients the tests drive:
/// grpcio, websockets, the MCP SDK; `scripts/setup` installs them).
pub fn python(script: &str, args: &[&str], deadline: Duration) -> Finished {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(script);
    let mut command = Command::new("python3");
    command.arg(path).args(args);
    run_command(command, "", deadline)
}

/// Runs `command` to the end with `stdin`; kills it and panics past `deadline`.
pub fn run_command(mut command: Command, stdin: &str, deadline: Duration) -> Finished {
    use std::io::{Read, Write};
    let name = format!("{command:?}");
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_string();
    std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("piped stderr")));
    // The exit is waited on by a thread of its own, so the deadline is a channel timeout
    // rather than a polling loop.
    let pid = child.id();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match exit.recv_timeout(deadline) {
        Ok(status) => status.unwrap_or_else(|e| panic!("wait for {name}: {e}")),
        Err(_) => {
            signal(pid, "KILL");
            // The readers are not joined: a grandchild left behind (a browser) may hold the
            // pipes open.
            panic!("{name} did not finish within {deadline:?} and was killed");
        }
    };
    Finished {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
