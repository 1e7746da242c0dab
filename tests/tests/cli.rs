//! The `micro` command as a user runs it: a process against real services, registered in the
//! gateway's embedded registry or in etcd, over RabbitMQ and etcd for the broker, store and
//! config; a Python grpcio server stands for a service this framework did not build.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use micro_core::Registry;
use micro_core::registry::{Node, Service};
use micro_testkit::{
    Finished, GatewayProcess, KillOnDrop, PROPAGATION, Process, SHORT_TTL_ARGS, run, wait_until,
};
use serde_json::{Value, json};

/// Longest any one `micro` run may take here.
const RUN: Duration = Duration::from_secs(60);

fn micro(args: &[&str], env: &[(&str, &str)]) -> Finished {
    run("micro", args, env, "", RUN)
}

fn micro_with_stdin(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Finished {
    run("micro", args, env, stdin, RUN)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// The environment that points `micro` at a gateway's embedded registry.
fn at(gateway: &GatewayProcess) -> [(&'static str, String); 1] {
    [("MICRO_REGISTRY_ADDRESS", gateway.registry.to_string())]
}

fn env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A greeter process on etcd under a unique name.
fn etcd_greeter(name: &str, greeting: &str) -> Process {
    let mut args = vec![
        "--registry",
        "etcd",
        "--server-name",
        name,
        "--greeting",
        greeting,
    ];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    let mut process = Process::start("greeter", &args, &[], None);
    process.listening_address();
    process
}

fn node_count(listed: &Value, name: &str) -> u64 {
    listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["nodes"].as_u64())
        .unwrap_or(0)
}

/// A gateway and one greeter registered with it, once `micro services` lists the greeter.
fn gateway_with_greeter() -> (GatewayProcess, Process) {
    let gateway = GatewayProcess::start(&[]);
    let greeter = gateway.greeter(&[]);
    let vars = at(&gateway);
    let vars = env(&vars);
    wait_until(PROPAGATION, "greeter listed by micro services", || {
        let listed = json_of(micro(&["services", "-o", "json"], &vars).success());
        node_count(&listed, "greeter") == 1
    });
    (gateway, greeter)
}

#[test]
fn services_and_describe_read_the_embedded_registry_and_etcd() {
    let gateway = GatewayProcess::start(&[]);
    let _greeter = gateway.greeter(&["--server-version", "1.2.0"]);
    let vars = at(&gateway);
    let vars = env(&vars);
    wait_until(PROPAGATION, "greeter listed by micro services", || {
        node_count(
            &json_of(micro(&["services", "-o", "json"], &vars).success()),
            "greeter",
        ) == 1
    });
    let listed = json_of(micro(&["services", "-o", "json"], &vars).success());
    assert_eq!(
        listed,
        json!([{"name": "greeter", "versions": ["1.2.0"], "nodes": 1}])
    );
    let table = micro(&["services"], &vars);
    let lines: Vec<&str> = table.success().lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["SERVICE", "VERSIONS", "NODES"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["greeter", "1.2.0", "1"]
    );
    assert!(
        !table.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    let described = json_of(micro(&["describe", "greeter", "-o", "json"], &vars).success());
    assert_eq!(described["nodes"][0]["status"], "SERVING", "{described}");
    assert_eq!(described["nodes"][0]["version"], "1.2.0");
    let endpoint = |name: &str| {
        described["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no endpoint {name} in {described}"))
    };
    let say_hello = endpoint("Greeter.SayHello");
    assert_eq!(say_hello["method"], "greeter.v1.Greeter/SayHello");
    assert_eq!(say_hello["streaming"], "unary");
    assert_eq!(say_hello["request"]["type"], "greeter.v1.HelloRequest");
    assert_eq!(say_hello["request"]["template"], json!({"name": ""}));
    assert_eq!(
        say_hello["request"]["fields"],
        json!([{"name": "name", "type": "string"}])
    );
    assert_eq!(say_hello["response"]["template"], json!({"message": ""}));
    let stream = endpoint("Greeter.SayHelloStream");
    assert_eq!(stream["streaming"], "server");
    assert_eq!(
        stream["request"]["template"],
        json!({"name": "", "count": 0, "intervalMs": 0})
    );
    assert_eq!(endpoint("Greeter.Chat")["streaming"], "bidi");

    let text = micro(&["describe", "greeter"], &vars);
    let text = text.success();
    for expected in [
        "Greeter.SayHello",
        "request greeter.v1.HelloRequest  {\"name\":\"\"}",
        "name: string",
        "Greeter.SayHelloStream  (server streaming)",
        "SERVING",
    ] {
        assert!(text.contains(expected), "`{expected}` in:\n{text}");
    }

    // The same through etcd, with no gateway involved.
    let name = unique("cli-etcd-greeter");
    let _on_etcd = etcd_greeter(&name, "Hi");
    let etcd = [("MICRO_REGISTRY", "etcd")];
    wait_until(PROPAGATION, "etcd greeter listed", || {
        node_count(
            &json_of(micro(&["services", "-o", "json"], &etcd).success()),
            &name,
        ) == 1
    });
    let described = json_of(micro(&["describe", &name, "-o", "json"], &etcd).success());
    assert_eq!(described["nodes"][0]["status"], "SERVING");
    assert_eq!(described["name"], name.as_str());
}

#[test]
fn call_through_etcd_with_no_gateway_from_arguments_files_stdin_and_one_node() {
    let name = unique("cli-call");
    let _a = etcd_greeter(&name, "Hi");
    let _b = etcd_greeter(&name, "Yo");
    let etcd = [("MICRO_REGISTRY", "etcd")];
    let nodes = || -> Vec<Value> {
        let described = json_of(micro(&["describe", &name, "-o", "json"], &etcd).success());
        described["nodes"].as_array().cloned().unwrap_or_default()
    };
    wait_until(PROPAGATION, "both greeters registered in etcd", || {
        nodes().len() == 2
    });

    let reply = micro(
        &[
            "call",
            &name,
            "Greeter.SayHello",
            r#"{"name":"x"}"#,
            "-o",
            "json",
        ],
        &etcd,
    );
    let message = json_of(reply.success())["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message == "Hi x" || message == "Yo x", "{message}");
    // Pretty JSON for people.
    let pretty = micro(
        &[
            "call",
            &name,
            "greeter.v1.Greeter/say_hello",
            r#"{"name":"x"}"#,
        ],
        &etcd,
    );
    assert!(
        pretty.success().contains("\n  \"message\": "),
        "{}",
        pretty.stdout
    );

    let piped = micro_with_stdin(
        &["call", &name, "SayHello", "-o", "json"],
        &etcd,
        r#"{"name":"stdin"}"#,
    );
    assert!(piped.success().contains(" stdin\"}"), "{}", piped.stdout);
    let file = std::env::temp_dir().join(format!("{}.json", unique("cli-request")));
    std::fs::write(&file, r#"{"name":"file"}"#).expect("request file");
    let from_file = micro(
        &[
            "call",
            &name,
            "SayHello",
            "-d",
            &format!("@{}", file.display()),
            "-o",
            "json",
        ],
        &etcd,
    );
    let _ = std::fs::remove_file(&file);
    assert!(
        from_file.success().contains(" file\"}"),
        "{}",
        from_file.stdout
    );

    // --node by id and by address: every call lands on that node.
    for node in nodes() {
        for key in ["id", "address"] {
            let pinned = node[key].as_str().expect("node field").to_string();
            let greetings: Vec<String> = (0..4)
                .map(|_| {
                    let out = micro(
                        &[
                            "call",
                            &name,
                            "SayHello",
                            r#"{"name":"n"}"#,
                            "--node",
                            &pinned,
                            "-o",
                            "json",
                        ],
                        &etcd,
                    );
                    json_of(out.success())["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            assert!(
                greetings.windows(2).all(|w| w[0] == w[1]),
                "one node answers: {greetings:?}"
            );
        }
    }

    // Metadata and deadline: a deadline shorter than the reply takes is DEADLINE_EXCEEDED, exit 1.
    let slow_name = unique("cli-slow");
    let mut args = vec![
        "--registry",
        "etcd",
        "--server-name",
        &slow_name,
        "--reply-delay",
        "3s",
    ];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    let mut slow = Process::start("greeter", &args, &[], None);
    slow.listening_address();
    let late = micro(
        &[
            "call",
            &slow_name,
            "SayHello",
            "{}",
            "--timeout",
            "300ms",
            "-H",
            "x-trace:abc",
        ],
        &etcd,
    );
    assert!(
        late.failure(1).contains("DEADLINE_EXCEEDED"),
        "{}",
        late.stderr
    );
}

#[test]
fn bad_input_is_a_one_line_error_with_the_documented_exit_code() {
    let (gateway, _greeter) = gateway_with_greeter();
    let vars = at(&gateway);
    let vars = env(&vars);
    let cases: [(&[&str], i32, &str); 10] = [
        (
            &["call", "greeter", "SayHello", r#"{"name":"a","name":"b"}"#],
            2,
            "key `name` is given twice",
        ),
        (
            &["call", "nope", "X"],
            2,
            "unknown service `nope` in registry `remote`; registered: greeter",
        ),
        (
            &["call", "greeter", "SayHelo", "{}"],
            2,
            "did you mean `Greeter.SayHello`?",
        ),
        (
            &["call", "greeter", "Greeter.Launch", "{}"],
            2,
            "`greeter` has no method `Launch`; it has: Greeter.SayHello",
        ),
        (
            &["call", "greeter", "SayHello", r#"{"nam":"x"}"#],
            2,
            "greeter.v1.HelloRequest: unrecognized field name 'nam'",
        ),
        (
            &["call", "greeter", "SayHello", r#"{"name":42}"#],
            2,
            "field `name`",
        ),
        (
            &["call", "greeter", "SayHello", r#"{"name":"#],
            2,
            "malformed JSON",
        ),
        (
            &["call", "greeter", "SayHello", "{}", "--node", "10.9.9.9:1"],
            2,
            "`greeter` has no node `10.9.9.9:1`",
        ),
        (
            &[
                "call",
                "greeter",
                "SayHello",
                "-d",
                "@/nonexistent/req.json",
            ],
            2,
            "cannot read the request file `/nonexistent/req.json`",
        ),
        (&["describe", "nope"], 2, "unknown service `nope`"),
    ];
    for (args, code, expected) in cases {
        let out = micro(args, &vars);
        let line = out.failure(code);
        assert!(
            line.starts_with("micro: ") && line.contains(expected),
            "{args:?}: {line}"
        );
    }
    // Usage errors found by the parser: exit 2 as well.
    for args in [
        &["call", "greeter"][..],
        &["services", "-o", "yaml"],
        &["--no-such-flag", "services"],
        &["call", "greeter", "SayHello", "-H", "no-colon"],
    ] {
        let out = micro(args, &vars);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A registry that cannot be reached is a failure (1), naming it.
    let down = micro(&["services", "--registry-address", "127.0.0.1:1"], &[]);
    assert!(
        down.failure(1).contains("registry `remote`"),
        "{}",
        down.stderr
    );
    // Completions are a script for the shell asked for.
    let bash = micro(&["completions", "bash"], &[]);
    assert!(
        bash.success().contains("complete -F _micro"),
        "{}",
        bash.stdout
    );
}

#[test]
fn a_server_stream_prints_each_message_as_it_arrives() {
    let (gateway, _greeter) = gateway_with_greeter();
    let registry = gateway.registry.to_string();
    let mut stream = Process::start(
        "micro",
        &[
            "--registry-address",
            &registry,
            "call",
            "greeter",
            "Greeter.SayHelloStream",
            r#"{"name":"s","count":3,"intervalMs":800}"#,
        ],
        &[],
        None,
    );
    let deadline = Duration::from_secs(30);
    let first = stream.line_containing("Hello s 1", deadline);
    let first_at = Instant::now();
    stream.line_containing("Hello s 2", deadline);
    stream.line_containing("Hello s 3", deadline);
    let gap = first_at.elapsed();
    // The service waits 800 ms between messages: lines printed as they arrive are at least two
    // intervals apart; buffered to the end they would come together.
    assert!(
        gap >= Duration::from_millis(1400),
        "lines arrived together ({gap:?}): buffered"
    );
    assert_eq!(json_of(&first), json!({"message": "Hello s 1"}));
    assert!(stream.wait(deadline).success(), "{}", stream.stderr());
}

#[test]
fn a_bidi_stream_is_fed_from_stdin_line_by_line() {
    let (gateway, _greeter) = gateway_with_greeter();
    let registry = gateway.registry.to_string();
    let mut chat = Command::new(micro_testkit::binary("micro"))
        .args([
            "--registry-address",
            &registry,
            "call",
            "greeter",
            "Greeter.Chat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start micro call Chat");
    let mut stdin = chat.stdin.take().expect("stdin");
    let (lines, replies) = std::sync::mpsc::channel();
    let stdout = chat.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    for name in ["Ann", "Bo", "Cy"] {
        writeln!(stdin, r#"{{"name":"{name}"}}"#).expect("write a line");
        stdin.flush().expect("flush");
        // Each reply comes back before the next line is written: both directions stream.
        let reply = replies
            .recv_timeout(Duration::from_secs(20))
            .expect("a reply per line");
        assert_eq!(json_of(&reply), json!({"message": format!("Hello {name}")}));
    }
    drop(stdin);
    let status = chat.wait().expect("micro exits when stdin ends");
    assert!(status.success());

    // A line that does not fit the message ends the call with exit 2, naming the line.
    let bad = micro_with_stdin(
        &["--registry-address", &registry, "call", "greeter", "Chat"],
        &[],
        "{\"name\":\"ok\"}\n{\"name\":7}\n",
    );
    assert!(bad.failure(2).contains("stdin line 2"), "{}", bad.stderr);
}

#[test]
fn calls_a_python_grpc_server_this_framework_did_not_build() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/greeter_server.py");
    let mut python = KillOnDrop(
        Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (scripts/setup installs grpcio)"),
    );
    let mut ready = String::new();
    BufReader::new(python.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("the server's first line");
    let address = ready
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {ready:?}"))
        .to_string();
    let gateway = GatewayProcess::start(&[]);
    let registry = gateway.registry.to_string();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let service = Service {
        name: "hello".into(),
        version: "py".into(),
        nodes: vec![Node {
            id: "hello-py-1".into(),
            address: address.clone(),
            metadata: Default::default(),
        }],
        ..Default::default()
    };
    runtime.block_on(async {
        let remote = micro_remote::RemoteRegistry::new(&registry).expect("registry client");
        remote
            .register(&service, Duration::from_secs(60))
            .await
            .expect("register the python node");
    });
    let vars = [("MICRO_REGISTRY_ADDRESS", registry.as_str())];
    let reply = micro(
        &[
            "call",
            "hello",
            "Hello.Greet",
            r#"{"name":"x"}"#,
            "-o",
            "json",
        ],
        &vars,
    );
    assert_eq!(json_of(reply.success()), json!({"message": "Hi x"}));
    let counted = micro(
        &["call", "hello", "hello.v1.Hello/Count", r#"{"count":3}"#],
        &vars,
    );
    let lines: Vec<Value> = counted.success().lines().map(json_of).collect();
    assert_eq!(lines, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    let described = json_of(micro(&["describe", "hello", "-o", "json"], &vars).success());
    assert_eq!(described["nodes"][0]["address"], address.as_str());
}

#[test]
fn publish_is_seen_by_subscribe_over_rabbitmq() {
    let topic = unique("cli.topic");
    let rabbit = [("MICRO_BROKER", "rabbitmq")];
    let mut subscriber = Process::start(
        "micro",
        &["subscribe", &topic, "--count", "2", "-o", "json"],
        &rabbit,
        None,
    );
    wait_until(Duration::from_secs(30), "the subscriber subscribed", || {
        subscriber.stderr().contains("subscribed to")
    });
    micro(
        &["publish", &topic, r#"{"n":1}"#, "-H", "kind:test"],
        &rabbit,
    )
    .success();
    micro_with_stdin(&["publish", &topic], &rabbit, r#"{"n":2}"#).success();
    let first = json_of(&subscriber.line_containing("\"n\":1", Duration::from_secs(30)));
    assert_eq!(first["body"], json!({"n": 1}));
    assert_eq!(first["header"]["kind"], "test");
    subscriber.line_containing("\"n\":2", Duration::from_secs(30));
    assert!(
        subscriber.wait(Duration::from_secs(30)).success(),
        "exits after --count messages"
    );

    let not_json = micro(&["publish", &topic, "{oops"], &rabbit);
    assert!(
        not_json.failure(2).contains("pass --raw"),
        "{}",
        not_json.stderr
    );
}

#[test]
fn store_and_config_over_etcd() {
    let store = [("MICRO_STORE", "etcd")];
    let key = unique("cli-key");
    micro(&["store", "write", &key, "v1"], &store).success();
    micro(
        &["store", "write", &format!("{key}-b"), "v2", "--ttl", "1h"],
        &store,
    )
    .success();
    assert_eq!(
        micro(&["store", "read", &key], &store).success().trim(),
        "v1"
    );
    let both = json_of(micro(&["store", "read", &key, "--prefix", "-o", "json"], &store).success());
    assert_eq!(both.as_array().map(Vec::len), Some(2), "{both}");
    let listed = micro(&["store", "list", &key], &store);
    assert_eq!(listed.success().lines().count(), 2, "{}", listed.stdout);
    micro(&["store", "delete", &key], &store).success();
    let gone = micro(&["store", "read", &key], &store);
    assert!(
        gone.failure(1).contains(&format!("no record `{key}`")),
        "{}",
        gone.stderr
    );
    micro(&["store", "delete", &format!("{key}-b")], &store).success();

    let config = [("MICRO_CONFIG", "etcd")];
    let path = format!("{}.greeting", unique("cli-config"));
    micro(&["config", "set", &path, "Howdy"], &config).success();
    assert_eq!(
        json_of(micro(&["config", "get", &path, "-o", "json"], &config).success()),
        json!("Howdy")
    );
    let mut watch = Process::start(
        "micro",
        &["config", "watch", &path, "--count", "2"],
        &config,
        None,
    );
    watch.line_containing("\"Howdy\"", Duration::from_secs(30));
    micro(&["config", "set", &path, r#"{"text":"Hey"}"#], &config).success();
    watch.line_containing(r#"{"text":"Hey"}"#, Duration::from_secs(30));
    assert!(watch.wait(Duration::from_secs(30)).success());
    micro(&["config", "delete", &path], &config).success();
    let gone = micro(&["config", "get", &path], &config);
    assert!(gone.failure(1).contains("no value at"), "{}", gone.stderr);
    let bad = micro(&["config", "set", &path, "{\"a\":"], &config);
    assert!(bad.failure(2).contains("malformed JSON"), "{}", bad.stderr);
}
