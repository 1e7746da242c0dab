//! The embedded registry is not an open door, across real processes: with a token only its
//! holders register (a greeter with `MICRO_REGISTRY_TOKEN` does, and is callable through the
//! gateway); a client may refresh or deregister only the nodes it registered; and the gateway
//! refuses to serve its registry beyond loopback without TLS and a token or client
//! certificates, and with them serves it over TLS to the `remote` plugin (`https://`).
//!
//! Needs the binaries: `cargo build --workspace --bins` (or `-p micro-gateway -p micro-examples`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use micro_core::registry::{Node, Registry, Service};
use micro_core::{Options, Result};
use micro_remote::RemoteRegistry;
use micro_testkit::{
    EXPIRY, GatewayProcess, Issued, PROPAGATION, Process, SHORT_TTL_ARGS, TestPki, get, post, run,
    wait_until,
};

const TOKEN: &str = "registry-security-token-0123456789";
const TOKEN_ENV: (&str, &str) = ("MICRO_REGISTRY_TOKEN", TOKEN);
/// How long a process may take to start, or to refuse to (a cold, loaded machine included).
const STARTUP: Duration = Duration::from_secs(30);
/// A TTL long enough that nothing lapses during a test unless it is meant to.
const LONG_TTL: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// The service names `GET /` on the gateway lists.
fn listed(http: SocketAddr) -> Vec<String> {
    let response = get(http, "/");
    assert_eq!(response.status, 200, "GET /: {}", response.body);
    let mut names: Vec<String> = response.json()["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// The greeter's answer through the gateway, or the failure as text.
fn say_hello(http: SocketAddr, name: &str) -> std::result::Result<String, String> {
    let response = post(
        http,
        "/greeter/Greeter/SayHello",
        &format!("{{\"name\":\"{name}\"}}"),
    );
    if response.status != 200 {
        return Err(format!("{}: {}", response.status, response.body));
    }
    Ok(response.json()["message"]
        .as_str()
        .expect("message")
        .to_string())
}

/// A client of the registry at `address` with `token` (and the client TLS of `options`).
fn client(address: &str, token: Option<&str>, options: Options) -> Arc<dyn Registry> {
    let options = Options {
        registry_token: token.map(String::from),
        ..options
    };
    Arc::new(RemoteRegistry::from_options(address, &options).expect("registry client"))
}

fn service(name: &str, node: &str, address: &str) -> Service {
    Service {
        name: name.into(),
        version: "1".into(),
        nodes: vec![Node {
            id: node.into(),
            address: address.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The error of an attempt that must fail, checked to contain each of `needles`.
fn refused<T: std::fmt::Debug>(attempt: Result<T>, needles: &[&str]) -> String {
    let text = match attempt {
        Ok(value) => panic!("expected a refusal naming {needles:?}, got Ok({value:?})"),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(text.contains(needle), "names {needle:?}: {text}");
    }
    text
}

/// A greeter process registering at `registry` (`host:port` or `https://...`) with extra
/// environment `env`, with the short test TTL; waits for its startup line.
fn greeter(registry: &str, greeting: &str, env: &[(&str, &str)]) -> Process {
    let mut args = vec!["--registry-address", registry, "--greeting", greeting];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    let mut process = Process::start("greeter", &args, env, None);
    process.line_containing("listening on", STARTUP);
    process
}

#[test]
fn with_a_token_only_its_holders_register() {
    let rt = runtime();
    let _entered = rt.enter();
    let gateway = GatewayProcess::start_with_env(&[], &[TOKEN_ENV]);
    let registry = gateway.registry.to_string();
    let before = listed(gateway.http);
    let intruder = service("intruder", "intruder-1", "127.0.0.1:9");

    // Without the token, and with a wrong one: refused, for writes and reads alike.
    let anonymous = client(&registry, None, Options::default());
    refused(
        rt.block_on(anonymous.register(&intruder, LONG_TTL)),
        &[
            "Unauthenticated",
            "--registry-token",
            "MICRO_REGISTRY_TOKEN",
        ],
    );
    refused(
        rt.block_on(anonymous.list_services()),
        &["Unauthenticated", "--registry-token"],
    );
    match rt.block_on(anonymous.watch(None)) {
        Ok(_) => panic!("a watch without the token was accepted"),
        Err(e) => assert!(e.to_string().contains("--registry-token"), "{e}"),
    }
    let wrong = client(
        &registry,
        Some("not-the-registry-token-0123"),
        Options::default(),
    );
    refused(
        rt.block_on(wrong.register(&intruder, LONG_TTL)),
        &["Unauthenticated", "not the registry's", "--registry-token"],
    );
    refused(
        rt.block_on(wrong.deregister(&intruder)),
        &["Unauthenticated"],
    );
    // The gateway reads its registry directly: a stored registration would show at once.
    assert_eq!(
        listed(gateway.http),
        before,
        "the gateway's routes are unchanged"
    );
    assert_eq!(get(gateway.http, "/intruder").status, 404);

    // A greeter without the token keeps failing to register, saying why, and is not routed.
    let mut stranger = Process::start(
        "greeter",
        &[
            "--registry-address",
            registry.as_str(),
            "--greeting",
            "Stranger",
        ],
        &[],
        None,
    );
    stranger.line_containing("listening on", STARTUP);
    wait_until(PROPAGATION, "the refusal in the greeter's log", || {
        stranger.stderr().contains("--registry-token")
    });
    assert!(!listed(gateway.http).contains(&"greeter".to_string()));
    drop(stranger);

    // With the token (from MICRO_REGISTRY_TOKEN), a greeter registers and is callable.
    let _greeter = greeter(&registry, "Hello", &[TOKEN_ENV]);
    wait_until(
        PROPAGATION,
        "the greeter callable through the gateway",
        || say_hello(gateway.http, "Alice").as_deref() == Ok("Hello Alice"),
    );
    // And a client with the token reads and writes.
    let holder = client(&registry, Some(TOKEN), Options::default());
    let names: Vec<String> = rt
        .block_on(holder.list_services())
        .expect("list with the token")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.contains(&"greeter".to_string()), "{names:?}");
}

#[test]
fn a_client_cannot_deregister_or_overwrite_a_node_it_did_not_register() {
    let rt = runtime();
    let _entered = rt.enter();
    let gateway = GatewayProcess::start_with_env(&[], &[TOKEN_ENV]);
    let registry = gateway.registry.to_string();
    let owner = client(&registry, Some(TOKEN), Options::default());
    let other = client(&registry, Some(TOKEN), Options::default());
    let addresses = |name: &str| -> Vec<String> {
        rt.block_on(owner.get_service(name))
            .expect("get service")
            .into_iter()
            .flat_map(|s| s.nodes)
            .map(|n| n.address)
            .collect()
    };

    // A node registered by one client...
    let mine = service("owned", "owned-1", "127.0.0.1:1001");
    rt.block_on(owner.register(&mine, LONG_TTL))
        .expect("the owner registers");
    // ...the other can neither deregister nor overwrite.
    refused(
        rt.block_on(other.deregister(&mine)),
        &["PermissionDenied", "owned-1", "another client"],
    );
    let hijack = service("owned", "owned-1", "127.0.0.1:6666");
    refused(
        rt.block_on(other.register(&hijack, LONG_TTL)),
        &["PermissionDenied", "owned-1"],
    );
    assert_eq!(addresses("owned"), ["127.0.0.1:1001"], "untouched");
    // A request with one foreign node among its own is refused whole.
    let mut mixed = service("owned", "other-1", "127.0.0.1:1002");
    mixed.nodes.push(hijack.nodes[0].clone());
    refused(
        rt.block_on(other.register(&mixed, LONG_TTL)),
        &["PermissionDenied", "owned-1"],
    );
    assert_eq!(
        addresses("owned"),
        ["127.0.0.1:1001"],
        "nothing of it stored"
    );

    // The owner refreshes and deregisters; then the id is free for anyone.
    rt.block_on(owner.register(&mine, LONG_TTL))
        .expect("the owner refreshes");
    rt.block_on(owner.deregister(&mine))
        .expect("the owner deregisters");
    assert!(addresses("owned").is_empty());
    rt.block_on(other.register(&hijack, LONG_TTL))
        .expect("a deregistered id is free");
    assert_eq!(addresses("owned"), ["127.0.0.1:6666"]);
    refused(
        rt.block_on(owner.deregister(&mine)),
        &["PermissionDenied", "owned-1"],
    );
    rt.block_on(other.deregister(&hijack))
        .expect("its new owner deregisters");

    // A registration that lapses frees its id too.
    let lapsing = service("lapsing", "lapsing-1", "127.0.0.1:1003");
    rt.block_on(owner.register(&lapsing, Duration::from_secs(1)))
        .expect("register with a short TTL");
    wait_until(EXPIRY, "the unrefreshed node lapses", || {
        addresses("lapsing").is_empty()
    });
    rt.block_on(other.register(&lapsing, LONG_TTL))
        .expect("a lapsed id is free");
    rt.block_on(other.deregister(&lapsing)).expect("deregister");

    // A greeter process's node: another client can neither remove nor redirect it.
    let _greeter = greeter(&registry, "Hello", &[TOKEN_ENV]);
    wait_until(PROPAGATION, "the greeter callable", || {
        say_hello(gateway.http, "Bob").is_ok()
    });
    let registered = rt
        .block_on(other.get_service("greeter"))
        .expect("get greeter")
        .remove(0);
    let node = registered.nodes[0].clone();
    refused(
        rt.block_on(other.deregister(&registered)),
        &["PermissionDenied", node.id.as_str()],
    );
    let mut redirected = registered.clone();
    redirected.nodes[0].address = "127.0.0.1:6666".into();
    refused(
        rt.block_on(other.register(&redirected, LONG_TTL)),
        &["PermissionDenied", node.id.as_str()],
    );
    assert_eq!(addresses("greeter"), [node.address]);
    assert_eq!(say_hello(gateway.http, "Bob").as_deref(), Ok("Hello Bob"));
}

/// Runs `micro-gateway` with `args` (the parent's `MICRO_*` removed) and `env`, expecting it to
/// refuse to start: returns its stderr.
fn refuses_to_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let finished = run("micro-gateway", args, env, "", STARTUP);
    assert_eq!(
        finished.code,
        Some(2),
        "micro-gateway {args:?} must refuse to start; stdout: {}; stderr: {}",
        finished.stdout,
        finished.stderr
    );
    finished.stderr
}

/// Starts `micro-gateway` with `args` and `env` and returns it with its HTTP address and the
/// port its registry is served on (from its startup line).
fn gateway_process(args: &[&str], env: &[(&str, &str)]) -> (Process, SocketAddr, u16) {
    let mut process = Process::start("micro-gateway", args, env, None);
    let line = process.line_containing("listening on", STARTUP);
    let http = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP address in {line:?}"));
    let served = line
        .split("served on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no registry address in {line:?}"));
    let port: String = served
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(|c: char| c.is_whitespace() || c == ')')
        .next()
        .and_then(|address| address.rsplit_once(':'))
        .map(|(_, port)| port.to_string())
        .unwrap_or_default();
    let port = port
        .parse()
        .unwrap_or_else(|e| panic!("no registry port in {line:?}: {e}"));
    (process, http, port)
}

fn path(issued: &std::path::Path) -> &str {
    issued.to_str().expect("UTF-8 path")
}

#[test]
fn beyond_loopback_the_registry_needs_tls_and_a_token_or_client_certificates() {
    let pki = TestPki::new("registry-security");
    let server: Issued = pki.issue("registry", "registry");
    let (cert, key) = (path(&server.cert), path(&server.key));
    let bare = ["--address", "127.0.0.1:0", "--registry-listen", "0.0.0.0:0"];
    let with_tls = [
        &bare[..],
        &["--server-tls-cert", cert, "--server-tls-key", key],
    ]
    .concat();

    // Neither TLS nor a token; a token without TLS; TLS without a token.
    let stderr = refuses_to_start(&bare, &[]);
    for needle in [
        "0.0.0.0",
        "not a loopback address",
        "neither TLS nor a token",
        "--server-tls-cert",
        "--server-tls-key",
        "--registry-token",
        "--server-tls-client-ca",
    ] {
        assert!(stderr.contains(needle), "names {needle:?}: {stderr}");
    }
    let stderr = refuses_to_start(&bare, &[TOKEN_ENV]);
    assert!(stderr.contains("no TLS"), "{stderr}");
    let stderr = refuses_to_start(&with_tls, &[]);
    assert!(
        stderr.contains("neither a token nor client certificates"),
        "{stderr}"
    );

    // TLS and a token: it starts, and serves its registry over TLS.
    let (_gateway, http, port) = gateway_process(&with_tls, &[TOKEN_ENV]);
    let https = format!("https://127.0.0.1:{port}");
    let trusting = Options {
        client_tls_ca: Some(pki.ca().to_path_buf()),
        ..Options::default()
    };
    let rt = runtime();
    let _entered = rt.enter();
    let secured = service("secured", "secured-1", "127.0.0.1:1004");
    rt.block_on(client(&https, Some(TOKEN), trusting.clone()).register(&secured, LONG_TTL))
        .expect("register over TLS with the token");
    assert!(listed(http).contains(&"secured".to_string()));
    // Over TLS, the token is still required.
    refused(
        rt.block_on(client(&https, None, trusting.clone()).list_services()),
        &["Unauthenticated", "--registry-token"],
    );
    // A client that cannot verify the server says which option would fix it.
    refused(
        rt.block_on(client(&https, Some(TOKEN), Options::default()).list_services()),
        &["--client-tls-ca"],
    );
    // Plaintext to the TLS registry does not get through.
    refused(
        rt.block_on(
            client(
                &format!("127.0.0.1:{port}"),
                Some(TOKEN),
                Options::default(),
            )
            .list_services(),
        ),
        &["https://"],
    );

    // A greeter registering over TLS with the token (all from its environment) is callable.
    let ca = path(pki.ca()).to_string();
    let _greeter = greeter(
        &https,
        "Secure",
        &[TOKEN_ENV, ("MICRO_CLIENT_TLS_CA", ca.as_str())],
    );
    wait_until(PROPAGATION, "the TLS-registered greeter callable", || {
        say_hello(http, "Carol").as_deref() == Ok("Secure Carol")
    });
}

#[test]
fn beyond_loopback_client_certificates_stand_in_for_the_token() {
    let pki = TestPki::new("registry-mtls");
    let server = pki.issue("registry", "registry");
    let member = pki.issue("member", "member");
    let outsider_pki = TestPki::new("registry-outsider");
    let outsider = outsider_pki.issue("outsider", "outsider");
    let args = [
        "--address",
        "127.0.0.1:0",
        "--registry-listen",
        "0.0.0.0:0",
        "--server-tls-cert",
        path(&server.cert),
        "--server-tls-key",
        path(&server.key),
        "--server-tls-client-ca",
        path(pki.ca()),
    ];
    let (_gateway, http, port) = gateway_process(&args, &[]);
    let https = format!("https://127.0.0.1:{port}");
    let with_identity = |identity: Option<&Issued>| Options {
        client_tls_ca: Some(pki.ca().to_path_buf()),
        client_tls_cert: identity.map(|i| i.cert.clone()),
        client_tls_key: identity.map(|i| i.key.clone()),
        ..Options::default()
    };
    let rt = runtime();
    let _entered = rt.enter();
    let mutual = service("mutual", "mutual-1", "127.0.0.1:1005");
    rt.block_on(client(&https, None, with_identity(Some(&member))).register(&mutual, LONG_TTL))
        .expect("a client with a certificate of the CA registers");
    assert!(listed(http).contains(&"mutual".to_string()));
    for (who, options) in [
        ("no certificate", with_identity(None)),
        ("another CA's certificate", with_identity(Some(&outsider))),
    ] {
        let stranger = service("stranger", "stranger-1", "127.0.0.1:1006");
        let attempt = rt.block_on(client(&https, None, options).register(&stranger, LONG_TTL));
        assert!(attempt.is_err(), "{who}: registered");
    }
    assert!(!listed(http).contains(&"stranger".to_string()));
}
