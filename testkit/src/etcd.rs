//! An etcd of a test's own, which the test may kill and start again; plaintext, or over TLS
//! with client certificates.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http::get;
use crate::pki::{Issued, TestPki};
use crate::server::{PrivateServer, accepts, free_port};

/// An etcd on free ports with its own data directory, killed and removed when dropped. Needs
/// the `etcd` and `etcdctl` binaries (`scripts/setup` installs them).
#[derive(Debug)]
pub struct PrivateEtcd {
    /// Its client address: `127.0.0.1:port`, or `https://127.0.0.1:port` over TLS.
    pub address: String,
    server: PrivateServer,
    tls: Option<Tls>,
}

/// What `etcdctl` needs to reach a TLS etcd: the CA and a client certificate.
#[derive(Clone, Debug)]
struct Tls {
    ca: std::path::PathBuf,
    client: Issued,
}

impl Tls {
    /// `etcdctl`'s TLS flags.
    fn flags(&self) -> [std::ffi::OsString; 6] {
        [
            "--cacert".into(),
            self.ca.clone().into(),
            "--cert".into(),
            self.client.cert.clone().into(),
            "--key".into(),
            self.client.key.clone().into(),
        ]
    }
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
            tls: None,
        }
    }

    /// Starts etcd over TLS on a free port and waits until it answers: its client address is
    /// `https://127.0.0.1:<port>`, with a certificate issued by `pki` (`--cert-file`,
    /// `--key-file`), and it requires clients to present a certificate signed by `pki`'s CA
    /// (`--client-cert-auth --trusted-ca-file`). etcd reads the files on each handshake, so
    /// `pki` must outlive it.
    pub fn start_tls(pki: &TestPki) -> PrivateEtcd {
        let port = free_port();
        let peer = format!("http://127.0.0.1:{}", free_port());
        let server_cert = pki.issue("etcd-server", "etcd");
        let tls = Tls {
            ca: pki.ca().to_path_buf(),
            client: pki.issue("etcd-health", "etcdctl"),
        };
        let ca = tls.ca.clone();
        let command = move |port: u16, data: &Path| {
            let client = format!("https://127.0.0.1:{port}");
            let mut etcd = Command::new("etcd");
            etcd.args(["--name", "test", "--data-dir"])
                .arg(data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("test={peer}")])
                .arg("--cert-file")
                .arg(&server_cert.cert)
                .arg("--key-file")
                .arg(&server_cert.key)
                .arg("--trusted-ca-file")
                .arg(&ca)
                .arg("--client-cert-auth");
            etcd
        };
        let probe = tls.clone();
        let ready = move |port: u16| accepts(port) && healthy_tls(port, &probe);
        let server = PrivateServer::start_on(port, "etcd", Duration::from_secs(20), command, ready);
        PrivateEtcd {
            address: format!("https://127.0.0.1:{port}"),
            server,
            tls: Some(tls),
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

    /// Runs `etcdctl` against it (with a client certificate over TLS), panicking when it
    /// fails.
    pub fn etcdctl(&self, args: &[&str]) {
        let status = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.address)
            .args(self.tls.iter().flat_map(Tls::flags))
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

/// Whether the TLS etcd on `port` reports itself healthy to `etcdctl` with a client certificate.
fn healthy_tls(port: u16, tls: &Tls) -> bool {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(format!("https://127.0.0.1:{port}"))
        .args(tls.flags())
        .args([
            "--dial-timeout",
            "2s",
            "--command-timeout",
            "2s",
            "endpoint",
            "health",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
