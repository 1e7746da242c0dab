//! A small client of the Consul HTTP API on hyper: one request, its status, its
//! `X-Consul-Index`, its body; errors that name the address and the component that asked.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use micro_core::{Error, Result};
use serde::de::DeserializeOwned;

use crate::NAME;

/// The address used when none is given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";
/// The environment variable holding the ACL token sent as `X-Consul-Token`.
pub const TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";

/// How long a non-blocking call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One answer of the Consul HTTP API.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    /// `X-Consul-Index`, when the endpoint sends one.
    pub(crate) index: Option<u64>,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as text, for error messages (errors come as plain text bodies).
    pub(crate) fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.chars().count() > 300 {
            format!("{}...", text.chars().take(300).collect::<String>())
        } else {
            text.to_string()
        }
    }
}

/// A Consul HTTP API client for one component (its errors say "consul registry", ...).
#[derive(Clone)]
pub(crate) struct ConsulHttp {
    component: &'static str,
    address: String,
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for ConsulHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ConsulHttp")
            .field("component", &self.component)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ConsulHttp {
    /// A client of the agent at `address` (`host:port` or `http://host:port`; blank is
    /// [`DEFAULT_ADDRESS`]), sending the token from [`TOKEN_ENV`] as `X-Consul-Token` when set.
    /// Connects on first use: only a malformed address is an error here.
    pub(crate) fn new(component: &'static str, address: &str) -> Result<Self> {
        let address = match address.trim() {
            "" => DEFAULT_ADDRESS,
            address => address,
        };
        if address.starts_with("https://") {
            return Err(Error::invalid(
                "consul address",
                format!("`{address}`: https is not supported by this plugin; use http://"),
            ));
        }
        let host = address.trim_start_matches("http://").trim_end_matches('/');
        let uri = format!("http://{host}/");
        uri.parse::<http::Uri>().map_err(|e| {
            Error::invalid(
                "consul address",
                format!("`{address}` is not a host:port address: {e}"),
            )
        })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ConsulHttp {
            component,
            address: host.to_string(),
            base: format!("http://{host}"),
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
            client,
        })
    }

    /// Sends `token` instead of the one from [`TOKEN_ENV`]; `None` (or empty) sends none.
    pub(crate) fn set_token(&mut self, token: Option<String>) {
        self.token = token.filter(|t| !t.is_empty());
    }

    /// A backend error of this component with a message alone.
    pub(crate) fn fail(&self, message: impl std::fmt::Display) -> Error {
        Error::backend_msg(
            self.component,
            NAME,
            format!("{message} (Consul at {})", self.address),
        )
    }

    /// A backend error of this component with a source.
    pub(crate) fn fail_with(
        &self,
        message: impl std::fmt::Display,
        source: impl Into<micro_core::BoxError>,
    ) -> Error {
        Error::backend(
            self.component,
            NAME,
            format!("{message} (Consul at {})", self.address),
            source,
        )
    }

    /// Sends one request; `path` starts with `/v1/` and carries its query string. Any answer
    /// comes back as a [`Reply`] except 403, which is the refused-token error.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let uri = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method.clone()).uri(&uri);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| self.fail_with(format!("cannot build request {method} {path}"), e))?;
        let timeout = timeout.unwrap_or(CALL_TIMEOUT);
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                self.fail_with(
                    format!(
                        "cannot reach Consul at {} ({method} {path}): {}",
                        self.address,
                        describe(&e)
                    ),
                    e,
                )
            })?;
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    self.fail_with(format!("the answer to {method} {path} was cut off"), e)
                })?
                .to_bytes();
            Ok::<_, Error>(Reply {
                status,
                index,
                body,
            })
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                what: format!(
                    "consul {} {method} {path} at {}",
                    self.component, self.address
                ),
                after: timeout,
            })??;
        if reply.status == StatusCode::FORBIDDEN {
            return Err(self.fail(format!(
                "the ACL token was refused (403 on {method} {path}: {}); set {TOKEN_ENV} to a token with the needed policy",
                reply.text()
            )));
        }
        Ok(reply)
    }

    /// A GET of `path` (with or without a query), a blocking query when `index > 0`: it waits
    /// up to `wait` for a change past `index`. The path as sent (for errors), the reply, and the
    /// index to pass next ([`next_index`]).
    pub(crate) async fn get_blocking(
        &self,
        path: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(String, Reply, u64)> {
        let mut path = path.to_string();
        let mut timeout = None;
        if index > 0 {
            let join = if path.contains('?') { '&' } else { '?' };
            path.push_str(&format!("{join}index={index}&wait={}", go_duration(wait)));
            timeout = Some(blocking_timeout(wait));
        }
        let reply = self.call(Method::GET, &path, None, timeout).await?;
        let next = next_index(index, reply.index);
        Ok((path, reply, next))
    }

    /// [`call`](Self::call), then an error unless the status is 2xx.
    pub(crate) async fn call_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply> {
        let reply = self.call(method.clone(), path, body, None).await?;
        self.ensure_ok(&method, path, reply)
    }

    /// An error unless the status is 2xx.
    pub(crate) fn ensure_ok(&self, method: &Method, path: &str, reply: Reply) -> Result<Reply> {
        if reply.status.is_success() {
            Ok(reply)
        } else {
            Err(self.fail(format!(
                "{method} {path} answered {}: {}",
                reply.status,
                reply.text()
            )))
        }
    }

    /// Decodes a JSON body, naming the request when it is malformed or of an unexpected shape.
    pub(crate) fn decode<T: DeserializeOwned>(&self, path: &str, reply: &Reply) -> Result<T> {
        serde_json::from_slice(&reply.body).map_err(|e| {
            self.fail_with(
                format!("malformed or unexpected JSON in the answer to {path}: {e}"),
                e,
            )
        })
    }
}

/// The innermost cause of a hyper client error (connection refused, ...).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// Percent-encodes a key for a URL path, keeping `/` (Consul's key separator).
pub(crate) fn encode_path(key: &str) -> String {
    encode(key, true)
}

fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && byte == b'/');
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A duration in Go's syntax, as Consul parses it (`1500ms`, `2s`).
pub(crate) fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The next index of a blocking-query loop, by the rules of "Blocking Queries" in HashiCorp's
/// API docs (features/blocking, "Implementation details"): if the index went backwards, start
/// over from 0; an index of 0 (or less than 1) is never waited on, it is reset to 1 so the loop
/// does not spin.
pub(crate) fn next_index(previous: u64, returned: Option<u64>) -> u64 {
    match returned {
        None => 0,
        Some(index) if index < previous => 0,
        Some(0) => 1,
        Some(index) => index,
    }
}

/// How long a blocking query may take on the client side: `wait`, plus the up to `wait/16`
/// jitter Consul adds, plus slack.
fn blocking_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_keys_and_durations() {
        assert_eq!(encode_path("a/b c%"), "a/b%20c%25");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(10, Some(12)), 12);
        assert_eq!(next_index(10, Some(3)), 0, "backwards: start over");
        assert_eq!(next_index(0, Some(0)), 1, "zero is reset to 1");
        assert_eq!(next_index(5, None), 0);
    }

    #[test]
    fn refuses_https_and_bad_addresses() {
        let err = ConsulHttp::new("registry", "https://x:8501").err().unwrap();
        assert!(err.to_string().contains("https://x:8501"), "{err}");
        assert!(ConsulHttp::new("registry", "not an address").is_err());
        for blank in ["", "  "] {
            let ok = ConsulHttp::new("registry", blank).unwrap();
            assert_eq!(ok.address, DEFAULT_ADDRESS);
        }
        let ok = ConsulHttp::new("registry", "http://10.0.0.1:8500/").unwrap();
        assert_eq!(ok.address, "10.0.0.1:8500");
    }
}
