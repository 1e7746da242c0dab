//! Streaming methods through the gateway (issue 11, part 1): server streams as NDJSON and as
//! Server-Sent Events, client and bidi streams over a WebSocket, each reply written as it
//! arrives; errors before and after the first message; a client that goes away cancels the
//! service's stream; the deadline bounds the whole stream; auth refuses a WebSocket before the
//! upgrade; the metrics count streams by endpoint and status.
//!
//! Most tests run an in-process gateway over a `MemoryRegistry` and the testkit greeter, whose
//! streams report how they ended (`Greeter::stream_ends`), so a test sees the service notice a
//! cancelled call. SSE and WebSocket clients are standard Python ones (httpx-sse, websockets:
//! tests/python/{sse,ws}_client.py). The auth test runs real processes (`micro-gateway --auth jwt`,
//! `greeter`, the `auth` example): build the binaries first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_core::registry::Registry;
use micro_core::server::RunningServer;
use micro_gateway::{Gateway, GatewayOptions, RunningGateway};
use micro_memory::MemoryRegistry;
use micro_testkit::{
    Ended, GatewayProcess, Greeter, PROPAGATION, Process, SHORT_TTL_ARGS, SLACK, StreamEnd, get,
    greeter_server, post, raw_http, test_options, wait_until,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const STREAM: &str = "/greeter/Greeter/SayHelloStream";
const CHAT: &str = "/greeter/Greeter/Chat";

/// A gateway and a greeter in process, and the greeter's reports of how its streams ended.
struct Setup {
    runtime: tokio::runtime::Runtime,
    gateway: Option<RunningGateway>,
    server: Option<RunningServer>,
    ends: mpsc::UnboundedReceiver<StreamEnd>,
}

impl Setup {
    /// A gateway with `extra` flags in front of a greeter saying "Hello".
    fn start(extra: &[&str]) -> Setup {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let (reports, ends) = mpsc::unbounded_channel();
        let mut args = vec![
            "gateway",
            "--address",
            "127.0.0.1:0",
            "--registry-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let options = GatewayOptions::load_from(args).expect("gateway options");
        let (gateway, server) = runtime.block_on(async {
            let gateway = Gateway::new(options, registry.clone())
                .start()
                .await
                .expect("start gateway");
            let handler = Greeter {
                stream_ends: Some(reports),
                ..Greeter::default()
            };
            let server = greeter_server(test_options("greeter"), registry, handler)
                .start()
                .await
                .expect("start greeter");
            (gateway, server)
        });
        Setup {
            runtime,
            gateway: Some(gateway),
            server: Some(server),
            ends,
        }
    }

    fn http(&self) -> SocketAddr {
        self.gateway.as_ref().expect("running").http_address()
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http())
    }

    /// The next stream end the greeter reports, within `deadline`.
    fn stream_end(&mut self, deadline: Duration) -> StreamEnd {
        let ends = &mut self.ends;
        self.runtime
            .block_on(async { tokio::time::timeout(deadline, ends.recv()).await })
            .unwrap_or_else(|_| panic!("the greeter reported no stream end within {deadline:?}"))
            .expect("the greeter is running")
    }

    /// Waits until `/metrics` has every line of `lines`.
    fn metrics_show(&self, lines: &[String]) {
        wait_until(SLACK, "the metrics count the streams", || {
            let text = get(self.http(), "/metrics").body;
            lines.iter().all(|line| text.contains(line.as_str()))
        });
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let (gateway, server) = (self.gateway.take(), self.server.take());
        self.runtime.block_on(async {
            if let Some(gateway) = gateway {
                let _ = gateway.stop().await;
            }
            if let Some(server) = server {
                let _ = server.stop().await;
            }
        });
    }
}

/// A response read off a raw socket as it arrives: the head at once, the (chunked) body line
/// by line.
struct Streamed {
    socket: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    /// Received and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked and not yet returned as lines.
    body: Vec<u8>,
    chunked: bool,
    ended: bool,
}

impl Streamed {
    /// Sends `request` and reads the response head.
    fn open(address: SocketAddr, request: &str) -> Streamed {
        let mut socket = TcpStream::connect(address).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        socket.write_all(request.as_bytes()).expect("send");
        let mut streamed = Streamed {
            socket,
            status: 0,
            headers: Vec::new(),
            raw: Vec::new(),
            body: Vec::new(),
            chunked: false,
            ended: false,
        };
        let end = loop {
            if let Some(i) = find(&streamed.raw, b"\r\n\r\n") {
                break i;
            }
            assert!(streamed.fill(), "the connection closed before the head");
        };
        let head = String::from_utf8_lossy(&streamed.raw[..end]).into_owned();
        streamed.raw.drain(..end + 4);
        let mut lines = head.lines();
        streamed.status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        streamed.headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        streamed.chunked = streamed
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        streamed
    }

    /// A POST of `body` to `path` with `extra` header lines.
    fn post(address: SocketAddr, path: &str, body: &str, extra: &str) -> Streamed {
        Streamed::open(
            address,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more from the socket; false at its end.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.socket.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Moves the complete chunks received into `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(line_end) = find(&self.raw, b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 2 + size + 2);
            if size == 0 {
                self.ended = true;
                return;
            }
        }
    }

    /// The next line of the body as soon as it is complete; `None` at the body's end.
    fn next_line(&mut self) -> Option<String> {
        loop {
            self.dechunk();
            if let Some(i) = self.body.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.body.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.ended || !self.fill() {
                return None;
            }
        }
    }

    /// The rest of the body, as lines.
    fn lines(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_line()).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Runs `tests/python/<script>` to its end (within a minute) and parses its JSON lines.
fn python(script: &str, args: &[&str]) -> Vec<Value> {
    let run = micro_testkit::python(script, args, Duration::from_secs(60));
    assert_eq!(
        run.code,
        Some(0),
        "{script} failed: {}\n{}",
        run.stderr,
        run.stdout
    );
    run.stdout.lines().map(parse).collect()
}

fn messages(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| parse(l)["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `micro_gateway_requests_total` and `micro_gateway_streams_total` lines of an endpoint.
fn counted(endpoint: &str, status: u16, code: &str, n: u32) -> Vec<String> {
    vec![
        format!(
            "micro_gateway_requests_total{{service=\"greeter\",endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
        ),
        format!(
            "micro_gateway_streams_total{{service=\"greeter\",endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
        ),
    ]
}

#[test]
fn ndjson_lines_arrive_one_by_one() {
    let mut setup = Setup::start(&[]);
    let interval = Duration::from_millis(1500);
    let started = Instant::now();
    let mut response = Streamed::post(
        setup.http(),
        STREAM,
        r#"{"name":"Ann","count":3,"intervalMs":1500}"#,
        "",
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/x-ndjson")
    );
    let first = response.next_line().expect("a first line");
    let first_at = started.elapsed();
    assert_eq!(parse(&first), json!({"message": "Hello Ann 1"}));
    let second = response.next_line().expect("a second line");
    let second_at = started.elapsed();
    let rest = response.lines();
    let ended_at = started.elapsed();
    assert_eq!(
        messages(&[second, rest[0].clone()]),
        ["Hello Ann 2", "Hello Ann 3"]
    );
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(
        second_at - first_at >= interval / 2,
        "the first line came on its own, before the service sent the second: {first_at:?} then {second_at:?}"
    );
    assert!(
        ended_at - first_at >= interval,
        "the first line was read {first_at:?} in, long before the stream ended at {ended_at:?}"
    );
    assert_eq!(setup.stream_end(SLACK).how, Ended::Completed);

    // GET maps the query onto the request, as for unary methods.
    let response = get(
        setup.http(),
        "/greeter/greeter/say-hello-stream?name=Bo&count=2",
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let lines: Vec<String> = response.body.lines().map(String::from).collect();
    assert_eq!(messages(&lines), ["Hello Bo 1", "Hello Bo 2"]);
    setup.metrics_show(&counted("Greeter.SayHelloStream", 200, "OK", 2));
}

#[test]
fn errors_before_the_first_message_are_plain_and_after_it_end_the_stream() {
    let mut setup = Setup::start(&[]);
    // Refused before any message: the ordinary error response.
    let response = post(setup.http(), STREAM, r#"{"name":"Ann","count":20000}"#);
    assert_eq!(response.status, 400, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let error = response.json();
    assert_eq!(
        (error["code"].clone(), error["details"].clone()),
        (json!(3), json!([]))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("count"),
        "{error}"
    );
    // Failing as its first item is still before the first message.
    let response = post(setup.http(), STREAM, r#"{"name":"fail-after-0","count":3}"#);
    assert_eq!(
        (response.status, response.json()["code"].clone()),
        (409, json!(10))
    );
    assert_eq!(setup.stream_end(SLACK).how, Ended::Failed);

    // Failing after two messages: they, then one last error line.
    let mut response = Streamed::post(
        setup.http(),
        STREAM,
        r#"{"name":"fail-after-2","count":5}"#,
        "",
    );
    assert_eq!(response.status, 200);
    let lines = response.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        messages(&lines[..2]),
        ["Hello fail-after-2 1", "Hello fail-after-2 2"]
    );
    let last = parse(&lines[2]);
    assert_eq!(last["error"]["code"], 10, "{last}");
    assert_eq!(last["error"]["details"], json!([]), "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("failing after 2"),
        "{last}"
    );
    let end = setup.stream_end(SLACK);
    assert_eq!((end.how, end.sent), (Ended::Failed, 2));
    setup.metrics_show(&[
        counted("Greeter.SayHelloStream", 400, "INVALID_ARGUMENT", 1).remove(0),
        "code=\"ABORTED\"} 2".to_string(),
        "micro_gateway_stream_messages_total{service=\"greeter\",endpoint=\"Greeter.SayHelloStream\",direction=\"out\"} 2".to_string(),
    ]);
}

#[test]
fn sse_events_read_by_a_standard_client() {
    let mut setup = Setup::start(&[]);
    let url = format!("http://{}{STREAM}", setup.http());
    let events = python(
        "sse_client.py",
        &[&url, r#"{"name":"Eve","count":3,"intervalMs":400}"#],
    );
    assert_eq!(
        events[0],
        json!({"status": 200, "content_type": "text/event-stream"})
    );
    let data: Vec<Value> = events[1..4].iter().map(|e| e["data"].clone()).collect();
    assert_eq!(
        data,
        [
            json!({"message": "Hello Eve 1"}),
            json!({"message": "Hello Eve 2"}),
            json!({"message": "Hello Eve 3"})
        ]
    );
    assert!(events[1..4].iter().all(|e| e["event"] == "message"));
    let (first, last) = (events[1]["at"].as_f64(), events[3]["at"].as_f64());
    assert!(
        last.zip(first).is_some_and(|(l, f)| l - f >= 0.4),
        "each event as it was sent: {events:?}"
    );
    assert_eq!(events[4]["end"], true, "{events:?}");
    assert_eq!(setup.stream_end(SLACK).how, Ended::Completed);

    // An error after the first event is an `error` event in the gateway's error shape.
    let events = python(
        "sse_client.py",
        &[&url, r#"{"name":"fail-after-1","count":3}"#],
    );
    assert_eq!(
        events[1]["data"],
        json!({"message": "Hello fail-after-1 1"})
    );
    assert_eq!(events[2]["event"], "error", "{events:?}");
    assert_eq!(events[2]["data"]["code"], 10, "{events:?}");
    assert_eq!(events[2]["data"]["details"], json!([]), "{events:?}");
    assert_eq!(events[3]["end"], true, "{events:?}");

    // Before the first event: the plain error response.
    let events = python("sse_client.py", &[&url, r#"{"count":20000}"#]);
    assert_eq!(events[0]["status"], 400, "{events:?}");
    assert_eq!(events[0]["body"]["code"], 3, "{events:?}");
}

#[test]
fn a_client_that_goes_away_cancels_the_service_stream() {
    let mut setup = Setup::start(&[]);
    // A minute between replies: only a cancellation that reaches the service ends it in time.
    let mut response = Streamed::post(
        setup.http(),
        STREAM,
        r#"{"name":"gone","count":3,"intervalMs":60000}"#,
        "",
    );
    assert_eq!(
        response.next_line().as_deref(),
        Some(r#"{"message":"Hello gone 1"}"#)
    );
    let left = Instant::now();
    drop(response);
    let end = setup.stream_end(SLACK);
    assert_eq!(
        (end.name.as_str(), end.sent, end.how),
        ("gone", 1, Ended::ClientGone),
        "{end:?}"
    );
    eprintln!(
        "the service saw the NDJSON client leave after {:?}",
        left.elapsed()
    );
    setup.metrics_show(&counted("Greeter.SayHelloStream", 200, "CANCELLED", 1));

    // The same over a WebSocket. (A server stream: tonic hands a service a cancelled request
    // stream as one that ended, so only the reply side shows a cancellation.)
    let mut socket = TcpStream::connect(setup.http()).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let path = format!("{STREAM}?name=gone-ws&count=3&intervalMs=60000");
    socket
        .write_all(upgrade_request(&path, "").as_bytes())
        .expect("handshake");
    let mut head = Vec::new();
    while find(&head, b"\r\n\r\n").is_none() {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).expect("the answer");
        head.extend_from_slice(&byte);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut reply = [0u8; 2];
    socket.read_exact(&mut reply).expect("a reply frame");
    let mut payload = vec![0u8; usize::from(reply[1] & 0x7f)];
    socket.read_exact(&mut payload).expect("its payload");
    assert_eq!(
        (reply[0], payload.as_slice()),
        (0x81, &br#"{"message":"Hello gone-ws 1"}"#[..])
    );
    let left = Instant::now();
    drop(socket);
    let end = setup.stream_end(SLACK);
    assert_eq!(
        (end.name.as_str(), end.sent, end.how),
        ("gone-ws", 1, Ended::ClientGone),
        "{end:?}"
    );
    eprintln!(
        "the service saw the WebSocket client leave after {:?}",
        left.elapsed()
    );
}

#[test]
fn the_deadline_bounds_the_whole_stream() {
    let mut setup = Setup::start(&["--timeout", "1s"]);
    let started = Instant::now();
    let mut response = Streamed::post(
        setup.http(),
        STREAM,
        r#"{"name":"slow","count":100,"intervalMs":300}"#,
        "",
    );
    let lines = response.lines();
    let last = parse(lines.last().expect("lines"));
    assert_eq!(last["error"]["code"], 4, "DEADLINE_EXCEEDED: {lines:?}");
    assert!(
        lines.len() >= 2 && lines.len() <= 6,
        "about 1 s of replies 300 ms apart: {lines:?}"
    );
    assert!(started.elapsed() < SLACK, "{:?}", started.elapsed());
    assert_eq!(
        setup.stream_end(SLACK).how,
        Ended::ClientGone,
        "the call is cancelled"
    );

    // A client's shorter grpc-timeout wins.
    let mut response = Streamed::post(
        setup.http(),
        STREAM,
        r#"{"name":"short","count":100,"intervalMs":400}"#,
        "grpc-timeout: 600m\r\n",
    );
    let lines = response.lines();
    assert!(
        lines.len() <= 3,
        "0.6 s of replies 400 ms apart (the gateway's 1 s would let a third through): {lines:?}"
    );
    assert_eq!(parse(lines.last().expect("lines"))["error"]["code"], 4);
    assert_eq!(setup.stream_end(SLACK).how, Ended::ClientGone);
}

#[test]
fn bidi_chat_over_a_websocket() {
    let mut setup = Setup::start(&[]);
    let events = python(
        "ws_client.py",
        &[
            &setup.ws(CHAT),
            r#"send:{"name":"Ann"}"#,
            r#"send:{"name":"Bo"}"#,
            r#"send:{"name":"Cy"}"#,
            "end",
        ],
    );
    let expected = [
        json!({"sent": r#"{"name":"Ann"}"#}),
        json!({"received": r#"{"message":"Hello Ann"}"#}),
        json!({"sent": r#"{"name":"Bo"}"#}),
        json!({"received": r#"{"message":"Hello Bo"}"#}),
        json!({"sent": r#"{"name":"Cy"}"#}),
        json!({"received": r#"{"message":"Hello Cy"}"#}),
        json!({"sent": ""}),
        json!({"closed": 1000, "reason": ""}),
    ];
    let without_time: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().map(|o| o.remove("at"));
            e
        })
        .collect();
    assert_eq!(
        without_time, expected,
        "each reply before the next message is sent, then a normal close after the end frame"
    );
    let end = setup.stream_end(SLACK);
    assert_eq!(
        (end.method, end.sent, end.how),
        ("Chat", 3, Ended::Completed)
    );
    setup.metrics_show(&[
        counted("Greeter.Chat", 101, "OK", 1).remove(0),
        counted("Greeter.Chat", 101, "OK", 1).remove(1),
        "micro_gateway_stream_messages_total{service=\"greeter\",endpoint=\"Greeter.Chat\",direction=\"in\"} 3".to_string(),
    ]);

    // A frame that does not fit the input message: 1007, naming the field.
    let events = python(
        "ws_client.py",
        &[
            &setup.ws(CHAT),
            r#"send:{"name":"Ann"}"#,
            r#"send:{"name":5}"#,
        ],
    );
    assert_eq!(events[1]["received"], r#"{"message":"Hello Ann"}"#);
    let error: Value = serde_json::from_str(events[3]["received"].as_str().unwrap_or("null"))
        .expect("the error frame");
    assert_eq!(error["error"]["code"], 3, "{events:?}");
    let close = &events[4];
    assert_eq!(close["closed"], 1007, "{events:?}");
    let reason: Value = serde_json::from_str(close["reason"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(reason["code"], 3);
    assert!(
        reason["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`name`"),
        "{reason}"
    );
    // The gateway resets the abandoned call; it never ends its request stream on its own, so
    // without the reset the service would wait for more requests for ever. (tonic hands a
    // service a reset request stream as one that ended.)
    let end = setup.stream_end(SLACK);
    assert_eq!((end.method, end.sent), ("Chat", 1), "{end:?}");
    setup.metrics_show(&[
        "micro_gateway_streams_total{service=\"greeter\",endpoint=\"Greeter.Chat\",code=\"INVALID_ARGUMENT\"} 1".to_string(),
    ]);
}

#[test]
fn server_streams_over_a_websocket_and_their_close_codes() {
    let mut setup = Setup::start(&[]);
    // The request in the query.
    let events = python(
        "ws_client.py",
        &[&setup.ws(&format!("{STREAM}?name=Di&count=2"))],
    );
    let frames: Vec<&Value> = events.iter().map(|e| &e["received"]).collect();
    assert_eq!(
        frames[..2],
        [r#"{"message":"Hello Di 1"}"#, r#"{"message":"Hello Di 2"}"#]
    );
    assert_eq!(events[2]["closed"], 1000, "{events:?}");
    // The request as the first frame.
    let events = python(
        "ws_client.py",
        &[&setup.ws(STREAM), r#"send:{"name":"Ed","count":1}"#],
    );
    assert_eq!(
        events[1]["received"], r#"{"message":"Hello Ed 1"}"#,
        "{events:?}"
    );
    assert_eq!(events[2]["closed"], 1000, "{events:?}");
    // A failed call closes with 4000 + its gRPC code, the reason {"code","message"}.
    let events = python(
        "ws_client.py",
        &[&setup.ws(&format!("{STREAM}?count=20000"))],
    );
    assert_eq!(events[1]["closed"], 4003, "{events:?}");
    let reason: Value =
        serde_json::from_str(events[1]["reason"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(reason["code"], 3);
    assert!(
        reason["message"]
            .as_str()
            .unwrap_or_default()
            .contains("count")
    );
    // A failure after a message: the message, the error frame, close 4010 (ABORTED).
    let events = python(
        "ws_client.py",
        &[&setup.ws(&format!("{STREAM}?name=fail-after-1&count=3"))],
    );
    assert_eq!(
        events[0]["received"],
        r#"{"message":"Hello fail-after-1 1"}"#
    );
    assert!(
        events[1]["received"]
            .as_str()
            .unwrap_or_default()
            .starts_with(r#"{"error":{"code":10"#),
        "{events:?}"
    );
    assert_eq!(events[2]["closed"], 4010, "{events:?}");
    let ends: Vec<Ended> = (0..3).map(|_| setup.stream_end(SLACK).how).collect();
    assert_eq!(
        ends,
        [Ended::Completed, Ended::Completed, Ended::Failed],
        "the refused call (count 20000) started no stream"
    );

    // Client and bidi streams need a WebSocket: 426 names it; a unary one refuses it.
    let response = post(setup.http(), CHAT, r#"{"name":"x"}"#);
    assert_eq!(response.status, 426, "{}", response.body);
    assert_eq!(response.header("upgrade"), Some("websocket"));
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("WebSocket")
    );
    let response = raw_http(
        setup.http(),
        upgrade_request(
            "/greeter/Greeter/SayHello",
            "Connection: upgrade, close\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("unary"), "{}", response.body);
}

/// A WebSocket handshake request for `path` with `extra` header lines.
fn upgrade_request(path: &str, extra: &str) -> String {
    let connection = if extra.to_ascii_lowercase().contains("connection:") {
        String::new()
    } else {
        "Connection: Upgrade\r\n".to_string()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n{connection}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// The `jwt` plugin's settings shared by the gateway and the `auth` example.
const ENV: [(&str, &str); 3] = micro_testkit::JWT_ENV;

/// Login is public; every greeter endpoint needs the scope `greeter` (alice has it, bob not).
const RULES: &str = r#"[
  {"id": "accounts", "scope": "", "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.*"}, "access": "grant", "priority": 10},
  {"id": "greeter", "scope": "greeter", "resource": {"kind": "service", "name": "greeter", "endpoint": "*"}, "access": "grant", "priority": 10}
]"#;

#[test]
fn auth_refuses_a_websocket_before_the_upgrade() {
    let dir = std::env::temp_dir().join(format!("micro-ws-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, RULES).expect("rules");
    let rules = rules.to_str().expect("utf-8 path");
    let gateway = GatewayProcess::start_with_env(&["--auth", "jwt", "--auth-rules", rules], &ENV);
    let http = gateway.http;
    let _greeter = gateway.greeter(&[]);
    let registry = gateway.registry.to_string();
    let mut args = vec!["--registry-address", registry.as_str(), "--rules", rules];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    let mut accounts = Process::start("auth", &args, &ENV, None);
    accounts.listening_address();
    let login = |user: &str, password: &str| {
        post(
            http,
            "/auth/Accounts/Login",
            &format!(r#"{{"username":"{user}","password":"{password}"}}"#),
        )
    };
    wait_until(PROPAGATION, "the auth service is routable", || {
        login("alice", "wonderland").status == 200
    });
    wait_until(PROPAGATION, "the greeter is routable", || {
        post(http, "/greeter/Greeter/SayHello", "{}").status == 401
    });
    let token = |user: &str, password: &str| {
        login(user, password).json()["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_string()
    };
    let (alice, bob) = (token("alice", "wonderland"), token("bob", "builder"));

    let refused = raw_http(
        http,
        upgrade_request(CHAT, "Connection: upgrade, close\r\n").as_bytes(),
    );
    assert_eq!(
        (refused.status, refused.json()["code"].clone()),
        (401, json!(16)),
        "no token: 401, not 101: {}",
        refused.body
    );
    let forbidden = raw_http(
        http,
        upgrade_request(
            CHAT,
            &format!("Connection: upgrade, close\r\nAuthorization: Bearer {bob}\r\n"),
        )
        .as_bytes(),
    );
    assert_eq!(
        (forbidden.status, forbidden.json()["code"].clone()),
        (403, json!(7))
    );
    let ws = format!("ws://{http}{CHAT}");
    let events = python("ws_client.py", &[&ws, r#"send:{"name":"x"}"#]);
    assert_eq!(
        events[0]["rejected"], 401,
        "the Python client is refused too: {events:?}"
    );

    let bearer = format!("Authorization: Bearer {alice}");
    let events = python(
        "ws_client.py",
        &[&ws, "--header", &bearer, r#"send:{"name":"alice"}"#, "end"],
    );
    assert_eq!(
        events[1]["received"], r#"{"message":"Hello alice"}"#,
        "{events:?}"
    );
    assert_eq!(events[3]["closed"], 1000, "{events:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
