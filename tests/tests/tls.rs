//! Services over TLS and mutual TLS, as a user runs them: a greeter process serving gRPC with
//! `--server-tls-cert/--server-tls-key`, found through the gateway's registry and called through
//! the gateway (which dials it as any micro client does), by `micro call`, and by Python's
//! grpcio, a client no one here wrote. Certificates come from a CA the test makes.

use std::time::Duration;

use micro_core::Registry;
use micro_testkit::{GatewayProcess, Issued, Process, SHORT_TTL_ARGS, TestPki, post, python, run};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const RUN: Duration = Duration::from_secs(60);

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A greeter registering with `gateway`, serving TLS with `cert`, plus `extra` flags; returns
/// the process and its startup line (`... node <id> listening on <address> ...`).
fn start_tls_greeter(gateway: &GatewayProcess, cert: &Issued, extra: &[&str]) -> (Process, String) {
    let registry = gateway.registry.to_string();
    let mut args = vec![
        "--registry-address",
        registry.as_str(),
        "--server-tls-cert",
        path(&cert.cert),
        "--server-tls-key",
        path(&cert.key),
    ];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    args.extend_from_slice(extra);
    let mut process = Process::start("greeter", &args, &[], None);
    let line = process.line_containing("listening on", Duration::from_secs(30));
    (process, line)
}

/// The word after `marker` in `line`.
fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{marker}` in {line:?}"))
}

/// [`start_tls_greeter`], returning the process and its address.
fn tls_greeter(gateway: &GatewayProcess, cert: &Issued, extra: &[&str]) -> (Process, String) {
    let (process, line) = start_tls_greeter(gateway, cert, extra);
    let address = word_after(&line, "listening on ").to_string();
    (process, address)
}

fn say_hello(gateway: &GatewayProcess, name: &str) -> (u16, String) {
    let response = post(
        gateway.http,
        "/greeter/Greeter/SayHello",
        &format!(r#"{{"name":"{name}"}}"#),
    );
    (response.status, response.body)
}

/// grpcio calling the greeter at `address` directly; `Ok(reply)` or `Err(CODE: details)`.
fn grpcio(
    address: &str,
    ca: &std::path::Path,
    identity: Option<&Issued>,
) -> Result<String, String> {
    let mut args = vec![address, "Py", "--ca", path(ca)];
    if let Some(identity) = identity {
        args.extend_from_slice(&["--cert", path(&identity.cert), "--key", path(&identity.key)]);
    }
    let finished = python("tls_client.py", &args, RUN);
    match finished.code {
        Some(0) => Ok(finished.stdout.trim().to_string()),
        Some(1) => Err(finished.stdout.trim().to_string()),
        _ => panic!("tls_client.py crashed: {}", finished.stderr),
    }
}

#[test]
fn a_secure_greeter_is_called_through_the_gateway_and_by_grpcio() {
    let pki = TestPki::new("tls");
    let server = pki.issue("greeter", "greeter");
    let gateway = GatewayProcess::start(&["--client-tls-ca", path(pki.ca())]);
    let (_greeter, address) = tls_greeter(&gateway, &server, &[]);

    // Registered as secure, as go-micro does.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let services = runtime
        .block_on(async {
            let registry = micro_remote::RemoteRegistry::new(&gateway.registry.to_string())?;
            registry.get_service("greeter").await
        })
        .unwrap();
    let node = &services[0].nodes[0];
    assert_eq!(
        node.metadata.get("secure").map(String::as_str),
        Some("true"),
        "{node:?}"
    );

    let (status, body) = say_hello(&gateway, "TLS");
    assert_eq!((status, body.as_str()), (200, r#"{"message":"Hello TLS"}"#));

    assert_eq!(grpcio(&address, pki.ca(), None), Ok("Hello Py".to_string()));
    // grpcio trusting another CA refuses the greeter's certificate.
    let other = TestPki::new("other");
    let refused = grpcio(&address, other.ca(), None).unwrap_err();
    assert!(refused.starts_with("UNAVAILABLE"), "{refused}");
}

#[test]
fn a_client_that_cannot_verify_a_secure_node_says_which_node_and_which_option() {
    let pki = TestPki::new("noca");
    let server = pki.issue("greeter", "greeter");
    // No --client-tls-ca: the system's roots, which do not know the test CA.
    let gateway = GatewayProcess::start(&[]);
    let (_greeter, line) = start_tls_greeter(&gateway, &server, &[]);
    let node_id = word_after(&line, " node ").to_string();

    let (status, body) = say_hello(&gateway, "x");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&node_id)
            && body.contains("--client-tls-ca")
            && body.contains("UnknownIssuer"),
        "{body}"
    );

    let registry_address = gateway.registry.to_string();
    let env = [("MICRO_REGISTRY_ADDRESS", registry_address.as_str())];
    let call = run(
        "micro",
        &["call", "greeter", "Greeter.SayHello", r#"{"name":"x"}"#],
        &env,
        "",
        RUN,
    );
    let line = call.failure(1);
    assert!(
        line.contains("UNAVAILABLE") && line.contains(&node_id) && line.contains("--client-tls-ca"),
        "{line}"
    );
    // Given the CA, the same command works: nothing fell back to plaintext before.
    let ca = path(pki.ca());
    let call = run(
        "micro",
        &["call", "greeter", "Greeter.SayHello", r#"{"name":"x"}"#],
        &[
            ("MICRO_REGISTRY_ADDRESS", registry_address.as_str()),
            ("MICRO_CLIENT_TLS_CA", ca),
        ],
        "",
        RUN,
    );
    assert!(call.success().contains("Hello x"), "{}", call.stdout);
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let pki = TestPki::new("mtls");
    let other = TestPki::new("stranger");
    let server = pki.issue("greeter", "greeter");
    let client = pki.issue("client", "gateway");
    let stranger = other.issue("client", "stranger");
    let gateway = GatewayProcess::start(&[
        "--client-tls-ca",
        path(pki.ca()),
        "--client-tls-cert",
        path(&client.cert),
        "--client-tls-key",
        path(&client.key),
    ]);
    let (_greeter, address) = tls_greeter(
        &gateway,
        &server,
        &["--server-tls-client-ca", path(pki.ca())],
    );

    let (status, body) = say_hello(&gateway, "mTLS");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"message":"Hello mTLS"}"#)
    );
    assert_eq!(
        grpcio(&address, pki.ca(), Some(&client)),
        Ok("Hello Py".to_string())
    );

    let without = grpcio(&address, pki.ca(), None).unwrap_err();
    assert!(without.starts_with("UNAVAILABLE"), "{without}");
    let foreign = grpcio(&address, pki.ca(), Some(&stranger)).unwrap_err();
    assert!(foreign.starts_with("UNAVAILABLE"), "{foreign}");

    // A gateway trusting the CA but with no certificate of its own is refused too.
    let anonymous = GatewayProcess::start(&["--client-tls-ca", path(pki.ca())]);
    let (_second, _) = tls_greeter(
        &anonymous,
        &server,
        &["--server-tls-client-ca", path(pki.ca())],
    );
    let (status, body) = say_hello(&anonymous, "x");
    assert_eq!(status, 503, "{body}");
}

/// The certificate a TLS server at `address` presents on a new connection.
fn served_certificate(address: &str, ca: &std::path::Path) -> Vec<u8> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tls = micro_core::tls::ClientTls::new(Some(ca.to_path_buf()), None);
    let stream = runtime
        .block_on(tls.connect(address, "the greeter"))
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn certificate_in(file: &std::path::Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn a_certificate_replaced_on_disk_is_served_to_new_connections_without_a_restart() {
    let pki = TestPki::new("rotate");
    let first = pki.issue("greeter", "first");
    let gateway = GatewayProcess::start(&["--client-tls-ca", path(pki.ca())]);
    let (_greeter, address) = tls_greeter(&gateway, &first, &[]);
    assert_eq!(
        served_certificate(&address, pki.ca()),
        certificate_in(&first.cert)
    );
    let before = certificate_in(&first.cert);

    // Rotate as a certificate manager does: write the new pair aside, rename over the old.
    let second = pki.issue("greeter-next", "second");
    std::fs::rename(&second.key, &first.key).unwrap();
    std::fs::rename(&second.cert, &first.cert).unwrap();
    let after = certificate_in(&first.cert);
    assert_ne!(before, after);
    assert_eq!(served_certificate(&address, pki.ca()), after);
    assert_eq!(grpcio(&address, pki.ca(), None), Ok("Hello Py".to_string()));
    let (status, _) = say_hello(&gateway, "again");
    assert_eq!(status, 200);
}
