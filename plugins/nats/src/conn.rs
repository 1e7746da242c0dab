//! One connection to NATS: the client, its JetStream context, and the address it was given (for
//! errors and logs, password hidden).

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectOptions, Event, ServerAddr};
use micro_core::{Error, Result};
use tracing::{info, warn};

use crate::{DEFAULT_ADDRESS, NAME};

/// How long the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one JetStream request (a put, a get, creating a consumer) may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    /// The servers, as given (password replaced by `***`).
    pub(crate) address: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("address", &self.address)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects `component` to the servers of `address` (comma-separated; blank:
    /// [`DEFAULT_ADDRESS`]). The first connection is not retried: an unreachable server is an
    /// error naming the address. After that the client reconnects by itself, logging each loss
    /// (`warn`) and recovery (`info`), and re-subscribes what was subscribed.
    pub(crate) async fn connect(component: &'static str, address: &str) -> Result<Conn> {
        let address = if address.trim().is_empty() {
            DEFAULT_ADDRESS
        } else {
            address.trim()
        };
        let shown = redact(address);
        let servers = address
            .split(',')
            .map(str::trim)
            .filter(|one| !one.is_empty())
            .map(|one| {
                one.parse::<ServerAddr>().map_err(|e| {
                    Error::invalid(
                        "address",
                        format!(
                            "nats {component}: bad server address {:?} in {shown:?}: {e}",
                            redact(one)
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let events_address = shown.clone();
        let client = ConnectOptions::new()
            .name(format!("micro-{component}"))
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(move |event| {
                let address = events_address.clone();
                async move {
                    match event {
                        Event::Disconnected => {
                            warn!(%address, component, "nats connection lost; reconnecting")
                        }
                        Event::Connected => info!(%address, component, "nats connected"),
                        Event::SlowConsumer(sid) => warn!(
                            %address, component, sid,
                            "nats slow consumer: a subscription fell behind and messages were dropped"
                        ),
                        Event::LameDuckMode => {
                            warn!(%address, component, "nats server entering lame duck mode")
                        }
                        other => info!(%address, component, event = %other, "nats event"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| {
                Error::backend(
                    component,
                    NAME,
                    format!("cannot connect to nats at {shown}"),
                    e,
                )
            })?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(REQUEST_TIMEOUT);
        Ok(Conn {
            client,
            jetstream,
            address: shown,
        })
    }

    /// The connection of a client the caller already has; `address` names it in errors.
    pub(crate) fn from_client(client: async_nats::Client, address: impl Into<String>) -> Conn {
        Conn {
            jetstream: jetstream::new(client.clone()),
            client,
            address: redact(&address.into()),
        }
    }

    /// A backend error of `component` saying what failed, with the address.
    pub(crate) fn err(
        &self,
        component: &'static str,
        what: impl std::fmt::Display,
        source: impl Into<micro_core::BoxError>,
    ) -> Error {
        Error::backend(
            component,
            NAME,
            format!("{what} (nats at {})", self.address),
            source,
        )
    }

    /// A backend error of `component` described by a message, with the address.
    pub(crate) fn err_msg(&self, component: &'static str, what: impl std::fmt::Display) -> Error {
        Error::backend_msg(
            component,
            NAME,
            format!("{what} (nats at {})", self.address),
        )
    }
}

/// `scheme://user:secret@host,...` with every password replaced by `***`.
pub(crate) fn redact(address: &str) -> String {
    address
        .split(',')
        .map(|one| {
            let Some((scheme, rest)) = one.split_once("://") else {
                return one.to_string();
            };
            let Some((userinfo, host)) = rest.rsplit_once('@') else {
                return one.to_string();
            };
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => one.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The deadline `ttl` from now, in milliseconds since the Unix epoch (saturating).
pub(crate) fn deadline_after(ttl: std::time::Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, by this host's clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("nats://u:secret@a:4222, nats://b:4222"),
            "nats://u:***@a:4222, nats://b:4222"
        );
        assert_eq!(redact("127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(redact("nats://token@h:1"), "nats://token@h:1");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_naming_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("nats://127.0.0.1:{port}");
        let error = Conn::connect("broker", &address)
            .await
            .expect_err("nothing listens there");
        assert!(error.to_string().contains(&address), "{error}");
        let bad = Conn::connect("store", "nats://[::1")
            .await
            .expect_err("a malformed address");
        assert!(bad.to_string().contains("nats://[::1"), "{bad}");
    }
}
