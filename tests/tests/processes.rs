//! End to end across real processes: `micro-gateway` with its embedded registry and `greeter`
//! processes using the `remote` registry. Load spreading, a SIGKILLed node, a late node,
//! graceful SIGTERM, and option precedence read back from the binary's startup line.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use micro_testkit::{
    EXPIRY, GatewayProcess, PROPAGATION, Process, SLACK, binary, get, post, wait_until,
};

fn node_addresses(gateway: &GatewayProcess) -> Vec<String> {
    let response = get(gateway.http, "/greeter");
    if response.status != 200 {
        return Vec::new();
    }
    let json = response.json();
    json["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["address"].as_str().map(String::from))
        .collect()
}

fn say_hello(gateway: &GatewayProcess, name: &str) -> String {
    let response = post(
        gateway.http,
        "/greeter/Greeter/SayHello",
        &format!("{{\"name\":\"{name}\"}}"),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["message"]
        .as_str()
        .expect("message")
        .to_string()
}

#[test]
fn gateway_spreads_calls_survives_a_killed_node_and_routes_a_new_one() {
    let gateway = GatewayProcess::start(&[]);
    let a = gateway.greeter(&["--greeting", "A"]);
    let mut b = gateway.greeter(&["--greeting", "B"]);
    wait_until(PROPAGATION, "both greeters registered", || {
        node_addresses(&gateway).len() == 2
    });

    let replies: Vec<String> = (0..20).map(|_| say_hello(&gateway, "x")).collect();
    let distinct: HashSet<&str> = replies.iter().map(String::as_str).collect();
    assert_eq!(
        distinct,
        HashSet::from(["A x", "B x"]),
        "calls spread over both nodes"
    );
    let from_a = replies.iter().filter(|r| *r == "A x").count();
    assert!(
        (9..=11).contains(&from_a),
        "round-robin: {from_a} of 20 from A"
    );

    let b_address = b.listening_address();
    b.kill();
    let killed = Instant::now();
    wait_until(SLACK, "the killed greeter's port is closed", || {
        std::net::TcpStream::connect(&b_address).is_err()
    });
    // "Later" calls: a call racing the crash may reach the dying node and is then not retried
    // (it may have run); once the gateway has seen the connection close, every call succeeds.
    wait_until(SLACK, "a call after the kill succeeds", || {
        post(
            gateway.http,
            "/greeter/Greeter/SayHello",
            "{\"name\":\"y\"}",
        )
        .status
            == 200
    });
    for _ in 0..10 {
        assert_eq!(
            say_hello(&gateway, "y"),
            "A y",
            "calls after the kill still succeed"
        );
    }
    // The dead node must be gone from GET /greeter within its TTL (and slack) of the kill.
    wait_until(
        EXPIRY.saturating_sub(killed.elapsed()),
        "the dead node leaves GET /greeter",
        || node_addresses(&gateway).len() == 1,
    );

    let c = gateway.greeter(&["--greeting", "C"]);
    let routable = wait_until(PROPAGATION, "a greeter started later is routable", || {
        say_hello(&gateway, "z") == "C z"
    });
    eprintln!("the late greeter was routable after {routable:?}");
    drop((a, c));
}

#[test]
fn sigterm_finishes_the_slow_call_deregisters_and_exits_zero() {
    let gateway = GatewayProcess::start(&["--timeout", "20s"]);
    let mut slow = gateway.greeter(&[
        "--reply-delay",
        "2s",
        "--register-ttl",
        "30s",
        "--register-interval",
        "10s",
    ]);
    wait_until(PROPAGATION, "the slow greeter registered", || {
        node_addresses(&gateway).len() == 1
    });
    let http = gateway.http;
    let call =
        std::thread::spawn(move || post(http, "/greeter/Greeter/SayHello", "{\"name\":\"slow\"}"));
    // Let the call reach the handler (it takes 2 s there) before the signal.
    std::thread::sleep(Duration::from_millis(500));
    slow.terminate();
    wait_until(
        PROPAGATION,
        "deregistered right after SIGTERM (long before the 30 s TTL)",
        || node_addresses(&gateway).is_empty(),
    );
    let response = call.join().expect("call thread");
    assert_eq!(
        response.status, 200,
        "the in-flight call completes: {}",
        response.body
    );
    assert_eq!(response.json()["message"], "Hello slow");
    let status = slow.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status:?}; stderr: {}",
        slow.stderr()
    );
}

/// The name the greeter registered, from its startup line.
fn started_name(env: &[(&str, &str)], args: &[&str], dir: &std::path::Path) -> String {
    let mut all = vec!["--registry", "memory"];
    all.extend_from_slice(args);
    let mut greeter = Process::start("greeter", &all, env, Some(dir));
    let line = greeter.line_containing("listening on", Duration::from_secs(20));
    line.split("service ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("service name in the startup line")
        .to_string()
}

#[test]
fn precedence_code_file_env_flag() {
    let dir = std::env::temp_dir().join(format!("micro-precedence-{}", std::process::id()));
    let empty = dir.join("empty");
    let with_file = dir.join("with-file");
    std::fs::create_dir_all(&empty).expect("dir");
    std::fs::create_dir_all(&with_file).expect("dir");
    std::fs::write(
        with_file.join("micro.toml"),
        "server-name = \"from-file\"\n",
    )
    .expect("micro.toml");
    let env = [("MICRO_SERVER_NAME", "from-env")];
    let flag = ["--server-name", "from-cli"];

    assert_eq!(started_name(&[], &[], &empty), "greeter", "code alone");
    assert_eq!(
        started_name(&[], &[], &with_file),
        "from-file",
        "file beats code"
    );
    assert_eq!(
        started_name(&env, &[], &with_file),
        "from-env",
        "env beats file"
    );
    assert_eq!(
        started_name(&env, &flag, &with_file),
        "from-cli",
        "flag beats env and file"
    );
    assert_eq!(
        started_name(&[], &flag, &with_file),
        "from-cli",
        "flag beats file"
    );
    assert_eq!(
        started_name(&env, &[], &empty),
        "from-env",
        "env beats code"
    );
    let named = dir.join("named.toml");
    std::fs::write(&named, "server-name = \"from-named-file\"\n").expect("named file");
    assert_eq!(
        started_name(
            &[("MICRO_CONFIG_FILE", named.to_str().expect("utf-8 path"))],
            &[],
            &empty
        ),
        "from-named-file",
        "MICRO_CONFIG_FILE picks the file"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn bad_options_are_named_with_their_layer_and_value() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(binary("greeter"));
        command.args(args).env_remove("MICRO_SERVER_NAME");
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().expect("run greeter");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--register-ttl", "abc"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--register-ttl") && stderr.contains("abc"),
        "{stderr}"
    );
    let (code, stderr) = run(&[], &[("MICRO_REGISTER_TTL", "abc")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("MICRO_REGISTER_TTL") && stderr.contains("abc"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--registry", "zookeeper"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("zookeeper") && stderr.contains("memory") && stderr.contains("remote"),
        "lists the installed plugins: {stderr}"
    );
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let gateway = GatewayProcess::start(&[]);
    let greeter = gateway.greeter(&[]);
    for (name, log) in [
        ("micro-gateway", gateway.process.stderr()),
        ("greeter", greeter.stderr()),
    ] {
        assert!(log.contains("INFO"), "{name} logged its start: {log}");
        assert!(
            !log.contains('\u{1b}'),
            "{name}'s log, written to a file, has escape codes: {log:?}"
        );
    }
}
