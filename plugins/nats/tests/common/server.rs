//! A `nats-server -js` of a test's own on a free port, with its own store directory, which the
//! test can kill and start again on the same port and store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use micro_testkit::wait_until;

/// A private JetStream server; killed, and its store removed, when dropped.
#[derive(Debug)]
pub struct PrivateNats {
    /// `nats://127.0.0.1:<port>`.
    pub address: String,
    port: u16,
    dir: PathBuf,
    jetstream: bool,
    process: Option<Child>,
}

impl PrivateNats {
    /// Starts `nats-server -js` on a free port and waits until it accepts connections.
    pub fn start() -> PrivateNats {
        Self::launch(true)
    }

    /// Starts `nats-server` without JetStream on a free port.
    pub fn start_without_jetstream() -> PrivateNats {
        Self::launch(false)
    }

    fn launch(jetstream: bool) -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(micro_core::conformance::unique(&format!(
            "micro-nats-test-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir).expect("create the store directory");
        let mut server = PrivateNats {
            address: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            jetstream,
            process: None,
        };
        server.restart();
        server
    }

    /// Starts it (again) on the same port and store, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "the private nats-server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .expect("server log");
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.dir.join("store"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        self.process = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(20),
            "the private nats-server accepts connections",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
    }

    /// Kills it with SIGKILL (no goodbye to clients, no flush) and waits until it is gone.
    pub fn kill(&mut self) {
        let mut child = self
            .process
            .take()
            .expect("the private nats-server is running");
        child.kill().expect("kill nats-server");
        child.wait().expect("reap nats-server");
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
