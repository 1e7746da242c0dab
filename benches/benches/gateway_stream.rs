//! # Bench `gateway_stream`: what the gateway costs on a server stream (issue 11)
//!
//! A greeter whose `SayHelloStream` sends its replies as fast as it can (no interval, no cap:
//! the testkit greeter stops at 10 000) runs in process on `127.0.0.1:0` (`micro_core::Server`,
//! `MemoryRegistry`), and a gateway in process over the same registry. One stream of 100 000
//! small replies (`{"message":"Hello bench <i>"}`) is read three ways, interleaved (a, b, c, a,
//! b, c) against drift:
//!
//! - **(a)** directly with a tonic `GreeterClient` on a plain `Channel` (the floor);
//! - **(b)** through the gateway as NDJSON: `POST /greeter/Greeter/SayHelloStream`, the chunked
//!   body read off a raw tokio `TcpStream` and its lines counted as they come;
//! - **(c)** the same as Server-Sent Events (`Accept: text/event-stream`).
//!
//! Each reader checks it got every message and the last one is `Hello bench 100000`. Prints
//! messages per second per round and over all rounds, and the ratios b/a and c/a.
//!
//! Run: `cargo bench -p micro-benches --bench gateway_stream`

use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_core::{Options, Registry, Server};
use micro_gateway::{Gateway, GatewayOptions};
use micro_testkit::bench::rate;
use micro_testkit::greeter;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::greeter::v1::greeter_server::GreeterServer;
use micro_testkit::greeter::v1::{HelloReply, HelloRequest, StreamRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::tokio_stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Replies per stream.
const MESSAGES: u32 = 100_000;
/// Interleaved rounds of (a), (b), (c).
const ROUNDS: usize = 5;
const PATH: &str = "/greeter/Greeter/SayHelloStream";

fn main() -> Result<(), BoxError> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
    let options = Options::new("greeter").load_from(["bench"])?;
    let server = Server::new(options, registry.clone())
        .descriptors(greeter::DESCRIPTORS)?
        .add_service(GreeterServer::new(Firehose))
        .start()
        .await?;
    let gateway_options = GatewayOptions::load_from([
        "gw",
        "--address",
        "127.0.0.1:0",
        "--registry-listen",
        "127.0.0.1:0",
        "--timeout",
        "5m",
    ])?;
    let gateway = Gateway::new(gateway_options, registry).start().await?;
    let http = gateway.http_address();
    let channel = Endpoint::from_shared(format!("http://{}", server.address()))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = GreeterClient::new(channel);

    // Warm-up (connections, the gateway's reflection) and a check of each reader.
    direct(&mut client, 1000).await?;
    gateway_stream(http, Format::Ndjson, 1000).await?;
    gateway_stream(http, Format::Sse, 1000).await?;

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bench gateway_stream: greeter (in process) on {}, gateway (in process) on {http}: {MESSAGES} replies per stream, {ROUNDS} interleaved rounds, {cpus} CPUs",
        server.address()
    );
    let mut totals = [Duration::ZERO; 3];
    for round in 1..=ROUNDS {
        let times = [
            direct(&mut client, MESSAGES).await?,
            gateway_stream(http, Format::Ndjson, MESSAGES).await?,
            gateway_stream(http, Format::Sse, MESSAGES).await?,
        ];
        for ((time, total), label) in times.iter().zip(&mut totals).zip(LABELS) {
            *total += *time;
            println!("round {round} {}", line(label, MESSAGES, *time));
        }
    }
    println!();
    let all = MESSAGES * ROUNDS as u32;
    for (total, label) in totals.iter().zip(LABELS) {
        println!("all     {}", line(label, all, *total));
    }
    let rates = totals.map(|t| rate(all as usize, t));
    println!(
        "ratio b/a (gateway NDJSON / direct tonic) {:.3}; c/a (gateway SSE / direct tonic) {:.3}",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
    gateway.stop().await?;
    server.stop().await?;
    Ok(())
}

const LABELS: [&str; 3] = [
    "(a) direct tonic stream",
    "(b) gateway NDJSON",
    "(c) gateway SSE",
];

fn line(label: &str, messages: u32, time: Duration) -> String {
    format!(
        "{label:<26} {messages:>7} replies in {:>7.3} s {:>10.0} replies/s",
        time.as_secs_f64(),
        rate(messages as usize, time)
    )
}

/// The expected last reply of a stream of `count`.
fn last_reply(count: u32) -> String {
    format!("Hello bench {count}")
}

/// Reads a stream of `count` replies directly over gRPC; the time from the call to its end.
async fn direct(client: &mut GreeterClient<Channel>, count: u32) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut replies = client
        .say_hello_stream(StreamRequest {
            name: "bench".into(),
            count,
            interval_ms: 0,
        })
        .await?
        .into_inner();
    let (mut n, mut last) = (0u32, String::new());
    while let Some(reply) = replies.message().await? {
        n += 1;
        last = reply.message;
    }
    let time = started.elapsed();
    if n != count || last != last_reply(count) {
        return Err(format!("direct: {n} replies, the last {last:?}").into());
    }
    Ok(time)
}

/// How the gateway frames the stream.
#[derive(Clone, Copy)]
enum Format {
    Ndjson,
    Sse,
}

/// Reads a stream of `count` replies through the gateway; the time from the request to the end
/// of the body.
async fn gateway_stream(
    address: std::net::SocketAddr,
    format: Format,
    count: u32,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut socket = TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    let body = format!(r#"{{"name":"bench","count":{count}}}"#);
    let accept = match format {
        Format::Ndjson => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    let request = format!(
        "POST {PATH} HTTP/1.1\r\nhost: {address}\r\naccept: {accept}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await?;
    let mut reader = ChunkedReader::new(socket);
    reader.head().await?;
    let mut newlines = 0u64;
    let mut tail = Vec::new();
    while let Some(data) = reader.chunk().await? {
        newlines += data.iter().filter(|b| **b == b'\n').count() as u64;
        tail.extend_from_slice(&data);
        let keep = tail.len().saturating_sub(256);
        tail.drain(..keep);
    }
    let time = started.elapsed();
    // NDJSON ends each reply with one newline; SSE with a blank line (two).
    let replies = match format {
        Format::Ndjson => newlines,
        Format::Sse => newlines / 2,
    };
    let tail = String::from_utf8_lossy(&tail);
    let expected = format!(r#"{{"message":"{}"}}"#, last_reply(count));
    if replies != u64::from(count) || !tail.trim_end().ends_with(&expected) {
        return Err(format!("gateway: {replies} replies, ending {tail:?}").into());
    }
    Ok(time)
}

/// An HTTP/1.1 response with a chunked body, read as it arrives.
struct ChunkedReader {
    socket: TcpStream,
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` starts.
    at: usize,
}

impl ChunkedReader {
    fn new(socket: TcpStream) -> Self {
        ChunkedReader {
            socket,
            buffer: Vec::with_capacity(64 * 1024),
            at: 0,
        }
    }

    /// Reads more; an error at the end of the connection.
    async fn fill(&mut self) -> Result<(), BoxError> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.socket.read(&mut chunk).await?;
        if n == 0 {
            return Err("the connection closed mid-response".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The position of `needle` in the unread part.
    fn find(&self, needle: &[u8]) -> Option<usize> {
        self.buffer[self.at..]
            .windows(needle.len())
            .position(|w| w == needle)
    }

    /// Reads the head; an error unless it is a chunked 200.
    async fn head(&mut self) -> Result<(), BoxError> {
        let end = loop {
            if let Some(i) = self.find(b"\r\n\r\n") {
                break self.at + i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[self.at..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") || !head.contains("transfer-encoding: chunked") {
            return Err(format!("unexpected response head: {head}").into());
        }
        self.at = end + 4;
        Ok(())
    }

    /// The next chunk's data; `None` after the last.
    async fn chunk(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        // Drops what was read, once it is most of the buffer (positions stay valid below).
        if self.at * 2 >= self.buffer.len() {
            self.buffer.drain(..self.at);
            self.at = 0;
        }
        let line = loop {
            if let Some(i) = self.find(b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let size = std::str::from_utf8(&self.buffer[self.at..self.at + line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("a bad chunk size")?;
        let start = self.at + line + 2;
        while self.buffer.len() < start + size + 2 {
            self.fill().await?;
        }
        let data = self.buffer[start..start + size].to_vec();
        self.at = start + size + 2;
        Ok((size > 0).then_some(data))
    }
}

/// A greeter whose `SayHelloStream` sends `count` replies at once, as fast as the connection
/// takes them.
struct Firehose;

type Replies = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<HelloReply, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl greeter::v1::greeter_server::Greeter for Firehose {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {}", request.into_inner().name),
        }))
    }

    type SayHelloStreamStream = Replies;

    async fn say_hello_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Replies>, Status> {
        let StreamRequest { name, count, .. } = request.into_inner();
        let replies = (1..=count).map(move |i| {
            Ok(HelloReply {
                message: format!("Hello {name} {i}"),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }

    type ChatStream = Replies;

    async fn chat(
        &self,
        _request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented(
            "the bench greeter streams replies only",
        ))
    }
}
