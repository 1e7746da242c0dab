//! CPU profiles of live processes, as a user takes them: a greeter started with
//! `--debug-address` serves `/debug/pprof/profile` while it answers SayHello calls under load,
//! and the profile decodes as google/pprof's `perftools.profiles.Profile` with a descriptor
//! compiled here from `tests/proto/profile.proto` (not the structs that encoded it), with
//! samples whose functions include the handler's. Also: the SVG flamegraph, one profile at a
//! time, bad `seconds`, the gateway's own debug server, and the loopback-only default.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use micro_testkit::greeter::v1::HelloRequest;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::{GatewayProcess, Process, free_port, wait_until};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

const STARTUP: Duration = Duration::from_secs(30);

/// An HTTP answer with its body as bytes (a profile is gzip, not text).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`; the debug server answers with a
/// `content-length`, so the body is what follows the head.
fn fetch(address: SocketAddr, path: &str) -> Answer {
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// SayHello calls made in a loop by 8 tasks over one channel, until dropped.
struct Load {
    calls: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(greeter: &str) -> Load {
        let calls = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("http://{greeter}");
        let (c, f, s) = (calls.clone(), failures.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("load runtime");
            runtime.block_on(async move {
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .expect("greeter url")
                    .connect_lazy();
                let mut tasks = Vec::new();
                for task in 0..8 {
                    let mut client = GreeterClient::new(channel.clone());
                    let (calls, failures, stop) = (c.clone(), f.clone(), s.clone());
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let request = HelloRequest {
                                name: format!("load-{task}"),
                            };
                            match client.say_hello(request).await {
                                Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        Load {
            calls,
            failures,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `perftools.profiles.Profile` from the test's own copy of profile.proto.
fn profile_descriptor() -> prost_reflect::MessageDescriptor {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let files = protox::compile(["profile.proto"], [dir]).expect("compile profile.proto");
    DescriptorPool::from_file_descriptor_set(files)
        .expect("profile.proto descriptors")
        .get_message_by_name("perftools.profiles.Profile")
        .expect("perftools.profiles.Profile in profile.proto")
}

fn list(message: &DynamicMessage, field: &str) -> Vec<Value> {
    match message.get_field_by_name(field).as_deref() {
        Some(Value::List(items)) => items.clone(),
        other => panic!("{field} is not a repeated field: {other:?}"),
    }
}

fn int(message: &DynamicMessage, field: &str) -> i64 {
    match message.get_field_by_name(field).as_deref() {
        Some(Value::I64(n)) => *n,
        Some(Value::U64(n)) => i64::try_from(*n).expect("a field that fits i64"),
        other => panic!("{field} is not an integer: {other:?}"),
    }
}

fn as_message(value: &Value) -> &DynamicMessage {
    value
        .as_message()
        .unwrap_or_else(|| panic!("not a message: {value:?}"))
}

/// How many times the process logged the start of a profile.
fn profiles_started(process: &Process) -> usize {
    process.stderr().matches("taking a CPU profile").count()
}

/// A greeter registered with `gateway`, serving profiles on a free loopback port: the process,
/// its gRPC address and its debug address.
fn profiled_greeter(gateway: &GatewayProcess) -> (Process, String, SocketAddr) {
    let debug: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let debug_flag = debug.to_string();
    let mut greeter = gateway.greeter(&["--debug-address", &debug_flag]);
    let line = greeter.line_containing("listening on", STARTUP);
    let address = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (greeter, address, debug)
}

#[test]
fn a_loaded_greeter_serves_a_cpu_profile_and_a_flamegraph() {
    let gateway = GatewayProcess::start(&[]);
    let (greeter, address, debug) = profiled_greeter(&gateway);
    assert!(
        greeter.stderr().contains(&debug.to_string()),
        "the debug server logs its address; stderr: {}",
        greeter.stderr()
    );

    let load = Load::start(&address);
    wait_until(STARTUP, "the load's calls are answered", || {
        load.calls.load(Ordering::Relaxed) >= 100
    });

    let answer = fetch(debug, "/debug/pprof/profile?seconds=2");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        answer.body.get(..2),
        Some(&[0x1f, 0x8b][..]),
        "a gzip stream, as Go's pprof serves"
    );
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(answer.body.as_slice())
        .read_to_end(&mut raw)
        .expect("the profile gunzips");
    let profile =
        DynamicMessage::decode(profile_descriptor(), raw.as_slice()).expect("a pprof Profile");
    assert_eq!(
        profile.descriptor().full_name(),
        "perftools.profiles.Profile"
    );

    let strings: Vec<String> = list(&profile, "string_table")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect();
    assert_eq!(
        strings.first().map(String::as_str),
        Some(""),
        "string 0 is \"\""
    );
    let string = |index: i64| -> &str {
        strings
            .get(usize::try_from(index).expect("a non-negative index"))
            .unwrap_or_else(|| panic!("string {index} out of the table"))
    };
    let sample_types: Vec<(String, String)> = list(&profile, "sample_type")
        .iter()
        .map(as_message)
        .map(|t| {
            (
                string(int(t, "type")).to_string(),
                string(int(t, "unit")).to_string(),
            )
        })
        .collect();
    assert_eq!(
        sample_types,
        [
            ("samples".to_string(), "count".to_string()),
            ("cpu".to_string(), "nanoseconds".to_string())
        ]
    );
    assert!(int(&profile, "period") > 0, "a sampling period");
    assert!(
        int(&profile, "duration_nanos") >= 1_000_000_000,
        "about 2 s long"
    );

    let samples = list(&profile, "sample");
    assert!(!samples.is_empty(), "a loaded process yields samples");
    let location_ids: std::collections::HashSet<i64> = list(&profile, "location")
        .iter()
        .map(|l| int(as_message(l), "id"))
        .collect();
    for sample in samples.iter().map(as_message) {
        let stack = list(sample, "location_id");
        assert!(!stack.is_empty(), "a sample has a stack");
        for id in &stack {
            let id = i64::try_from(id.as_u64().expect("a location id")).expect("an id");
            assert!(
                location_ids.contains(&id),
                "sample refers to missing location {id}"
            );
        }
        let values = list(sample, "value");
        assert_eq!(values.len(), 2, "one value per sample type");
        assert!(values.iter().all(|v| v.as_i64().is_some_and(|n| n > 0)));
    }
    let names: Vec<&str> = list(&profile, "function")
        .iter()
        .map(|f| string(int(as_message(f), "name")))
        .collect();
    let handler: Vec<&str> = names
        .iter()
        .copied()
        // The handler's own future, or the generated service around it (`SayHelloSvc<Greeter>`:
        // the symbolizer names inlined async frames by their generic arguments).
        .filter(|n| n.contains("say_hello") || n.contains("SayHelloSvc"))
        .collect();
    assert!(
        !handler.is_empty(),
        "no frame of the SayHello handler among {} sampled functions, e.g. {:?}",
        names.len(),
        names.iter().take(40).collect::<Vec<_>>()
    );
    assert!(
        !names.iter().any(|n| n.starts_with("backtrace::")),
        "the sampler's own unwinding frames are left out"
    );
    println!(
        "profile: {} samples, {} functions, handler frames e.g. {:?}",
        samples.len(),
        names.len(),
        handler.iter().take(3).collect::<Vec<_>>()
    );

    // The flamegraph, and a second profile asked for while it is taken: refused at once.
    let started = profiles_started(&greeter);
    let svg = std::thread::spawn(move || fetch(debug, "/debug/pprof/flamegraph?seconds=2"));
    wait_until(STARTUP, "the flamegraph's profile starts", || {
        profiles_started(&greeter) > started
    });
    let refused = fetch(debug, "/debug/pprof/profile?seconds=1");
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("already"), "{}", refused.text());
    let svg = svg.join().expect("the flamegraph request");
    assert_eq!(svg.status, 200, "{}", svg.text());
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.text().contains("<svg"), "{}", svg.text());

    let (calls, failures) = (
        load.calls.load(Ordering::Relaxed),
        load.failures.load(Ordering::Relaxed),
    );
    drop(load);
    println!("load: {calls} calls answered while profiled, {failures} failed");
    assert_eq!(failures, 0, "calls failed while the process was profiled");
}

#[test]
fn bad_seconds_are_refused_naming_the_parameter() {
    let gateway = GatewayProcess::start(&[]);
    let (_greeter, _address, debug) = profiled_greeter(&gateway);
    for path in [
        "/debug/pprof/profile?seconds=abc",
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/profile?seconds=301",
        "/debug/pprof/flamegraph?seconds=-1",
    ] {
        let answer = fetch(debug, path);
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        assert!(
            answer.text().contains("`seconds`"),
            "{path}: {}",
            answer.text()
        );
    }
    let answer = fetch(debug, "/debug/pprof/profile?seconds=1&format=json");
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("`format`"), "{}", answer.text());
    let answer = fetch(debug, "/debug/pprof/heap");
    assert_eq!(answer.status, 404, "{}", answer.text());
}

#[test]
fn the_gateway_serves_profiles_too() {
    let debug: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let debug_flag = debug.to_string();
    let _gateway = GatewayProcess::start(&["--debug-address", &debug_flag]);
    let answer = fetch(debug, "/debug/pprof/profile?seconds=1&format=svg");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("<svg"), "{}", answer.text());
}

#[test]
fn a_public_debug_address_needs_debug_remote() {
    let port = free_port().to_string();
    let public = format!("0.0.0.0:{port}");
    let mut refused = Process::start(
        "greeter",
        &["--registry", "memory", "--debug-address", &public],
        &[],
        None,
    );
    let status = refused.wait(STARTUP);
    assert!(
        !status.success(),
        "started on {public} without --debug-remote"
    );
    let stderr = refused.stderr();
    assert!(
        stderr.contains("--debug-remote") && stderr.contains(&public),
        "the error names the address and --debug-remote: {stderr}"
    );

    // The control: with --debug-remote it starts, and serves on every interface.
    let mut allowed = Process::start(
        "greeter",
        &[
            "--registry",
            "memory",
            "--debug-address",
            &public,
            "--debug-remote",
        ],
        &[],
        None,
    );
    allowed.line_containing("listening on", STARTUP);
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let answer = fetch(local, "/debug/pprof");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.text().contains("/debug/pprof/profile"),
        "{}",
        answer.text()
    );
}
