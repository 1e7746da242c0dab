//! An etcd of a test's own, which the test may kill and start again.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http::get;
use crate::server::{PrivateServer, free_port};

/// An etcd on free ports with its own data directory, killed and removed when dropped. Needs
/// the `etcd` and `etcdctl` binaries (`scripts/setup` installs them).
#[derive(Debug)]
pub struct PrivateEtcd {
    /// Its client address (`127.0.0.1:port`).
    pub address: String,
    server: PrivateServer,
}

impl PrivateEtcd {
    /// Starts etcd on a free port and waits until it answers.
    pub fn start() -> PrivateEtcd {
        Self::start_on(&free_port().to_string())
    }

    /// Starts etcd with its client on `127.0.0.1:<port>` and waits until it answers.
    pub fn start_on(port: &str) -> PrivateEtcd {
        let port: u16 = port.parse().expect("a port");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let command = move |port: u16, data: &std::path::Path| {
            let client = format!("http://127.0.0.1:{port}");
            let mut etcd = Command::new("etcd");
            etcd.args(["--name", "test", "--data-dir"])
                .arg(data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("test={peer}")]);
            etcd
        };
        let server =
            PrivateServer::start_on(port, "etcd", Duration::from_secs(20), command, healthy);
        PrivateEtcd {
            address: format!("127.0.0.1:{port}"),
            server,
        }
    }

    /// Kills it (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub fn resume(&mut self) {
        self.server.restart();
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

/// Whether the etcd on `port` reports itself healthy.
fn healthy(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect(address).is_ok() && {
        let response = get(address, "/health");
        response.status == 200 && response.body.contains("true")
    }
}
