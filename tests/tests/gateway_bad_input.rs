//! Bad input at the gateway, table-driven: every request gets its documented status and the
//! JSON error shape; afterwards the gateway is healthy and never panicked. Also the per-client
//! rate limit: a burst of 100 from one client gets 429 + Retry-After for the excess.

use std::sync::Arc;
use std::time::Instant;

use micro_testkit::{
    GatewayProcess, HttpResponse, PROPAGATION, get, raw_http, start_greeter_v2, wait_until,
};

/// Registers the v2 greeter (SayHello, SayGoodbye) with a gateway process's embedded registry.
fn greeter_for(
    gateway: &GatewayProcess,
    runtime: &tokio::runtime::Runtime,
) -> micro_core::server::RunningServer {
    runtime.block_on(async {
        let registry = Arc::new(
            micro_remote::RemoteRegistry::new(&gateway.registry.to_string())
                .expect("remote registry"),
        );
        start_greeter_v2(registry).await
    })
}

fn request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_post(path: &str, body: &str) -> Vec<u8> {
    request("POST", path, Some("application/json"), body.as_bytes())
}

#[test]
fn forty_bad_requests_get_their_status_and_the_json_shape() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let gateway = GatewayProcess::start(&["--max-body", "64KiB"]);
    let server = greeter_for(&gateway, &runtime);
    wait_until(PROPAGATION, "the greeter is listed by the gateway", || {
        get(gateway.http, "/greeter").status == 200
    });

    let deep = format!("{{\"name\":{}\"x\"{}}}", "[".repeat(70), "]".repeat(70));
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(70 * 1024));
    let long_path = format!("/greeter/{}", "a".repeat(3000));
    let long_header = format!(
        "POST /greeter/SayHello HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        "v".repeat(40 * 1024)
    );
    let mut invalid_utf8 = br#"{"name":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0x80]);
    invalid_utf8.extend_from_slice(br#""}"#);

    let hello = "/greeter/Greeter/SayHello";
    let bye = "/greeter/Greeter/SayGoodbye";
    let table: Vec<(&str, Vec<u8>, u16)> = vec![
        ("truncated JSON", json_post(hello, r#"{"name":"#), 400),
        ("unquoted key", json_post(hello, r#"{name:"x"}"#), 400),
        ("single quotes", json_post(hello, "{'name':'x'}"), 400),
        (
            "trailing garbage",
            json_post(hello, r#"{"name":"x"} extra"#),
            400,
        ),
        ("array body", json_post(hello, "[1,2]"), 400),
        ("string body", json_post(hello, r#""hello""#), 400),
        ("number body", json_post(hello, "42"), 400),
        (
            "wrong type: number for string",
            json_post(hello, r#"{"name":5}"#),
            400,
        ),
        (
            "wrong type: object for string",
            json_post(hello, r#"{"name":{"a":1}}"#),
            400,
        ),
        (
            "wrong type: array for string",
            json_post(hello, r#"{"name":["a"]}"#),
            400,
        ),
        ("unknown field", json_post(hello, r#"{"nam":"x"}"#), 400),
        (
            "duplicate key",
            json_post(hello, r#"{"name":"a","name":"b"}"#),
            400,
        ),
        (
            "/rpc request with a duplicate key",
            json_post(
                "/rpc",
                r#"{"service":"greeter","endpoint":"Greeter.SayHello","request":{"name":"a","name":"b"}}"#,
            ),
            400,
        ),
        (
            "int32 out of range",
            json_post(bye, r#"{"times":3000000000}"#),
            400,
        ),
        (
            "fraction for int32",
            json_post(bye, r#"{"times":1.5}"#),
            400,
        ),
        ("text for int32", json_post(bye, r#"{"times":"abc"}"#), 400),
        ("bool for int32", json_post(bye, r#"{"times":true}"#), 400),
        (
            "int64 out of range",
            json_post(bye, r#"{"requestId":"99999999999999999999"}"#),
            400,
        ),
        ("nesting deeper than 64", json_post(hello, &deep), 400),
        (
            "invalid UTF-8",
            request("POST", hello, Some("application/json"), &invalid_utf8),
            400,
        ),
        ("body over the limit", json_post(hello, &huge), 413),
        (
            "text/plain",
            request("POST", hello, Some("text/plain"), br#"{"name":"x"}"#),
            415,
        ),
        (
            "xml",
            request("POST", hello, Some("application/xml"), b"<name>x</name>"),
            415,
        ),
        (
            "multipart",
            request(
                "POST",
                hello,
                Some("multipart/form-data; boundary=x"),
                b"--x--",
            ),
            415,
        ),
        (
            "unknown service",
            json_post("/nope/Greeter/SayHello", "{}"),
            404,
        ),
        (
            "unknown method",
            json_post("/greeter/Greeter/SayBye", "{}"),
            404,
        ),
        (
            "unknown gRPC service",
            json_post("/greeter/Farewell/SayHello", "{}"),
            404,
        ),
        (
            "too many segments",
            json_post("/greeter/Greeter/SayHello/extra", "{}"),
            404,
        ),
        ("empty segment", json_post("/greeter//SayHello", "{}"), 400),
        ("dot segment", json_post("/greeter/./SayHello", "{}"), 400),
        (
            "dot-dot segment",
            json_post("/greeter/../SayHello", "{}"),
            400,
        ),
        (
            "encoded slash",
            json_post("/greeter%2FGreeter/SayHello", "{}"),
            400,
        ),
        (
            "encoded space",
            json_post("/greeter/Say%20Hello", "{}"),
            400,
        ),
        ("very long path", json_post(&long_path, "{}"), 414),
        ("very long header", long_header.into_bytes(), 431),
        (
            "PUT",
            request("PUT", hello, Some("application/json"), b"{}"),
            405,
        ),
        ("DELETE", request("DELETE", hello, None, b""), 405),
        (
            "PATCH",
            request("PATCH", hello, Some("application/json"), b"{}"),
            405,
        ),
        ("POST to a describe path", json_post("/greeter", "{}"), 405),
        ("POST /health", json_post("/health", "{}"), 405),
        (
            "GET with a bad number",
            request("GET", "/greeter/SayGoodbye?times=abc", None, b""),
            400,
        ),
        (
            "GET with an unknown field",
            request("GET", "/greeter/SayGoodbye?colour=red", None, b""),
            400,
        ),
        (
            "GET with a bad escape",
            request("GET", "/greeter/SayGoodbye?name=%zz", None, b""),
            400,
        ),
        ("/rpc malformed", json_post("/rpc", "{"), 400),
        (
            "/rpc without endpoint",
            json_post("/rpc", r#"{"service":"greeter"}"#),
            400,
        ),
        (
            "/rpc unknown service",
            json_post(
                "/rpc",
                r#"{"service":"nope","endpoint":"Greeter.SayHello"}"#,
            ),
            404,
        ),
        ("/rpc with GET", request("GET", "/rpc", None, b""), 405),
        (
            "handler INVALID_ARGUMENT",
            json_post(bye, r#"{"times":-1}"#),
            400,
        ),
        (
            "empty body is the empty message",
            request("POST", hello, None, b""),
            200,
        ),
        (
            "curl's default content type",
            request(
                "POST",
                hello,
                Some("application/x-www-form-urlencoded"),
                br#"{"name":"curl"}"#,
            ),
            200,
        ),
        (
            "a +json content type",
            request(
                "POST",
                hello,
                Some("application/merge-patch+json; charset=utf-8"),
                br#"{"name":"x"}"#,
            ),
            200,
        ),
        (
            "proto field names accepted",
            json_post(bye, r#"{"request_id":"5"}"#),
            200,
        ),
    ];
    assert!(table.len() >= 40);
    let mut failures = Vec::new();
    for (what, raw, want) in &table {
        let response: HttpResponse = raw_http(gateway.http, raw);
        if response.status != *want {
            failures.push(format!(
                "{what}: got {} want {want}: {}",
                response.status, response.body
            ));
            continue;
        }
        let json = response.json();
        if *want >= 400 {
            let shaped = json["code"].as_i64().is_some_and(|c| c > 0)
                && json["message"].as_str().is_some_and(|m| !m.is_empty())
                && json["details"].is_array();
            if !shaped {
                failures.push(format!("{what}: not the error shape: {}", response.body));
            }
            if *want == 405 && response.header("allow").is_none() {
                failures.push(format!("{what}: 405 without Allow"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests wrong:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );

    // One meaning per body: the duplicate is named, not silently resolved to the last copy.
    let duplicate = raw_http(
        gateway.http,
        &json_post(hello, r#"{"name":"a","name":"b"}"#),
    );
    assert!(
        duplicate.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("key `name` is given twice")),
        "{}",
        duplicate.body
    );

    let health = get(gateway.http, "/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["registry"]["reachable"], true);
    assert!(
        !gateway.process.stderr().contains("panicked"),
        "the gateway panicked: {}",
        gateway.process.stderr()
    );
    runtime.block_on(server.stop()).expect("stop");
}

#[test]
fn per_client_rate_limit_answers_429_with_retry_after() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // A slow refill (5/s) next to the burst (10): the burst of 100 leaves 90 over the limit
    // unless answering it takes 18 s, so a loaded machine cannot hide the limit.
    const RATE: f64 = 5.0;
    const BURST: usize = 10;
    const CALLS: usize = 100;
    let gateway = GatewayProcess::start(&["--rate-limit", "5", "--rate-burst", "10"]);
    let server = greeter_for(&gateway, &runtime);
    // Registered (Server::start awaits the first registration); asked of the registry itself,
    // not over HTTP, so the client's burst stays whole.
    let registered = runtime.block_on(async {
        let registry =
            micro_remote::RemoteRegistry::new(&gateway.registry.to_string()).expect("registry");
        micro_core::Registry::get_service(&registry, "greeter")
            .await
            .expect("get_service")
    });
    assert_eq!(
        registered.len(),
        1,
        "the greeter is registered before the burst"
    );
    let started = Instant::now();
    let http = gateway.http;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            std::thread::spawn(move || {
                raw_http(
                    http,
                    &json_post(
                        "/greeter/Greeter/SayHello",
                        &format!("{{\"name\":\"n{i}\"}}"),
                    ),
                )
            })
        })
        .collect();
    let responses: Vec<HttpResponse> = calls
        .into_iter()
        .map(|c| c.join().expect("thread"))
        .collect();
    let elapsed = started.elapsed();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&HttpResponse> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok + limited.len(),
        CALLS,
        "only 200 and 429: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // The burst passes, plus at most what the rate refills while the calls are answered; the
    // rest is refused. (Saturating: a refill beyond the calls would allow them all.)
    let refill = (elapsed.as_secs_f64() * RATE).ceil() as usize;
    assert!(
        ok >= BURST && ok <= BURST + refill,
        "{ok} passed in {elapsed:?}: want the burst of {BURST} plus at most {refill} refilled"
    );
    let excess = CALLS.saturating_sub(BURST + refill);
    assert!(
        excess > 0 && limited.len() >= excess,
        "{} of {CALLS} refused in {elapsed:?}: want at least {excess}",
        limited.len()
    );
    for response in &limited {
        let retry = response
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            retry.is_some_and(|s| s >= 1),
            "429 without Retry-After: {:?}",
            response.headers
        );
        assert_eq!(response.json()["code"], 8);
    }
    runtime.block_on(server.stop()).expect("stop");
}
