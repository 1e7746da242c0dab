//! The gateway's HTTP listener over TLS (`--tls-cert`/`--tls-key`, issue 15): curl with the
//! test CA calls a TLS greeter through it over HTTP/1.1 and HTTP/2 (ALPN), curl without the CA
//! refuses it, a certificate replaced on disk is served to new connections without a restart,
//! and a client that never finishes its handshake or its headers is closed in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_testkit::{Issued, PROPAGATION, Process, SHORT_TTL_ARGS, TestPki, wait_until};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const SAY_HELLO: &str = "/greeter/Greeter/SayHello";
const STARTUP: Duration = Duration::from_secs(30);

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The address after `marker` in `line`, up to the first character no address has.
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

/// A `micro-gateway` serving HTTPS with `cert`, dialing services that trust `ca`.
struct HttpsGateway {
    process: Process,
    https: SocketAddr,
    registry: SocketAddr,
}

impl HttpsGateway {
    fn start(cert: &Issued, ca: &Path, extra: &[&str]) -> HttpsGateway {
        let mut args = vec![
            "--address",
            "127.0.0.1:0",
            "--registry-listen",
            "127.0.0.1:0",
            "--tls-cert",
            path(&cert.cert),
            "--tls-key",
            path(&cert.key),
            "--client-tls-ca",
            path(ca),
        ];
        args.extend_from_slice(extra);
        let mut process = Process::start("micro-gateway", &args, &[], None);
        let line = process.line_containing("listening on", STARTUP);
        HttpsGateway {
            // `https://` once the startup line says so; the address either way.
            https: address_after(&line, "://"),
            registry: address_after(&line, "served on "),
            process,
        }
    }

    /// A greeter serving gRPC over TLS with `cert`, registered with this gateway.
    fn tls_greeter(&self, cert: &Issued) -> Process {
        let registry = self.registry.to_string();
        let mut args = vec![
            "--registry-address",
            registry.as_str(),
            "--server-tls-cert",
            path(&cert.cert),
            "--server-tls-key",
            path(&cert.key),
        ];
        args.extend_from_slice(&SHORT_TTL_ARGS);
        let mut process = Process::start("greeter", &args, &[], None);
        process.line_containing("listening on", STARTUP);
        process
    }
}

/// What curl did: its exit code and output.
struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `curl -sS <args> -d '{"name":"<name>"}' https://<address>/greeter/Greeter/SayHello`, printing
/// the body, a newline and the HTTP version.
fn curl(address: SocketAddr, args: &[&str], name: &str) -> Curl {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_version}"])
        .args(args)
        .args(["-d", &format!(r#"{{"name":"{name}"}}"#)])
        .arg(format!("https://{address}{SAY_HELLO}"))
        .output()
        .expect("run curl");
    Curl {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A rustls client configuration trusting `ca` only, offering `alpn`.
fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots
            .add(certificate.expect("a CA certificate"))
            .expect("add the CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake with the gateway, verified for `localhost`.
fn handshake(address: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(address).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let name = ServerName::try_from("localhost").expect("server name");
    let connection =
        rustls::ClientConnection::new(config.clone(), name).expect("a TLS client connection");
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("the TLS handshake");
    }
    tls
}

/// The certificate the gateway serves to a new connection.
fn served_certificate(address: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tls = handshake(address, config);
    tls.conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .to_vec()
}

/// The first certificate of PEM file `file`.
fn certificate_in(file: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(file)
        .expect("a PEM certificate")
        .to_vec()
}

/// One keep-alive `GET /health` over `tls`; the status line.
fn health(tls: &mut Tls) -> String {
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk).expect("read the response");
        assert!(n > 0, "closed before the response");
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("a content length");
            if body.len() >= length {
                return head.lines().next().unwrap_or_default().to_string();
            }
        }
    }
}

/// Replaces `to`'s files with `from`'s the way a rotation does: written aside, then renamed.
fn replace(from: &Issued, to: &Issued) {
    for (source, target) in [(&from.cert, &to.cert), (&from.key, &to.key)] {
        let aside = target.with_extension("new");
        std::fs::copy(source, &aside).expect("copy the new file");
        std::fs::rename(&aside, target).expect("rename over the old file");
    }
}

#[test]
fn curl_calls_a_tls_greeter_through_the_https_gateway_only_with_the_ca() {
    let pki = TestPki::new("gateway-tls");
    let gateway = HttpsGateway::start(&pki.issue("gateway", "localhost"), pki.ca(), &[]);
    let _greeter = gateway.tls_greeter(&pki.issue("greeter", "greeter"));
    let ca = path(pki.ca());
    wait_until(PROPAGATION, "the greeter is routable over HTTPS", || {
        curl(gateway.https, &["--cacert", ca], "Al").code == Some(0)
    });

    for (version, flag) in [("1.1", "--http1.1"), ("2", "--http2")] {
        let done = curl(gateway.https, &["--cacert", ca, flag], "Bo");
        assert_eq!(done.code, Some(0), "curl {flag}: {}", done.stderr);
        assert_eq!(
            done.stdout,
            format!("{{\"message\":\"Hello Bo\"}}\n{version}"),
            "curl {flag}"
        );
    }

    // Without the CA, curl cannot verify the gateway: exit 60, nothing sent.
    let refused = curl(gateway.https, &[], "Cy");
    assert_eq!(
        refused.code,
        Some(60),
        "curl without --cacert: {} {}",
        refused.stdout,
        refused.stderr
    );
    // Plain HTTP on the HTTPS port is not served either.
    let plain = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-d", "{}"])
        .arg(format!("http://{}{SAY_HELLO}", gateway.https))
        .output()
        .expect("run curl");
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("Hello"),
        "plaintext was answered: {plain:?}"
    );
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_new_connections() {
    let pki = TestPki::new("gateway-rotation");
    let served = pki.issue("gateway", "localhost");
    let gateway = HttpsGateway::start(&served, pki.ca(), &[]);
    let config = client_config(pki.ca(), &[b"http/1.1"]);
    let first = certificate_in(&served.cert);
    assert_eq!(served_certificate(gateway.https, &config), first);

    // A connection made before the rotation keeps working after it.
    let mut before = handshake(gateway.https, &config);
    assert_eq!(health(&mut before), "HTTP/1.1 200 OK");

    let rotated = pki.issue("rotated", "localhost");
    replace(&rotated, &served);
    let second = certificate_in(&served.cert);
    assert_ne!(first, second);
    assert_eq!(
        served_certificate(gateway.https, &config),
        second,
        "the next connection gets the certificate now on disk"
    );
    assert_eq!(health(&mut before), "HTTP/1.1 200 OK");

    // A broken file (a rotation half done) keeps the last good certificate.
    std::fs::write(&served.cert, "not a certificate").expect("break the certificate");
    assert_eq!(served_certificate(gateway.https, &config), second);
    let mut gateway = gateway;
    assert!(
        gateway
            .process
            .child
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the gateway runs on, never restarted"
    );
}

/// Reads until the gateway closes the connection (EOF, reset, or a TLS error on the cut);
/// panics if it is still open after `within`.
fn closed_within(read: &mut impl Read, within: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        assert!(started.elapsed() < within, "still open after {within:?}");
        match read.read(&mut chunk) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after {:?}", started.elapsed())
            }
            Err(_) => return started.elapsed(),
        }
    }
}

#[test]
fn clients_that_stall_in_the_handshake_or_the_headers_are_closed() {
    let pki = TestPki::new("gateway-tls-slow");
    let gateway = HttpsGateway::start(
        &pki.issue("gateway", "localhost"),
        pki.ca(),
        &["--header-timeout", "2s"],
    );
    let (header_timeout, slack) = (Duration::from_secs(2), Duration::from_secs(1));

    // TCP only, never a ClientHello.
    let mut silent = TcpStream::connect(gateway.https).expect("connect");
    silent
        .set_read_timeout(Some(header_timeout + slack))
        .expect("read timeout");
    let closed = closed_within(&mut silent, header_timeout + slack);
    assert!(
        closed >= header_timeout - Duration::from_millis(200),
        "{closed:?}"
    );

    // Half a ClientHello.
    let mut half_hello = TcpStream::connect(gateway.https).expect("connect");
    half_hello
        .set_read_timeout(Some(header_timeout + slack))
        .expect("read timeout");
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .expect("send half a hello");
    closed_within(&mut half_hello, header_timeout + slack);

    // A finished handshake, then half a request line: the clock started at the connect.
    let config = client_config(pki.ca(), &[b"http/1.1"]);
    let connected = Instant::now();
    let mut tls = handshake(gateway.https, &config);
    tls.sock
        .set_read_timeout(Some(header_timeout + slack))
        .expect("read timeout");
    tls.write_all(b"GET /hea")
        .expect("send half a request line");
    tls.flush().expect("flush");
    closed_within(&mut tls, header_timeout + slack);
    let open_for = connected.elapsed();
    println!("TLS client with half a request line closed after {open_for:?}");
    assert!(
        open_for <= header_timeout + slack,
        "closed after {open_for:?}"
    );
}
