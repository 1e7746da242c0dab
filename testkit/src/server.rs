//! A server process of a test's own (nats-server, redis-server, etcd, ...): on a free port,
//! with a directory of its own for data and a log beside it, which the test can kill, stop and
//! start again on the same port and data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type CommandFn = Box<dyn Fn(u16, &Path) -> Command + Send + Sync>;
type ReadyFn = Box<dyn Fn(u16) -> bool + Send + Sync>;

/// A private server process; killed, and its directory and log removed, when dropped.
pub struct PrivateServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    name: String,
    dir: PathBuf,
    within: Duration,
    command: CommandFn,
    ready: ReadyFn,
    process: Option<Child>,
}

impl std::fmt::Debug for PrivateServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateServer")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("running", &self.process.is_some())
            .finish_non_exhaustive()
    }
}

impl PrivateServer {
    /// Starts `name` on a free port and waits up to `within` until `ready` says it answers.
    /// `command` builds the command line from the port and the server's own (created, empty)
    /// directory; its stderr goes to the log ([`PrivateServer::log`]).
    pub fn start(
        name: &str,
        within: Duration,
        command: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
        ready: impl Fn(u16) -> bool + Send + Sync + 'static,
    ) -> PrivateServer {
        Self::start_on(free_port(), name, within, command, ready)
    }

    /// [`PrivateServer::start`] on `port`.
    pub fn start_on(
        port: u16,
        name: &str,
        within: Duration,
        command: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
        ready: impl Fn(u16) -> bool + Send + Sync + 'static,
    ) -> PrivateServer {
        let dir = std::env::temp_dir().join(format!(
            "micro-test-{name}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = PrivateServer {
            port,
            name: name.to_string(),
            dir,
            within,
            command: Box::new(command),
            ready: Box::new(ready),
            process: None,
        };
        server.restart();
        server
    }

    /// Starts it (again) on the same port and directory, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.process.is_none(),
            "the private {} is running",
            self.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the server's log");
        let child = (self.command)(self.port, &self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {} (run scripts/setup to install it): {e}", self.name)
            });
        self.process = Some(child);
        let until = Instant::now() + self.within;
        while !(self.ready)(self.port) {
            assert!(
                Instant::now() < until,
                "the private {} on port {} does not answer within {:?}; log: {}",
                self.name,
                self.port,
                self.within,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL (no goodbye to clients, no flush) and waits until it is gone; does
    /// nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it as an operator restarting it would: SIGTERM, and waits (up to 20 s, then
    /// SIGKILL and a panic) until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM the private {}", self.name);
            let until = Instant::now() + Duration::from_secs(20);
            while child.try_wait().expect("wait for the server").is_none() {
                if Instant::now() > until {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} did not exit within 20 s of SIGTERM", self.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Whether it is running (started and neither killed nor stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Its own directory, for its data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What it logged (its stderr) so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.log_path());
    }
}

/// A port nothing listens on right now, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Whether something accepts TCP connections on `127.0.0.1:<port>`: a readiness check.
pub fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
