//! Test support: the Consul API double, and the choice of backend for the suites.
#![allow(dead_code, unreachable_pub)]

pub mod double;

use std::cell::RefCell;

pub use double::ConsulApiDouble;

thread_local! {
    /// The backend of the test running on this thread (each `#[tokio::test]` runs its body on
    /// its own thread, in its own runtime).
    static CURRENT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// `CONSUL_HTTP_ADDR`, when it names a real agent to test against.
pub fn real_consul() -> Option<String> {
    std::env::var("CONSUL_HTTP_ADDR")
        .ok()
        .filter(|a| !a.trim().is_empty())
}

/// The address the current test talks to: `CONSUL_HTTP_ADDR` when set, else a fresh
/// [`ConsulApiDouble`] started in this test's runtime. Later calls of [`current`] in the same
/// test give the same address (a second client of the same backend).
pub async fn backend() -> String {
    let address = match real_consul() {
        Some(address) => {
            eprintln!("running against the Consul agent at CONSUL_HTTP_ADDR={address}");
            address
        }
        None => {
            eprintln!(
                "CONSUL_HTTP_ADDR is not set: running against ConsulApiDouble, a test double of \
                 the Consul HTTP API (no Consul server can be installed here)"
            );
            ConsulApiDouble::start().await.address()
        }
    };
    CURRENT.with(|c| *c.borrow_mut() = Some(address.clone()));
    address
}

/// The backend [`backend`] chose for this test.
pub fn current() -> String {
    CURRENT
        .with(|c| c.borrow().clone())
        .expect("backend() runs before current()")
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status, headers (lower-case names), body.
pub async fn raw(
    address: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, std::collections::BTreeMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = answer[split + 4..].to_vec();
    if let Some(chunked) = dechunk(&body) {
        body = chunked;
    }
    (status, headers, body)
}

/// Decodes a chunked body, or `None` when it is not chunked.
fn dechunk(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
