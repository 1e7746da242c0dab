//! The gateway against clients that hold connections for nothing (issue 15): a `micro-gateway`
//! process, a greeter, and raw sockets that never finish their headers or their body, that
//! stay idle, that come past the connection cap, or that speak HTTP/2 by prior knowledge.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use micro_testkit::{GatewayProcess, PROPAGATION, memory_kib, post, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SAY_HELLO: &str = "/greeter/Greeter/SayHello";

/// The tests here measure time on a 2-core machine: one at a time, so that one's thousand
/// connections do not slow another's clock.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A gateway with a greeter routable through it.
fn gateway_with_greeter(flags: &[&str]) -> (GatewayProcess, micro_testkit::Process) {
    let gateway = GatewayProcess::start(flags);
    let greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "the greeter is routable", || {
        post(gateway.http, SAY_HELLO, r#"{"name":"Al"}"#).status == 200
    });
    (gateway, greeter)
}

/// The soft limit of open files of this process (`/proc/self/limits`).
fn open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// How one slow connection behaved.
struct Slow {
    half_body: bool,
    /// When its connect returned.
    connected: Instant,
    /// When the gateway closed it (EOF or reset).
    closed: Instant,
    /// What the gateway wrote before closing.
    answer: Vec<u8>,
}

/// Connects, sends `partial` and reads until the gateway closes the connection.
async fn slow_client(
    address: SocketAddr,
    partial: &'static [u8],
    half_body: bool,
    open: std::sync::mpsc::Sender<()>,
) -> Slow {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect a slow client");
    let connected = Instant::now();
    stream
        .write_all(partial)
        .await
        .expect("send the partial request");
    let _ = open.send(());
    let mut answer = Vec::new();
    // Ok(0) is EOF; an error is a reset: either way the gateway closed it.
    let _ = stream.read_to_end(&mut answer).await;
    Slow {
        half_body,
        connected,
        closed: Instant::now(),
        answer,
    }
}

#[test]
fn a_thousand_slow_clients_are_closed_in_time_while_others_are_served() {
    let _serial = one_at_a_time();
    let header_timeout = Duration::from_secs(2);
    let body_timeout = Duration::from_secs(2);
    // Each slow client takes one descriptor here; keep clear of this process's limit.
    let limit = open_file_limit();
    let total = 1000.min(usize::try_from(limit.saturating_sub(200)).unwrap_or(1000));
    if total < 1000 {
        println!("open-file limit {limit}: {total} slow clients instead of 1000");
    }
    let half_bodies = total / 5;
    let (gateway, _greeter) = gateway_with_greeter(&["--header-timeout", "2s", "--timeout", "2s"]);
    let pid = gateway.process.child.id();
    let rss_before = memory_kib(pid, "VmRSS");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (open, opened) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..total)
        .map(|i| {
            let half_body = i % 5 == 0;
            let partial: &'static [u8] = if half_body {
                b"POST /greeter/Greeter/SayHello HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"name\":\"sl"
            } else {
                b"POST /greeter/Gree"
            };
            runtime.spawn(slow_client(gateway.http, partial, half_body, open.clone()))
        })
        .collect();
    drop(open);
    let connecting = Instant::now();
    for n in 0..total {
        opened
            .recv_timeout(header_timeout)
            .unwrap_or_else(|e| panic!("only {n} of {total} slow clients connected: {e}"));
    }
    let all_open = Instant::now();
    let connect_phase = all_open - connecting;

    // During them: normal calls are answered, promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let response = post(gateway.http, SAY_HELLO, r#"{"name":"Bo"}"#);
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.json()["message"], "Hello Bo");
    }
    let served_by = Instant::now();
    let rss_during = memory_kib(pid, "VmRSS");

    let slow: Vec<Slow> = runtime.block_on(async {
        let mut slow = Vec::with_capacity(total);
        for client in clients {
            slow.push(client.await.expect("slow client task"));
        }
        slow
    });
    let rss_after = memory_kib(pid, "VmRSS");
    let first_close = slow.iter().map(|s| s.closed).min().expect("slow clients");
    assert!(
        served_by < first_close,
        "the normal calls were not made while every slow client was open (connecting them took {connect_phase:?})"
    );
    let (mut longest, mut shortest) = (Duration::ZERO, Duration::MAX);
    for (i, s) in slow.iter().enumerate() {
        let limit = if s.half_body {
            body_timeout
        } else {
            header_timeout
        };
        let open_for = s.closed - s.connected;
        (longest, shortest) = (longest.max(open_for), shortest.min(open_for));
        assert!(
            open_for <= limit + Duration::from_secs(1),
            "slow client {i} (half body: {}) was closed after {open_for:?}, past {limit:?} + 1 s",
            s.half_body
        );
        // Closed by the timeout, not by anything earlier.
        assert!(
            open_for >= limit - Duration::from_millis(200),
            "slow client {i} was closed after {open_for:?}, before the {limit:?} timeout"
        );
        let answer = String::from_utf8_lossy(&s.answer);
        if s.half_body {
            assert!(
                answer.starts_with("HTTP/1.1 408 ") && answer.contains("--timeout"),
                "a half body is answered 408 before the close: {answer:?}"
            );
        } else {
            assert!(
                answer.is_empty(),
                "half a request line gets no answer: {answer:?}"
            );
        }
    }
    println!(
        "{total} slow clients ({half_bodies} with half a body, connected in {connect_phase:?}): open {shortest:?} to {longest:?}; \
         normal calls during them: slowest {slowest:?}, all within {:?} of the last connect; \
         gateway VmRSS {rss_before} KiB before, {rss_during} KiB during, {rss_after} KiB after",
        served_by - all_open
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a normal call took {slowest:?} among the slow clients"
    );
    // A thousand held connections cost tens of KiB each, not megabytes.
    let grown = rss_during.saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "the gateway grew by {grown} KiB for {total} slow clients"
    );
}

/// Sends `GET /health` on `stream` (keep-alive) and reads the whole response.
fn health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: keep\r\n\r\n")
        .expect("send a request");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read the response");
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
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
                return text.into_owned();
            }
        }
    }
}

/// Reads until the peer closes (EOF or reset) or `within` passes; how long it took, or `None`
/// when the connection was still open. (The peer is expected to send nothing.)
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut chunk = [0u8; 1024];
    match stream.read(&mut chunk) {
        Ok(0) => Some(started.elapsed()),
        Ok(n) => panic!(
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(_) => Some(started.elapsed()),
    }
}

#[test]
fn idle_keep_alive_outlives_the_header_timeout_and_not_the_idle_timeout() {
    let _serial = one_at_a_time();
    // The environment sets both; the flag wins for the idle timeout.
    let gateway = GatewayProcess::start_with_env(
        &["--idle-timeout", "3s"],
        &[
            ("MICRO_GATEWAY_HEADER_TIMEOUT", "1s"),
            ("MICRO_GATEWAY_IDLE_TIMEOUT", "1s"),
        ],
    );
    let (header_timeout, idle_timeout) = (Duration::from_secs(1), Duration::from_secs(3));

    // Silent from the start: the header timeout of the environment (the default is 10 s).
    let mut silent = TcpStream::connect(gateway.http).expect("connect");
    let closed = closed_within(&mut silent, header_timeout + Duration::from_secs(1))
        .expect("a connection that sends nothing is closed after the header timeout");
    assert!(
        closed >= header_timeout - Duration::from_millis(100),
        "{closed:?}"
    );

    let mut keep = TcpStream::connect(gateway.http).expect("connect");
    assert!(health(&mut keep).starts_with("HTTP/1.1 200"));
    assert_eq!(
        closed_within(&mut keep, header_timeout * 2),
        None,
        "an idle keep-alive connection was closed at the header timeout"
    );
    assert!(
        health(&mut keep).starts_with("HTTP/1.1 200"),
        "the same connection serves again"
    );
    let closed = closed_within(&mut keep, idle_timeout + Duration::from_secs(1))
        .expect("an idle connection is closed after the idle timeout");
    println!("idle keep-alive connection closed {closed:?} after its last response");
    assert!(
        closed >= idle_timeout - Duration::from_millis(100),
        "closed after {closed:?}, before the idle timeout {idle_timeout:?}"
    );
}

#[test]
fn connections_past_the_cap_are_closed_at_accept() {
    let _serial = one_at_a_time();
    let gateway = GatewayProcess::start(&["--max-connections", "50", "--header-timeout", "30s"]);
    // Fifty served connections, each past its first request: held by the gateway.
    let mut held: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(gateway.http).expect("connect");
            assert!(health(&mut stream).starts_with("HTTP/1.1 200"));
            stream
        })
        .collect();

    let mut refused = TcpStream::connect(gateway.http).expect("the kernel still accepts");
    let _ = refused.write_all(b"GET /health HTTP/1.1\r\nHost: extra\r\n\r\n");
    let closed = closed_within(&mut refused, Duration::from_secs(2))
        .expect("connection 51 is closed at once");
    println!("connection 51 closed after {closed:?}");
    assert!(
        closed < Duration::from_millis(500),
        "closed after {closed:?}"
    );

    for stream in &mut held {
        assert!(
            health(stream).starts_with("HTTP/1.1 200"),
            "the fifty stay open and served"
        );
    }
    wait_until(Duration::from_secs(5), "the refusal is logged", || {
        gateway
            .process
            .stderr()
            .contains("connections refused: --max-connections reached")
    });

    held.clear();
    wait_until(
        Duration::from_secs(5),
        "a new connection is served once the fifty closed",
        || {
            let mut stream = TcpStream::connect(gateway.http).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("read timeout");
            let _ =
                stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            answer.starts_with(b"HTTP/1.1 200")
        },
    );
}

/// The HTTP/2 settings the gateway sends first on a prior-knowledge connection.
fn h2_settings(address: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("send the preface and empty settings");
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).expect("a frame header");
    assert_eq!(head[3], 4, "the first frame is SETTINGS: {head:?}");
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).expect("the settings");
    payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

#[test]
fn http2_by_prior_knowledge_with_a_stream_cap() {
    let _serial = one_at_a_time();
    let (gateway, _greeter) = gateway_with_greeter(&["--max-streams", "7"]);
    const MAX_CONCURRENT_STREAMS: u16 = 3;
    let settings = h2_settings(gateway.http);
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
        "SETTINGS_MAX_CONCURRENT_STREAMS 7 in {settings:?}"
    );
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            "-d",
            r#"{"name":"Cy"}"#,
        ])
        .arg(format!("http://{}{SAY_HELLO}", gateway.http))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "{\"message\":\"Hello Cy\"}\n2");
}

#[test]
fn sigterm_finishes_calls_in_flight_and_closes_slow_and_idle_clients_at_once() {
    let _serial = one_at_a_time();
    let gateway = GatewayProcess::start(&[
        "--header-timeout",
        "30s",
        "--idle-timeout",
        "60s",
        "--timeout",
        "20s",
    ]);
    let _greeter = gateway.greeter(&["--reply-delay", "3s"]);
    wait_until(PROPAGATION, "the greeter is routable", || {
        post(gateway.http, SAY_HELLO, r#"{"name":"Al"}"#).status == 200
    });
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut stream = TcpStream::connect(gateway.http).expect("connect");
            stream
                .write_all(b"POST /greeter/Gree")
                .expect("half a line");
            stream
        })
        .collect();
    let mut idle = TcpStream::connect(gateway.http).expect("connect");
    assert!(health(&mut idle).starts_with("HTTP/1.1 200"));
    let body = r#"{"name":"Flight"}"#;
    let mut in_flight = TcpStream::connect(gateway.http).expect("connect");
    in_flight
        .write_all(
            format!(
                "POST {SAY_HELLO} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .expect("write the call");
    // The call is in flight once the gateway has read it off its socket (headers and body are
    // parsed and dispatched in the same poll); the greeter then holds it for 3 s.
    let client_port = in_flight.local_addr().expect("local address").port();
    wait_until(PROPAGATION, "the gateway reads the call", || {
        unread_by_server(gateway.http.port(), client_port) == Some(0)
    });
    let call = std::thread::spawn(move || {
        in_flight
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut raw = String::new();
        let _ = in_flight.read_to_string(&mut raw);
        raw
    });

    let signalled = Instant::now();
    gateway.process.terminate();
    for stream in slow.iter_mut().chain([&mut idle]) {
        let closed = closed_within(stream, Duration::from_secs(2));
        assert!(
            closed.is_some(),
            "a slow or idle connection outlived the stop by 2 s"
        );
    }
    let closed_all = signalled.elapsed();
    let response = call.join().expect("call thread");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the call in flight: {response}"
    );
    assert!(
        response.ends_with(r#"{"message":"Hello Flight"}"#),
        "the call in flight: {response}"
    );
    let mut gateway = gateway;
    let status = gateway.process.wait(Duration::from_secs(10));
    println!(
        "stop: 100 slow and 1 idle connection closed within {closed_all:?}, exited after {:?}",
        signalled.elapsed()
    );
    assert!(
        status.success(),
        "exit {status:?}: {}",
        gateway.process.stderr()
    );
    assert!(
        closed_all < Duration::from_secs(1),
        "slow and idle connections waited {closed_all:?} for the drain"
    );
}

/// One HTTP/2 frame: type, flags, stream and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn write_frame(stream: &mut TcpStream, kind: u8, flags: u8, id: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len()).expect("a small frame");
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).expect("send a frame");
}

/// The next frame, or `None` when the connection closed.
fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).ok()?;
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A HEADERS block for `GET path` as HPACK literals (no indexing, no Huffman).
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "test"),
        (":path", path),
    ] {
        block.push(0);
        block.push(u8::try_from(name.len()).expect("short"));
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).expect("short"));
        block.extend_from_slice(value.as_bytes());
    }
    block
}

#[test]
fn an_idle_http2_connection_is_kept_past_the_header_timeout_then_sent_goaway() {
    let _serial = one_at_a_time();
    let gateway = GatewayProcess::start(&["--header-timeout", "1s", "--idle-timeout", "3s"]);
    let (header_timeout, idle_timeout) = (Duration::from_secs(1), Duration::from_secs(3));
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 1;
    const ACK: u8 = 1;
    let mut stream = TcpStream::connect(gateway.http).expect("connect");
    stream
        .set_read_timeout(Some(idle_timeout * 2))
        .expect("read timeout");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("send the preface");
    write_frame(&mut stream, SETTINGS, 0, 0, &[]);
    write_frame(
        &mut stream,
        HEADERS,
        0x4 | END_STREAM,
        1,
        &get_headers("/health"),
    );
    // The answer: HEADERS then DATA, the last with END_STREAM.
    loop {
        let frame = read_frame(&mut stream).expect("the answer before any close");
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => write_frame(&mut stream, SETTINGS, ACK, 0, &[]),
            _ if frame.stream == 1 && frame.flags & END_STREAM != 0 => break,
            _ => {}
        }
    }
    let answered = Instant::now();
    // Idle, and pinging past the header timeout: not a request, and not closed for it.
    stream
        .set_read_timeout(Some(header_timeout * 2))
        .expect("read timeout");
    write_frame(&mut stream, PING, 0, 0, b"12345678");
    let ack = read_frame(&mut stream).expect("the PING answered");
    assert_eq!(
        (ack.kind, ack.flags, ack.payload.as_slice()),
        (PING, ACK, &b"12345678"[..])
    );
    let mut quiet = [0u8; 9];
    let waited = stream.read(&mut quiet);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "an idle HTTP/2 connection was closed {:?} after its answer: {waited:?}",
        answered.elapsed()
    );
    // Then GOAWAY at the idle timeout, and the close.
    stream
        .set_read_timeout(Some(idle_timeout + Duration::from_secs(1)))
        .expect("read timeout");
    let goaway = loop {
        let frame = read_frame(&mut stream).expect("GOAWAY before the close");
        match frame.kind {
            GOAWAY => break answered.elapsed(),
            PING if frame.flags & ACK == 0 => {
                write_frame(&mut stream, PING, ACK, 0, &frame.payload)
            }
            _ => {}
        }
    };
    println!("idle HTTP/2 connection sent GOAWAY {goaway:?} after its answer");
    assert!(
        goaway >= idle_timeout - Duration::from_millis(100)
            && goaway <= idle_timeout + Duration::from_secs(1),
        "GOAWAY after {goaway:?}"
    );
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        answered.elapsed() <= idle_timeout + Duration::from_secs(2),
        "closed after {:?}",
        answered.elapsed()
    );
}

/// Bytes the server side of the loopback connection `server_port` ← `client_port` has not read
/// yet (its receive queue in /proc/net/tcp), or `None` when there is no such socket.
fn unread_by_server(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let (local, remote) = (
        format!("0100007F:{server_port:04X}"),
        format!("0100007F:{client_port:04X}"),
    );
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(4)?.split_once(':'))
            .flatten()
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
    })
}
