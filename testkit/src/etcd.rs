//! An etcd of a test's own, which the test may kill and start again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::get;

/// An etcd on free ports with its own data directory, killed and removed when dropped. Needs
/// the `etcd` and `etcdctl` binaries (`scripts/setup` installs them).
#[derive(Debug)]
pub struct PrivateEtcd {
    /// Its client address (`127.0.0.1:port`).
    pub address: String,
    peer: String,
    data: PathBuf,
    process: Option<Child>,
}

impl PrivateEtcd {
    /// Starts etcd on a free port and waits until it answers.
    pub fn start() -> PrivateEtcd {
        Self::start_on(&free_port().to_string())
    }

    /// Starts etcd with its client on `127.0.0.1:<port>` and waits until it answers.
    pub fn start_on(port: &str) -> PrivateEtcd {
        let data = std::env::temp_dir().join(format!(
            "micro-test-etcd-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
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
        let client = format!("http://{}", self.address);
        let peer = format!("http://{}", self.peer);
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (run scripts/setup to install it)");
        self.process = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < until,
                "private etcd on {} not healthy",
                self.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let address = self.address.parse().expect("etcd address");
        std::net::TcpStream::connect(address).is_ok() && {
            let response = get(address, "/health");
            response.status == 200 && response.body.contains("true")
        }
    }

    /// Runs `etcdctl` against it, panicking when it fails.
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
