//! A `nats-server -js` of a test's own, on a free port with its own store directory, which the
//! test can stop and start again on the same port and store.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private JetStream server, killed and its store removed when dropped.
#[derive(Debug)]
pub struct PrivateNats {
    /// `nats://127.0.0.1:<port>`.
    pub address: String,
    port: u16,
    store: PathBuf,
    process: Option<Child>,
}

impl PrivateNats {
    /// Starts `nats-server -js` on a free port and waits until it accepts connections.
    pub fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = std::env::temp_dir().join(format!(
            "micro-test-nats-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&store).expect("create the store directory");
        let mut server = PrivateNats {
            address: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            process: None,
        };
        server.resume();
        server
    }

    /// Starts it again on the same port and store, and waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "the private nats-server is running");
        let log = std::fs::File::create(self.store.with_extension("log")).expect("server log");
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (`apt-get install nats-server`)");
        self.process = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "private nats-server on port {} did not start; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as an operator restarting it would: SIGTERM, and waits until it has exited
    /// (JetStream flushes its store on the way out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM the private nats-server");
            let until = Instant::now() + Duration::from_secs(20);
            while child.try_wait().expect("wait for nats-server").is_none() {
                if Instant::now() > until {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server did not exit within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_file(self.store.with_extension("log"));
    }
}
