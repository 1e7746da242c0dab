//! The connection every component of this crate shares: a redis `ConnectionManager`, the
//! address it names in errors, and one more try when the connection was found dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use micro_core::{Error, Result};
use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{DEFAULT_ADDRESS, NAME};

/// How long one connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long Redis may take to answer one command.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A managed connection and where it goes.
#[derive(Clone)]
pub(crate) struct Conn {
    manager: ConnectionManager,
    /// `host:port` (and `/db` when not 0), never a password.
    pub(crate) address: Arc<str>,
    /// Whether the last operation found the connection lost (for logging the way back).
    lost: Arc<AtomicBool>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// `address` as a URL: [`DEFAULT_ADDRESS`] when blank, `redis://` added to a bare `host:port`.
pub(crate) fn url_of(address: &str) -> String {
    let address = address.trim();
    if address.is_empty() {
        DEFAULT_ADDRESS.to_string()
    } else if address.contains("://") {
        address.to_string()
    } else {
        format!("redis://{address}")
    }
}

/// `url` with any user name and password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Conn {
    /// Connects to `address` (see [`url_of`]) and checks Redis answers; the error names the
    /// address. The manager then reconnects by itself, one attempt per operation while Redis is
    /// away, so an operation then fails within about [`CONNECT_TIMEOUT`] instead of waiting.
    pub(crate) async fn connect(component: &'static str, address: &str) -> Result<Conn> {
        let url = url_of(address);
        let client = redis::Client::open(url.as_str()).map_err(|e| {
            Error::backend(
                component,
                NAME,
                format!("bad redis address `{}`: {e}", redact(&url)),
                e,
            )
        })?;
        let info = client.get_connection_info();
        let shown = match info.redis.db {
            0 => info.addr.to_string(),
            db => format!("{}/{db}", info.addr),
        };
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        let started = Instant::now();
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                Error::backend(
                    component,
                    NAME,
                    format!("cannot reach redis at {shown}: {e}"),
                    e,
                )
            })?;
        let conn = Conn::new(manager, shown);
        conn.run(
            component,
            || "ping".into(),
            |mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await },
        )
        .await?;
        tracing::debug!(address = %conn.address, elapsed = ?started.elapsed(), "connected to redis");
        Ok(conn)
    }

    /// A connection the caller made; `address` names it in errors.
    pub(crate) fn new(manager: ConnectionManager, address: impl Into<Arc<str>>) -> Conn {
        Conn {
            manager,
            address: address.into(),
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A clone of the managed connection.
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Runs `op` on the connection. When it finds the connection dropped (the manager then
    /// reconnects), runs it once more: every operation of this crate may run twice. A failure
    /// is a backend error saying `what` failed, where, and why.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        component: &'static str,
        what: impl FnOnce() -> String,
        op: F,
    ) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut result = op(self.manager.clone()).await;
        if let Err(e) = &result
            && e.is_unrecoverable_error()
        {
            if !self.lost.swap(true, Ordering::Relaxed) {
                tracing::warn!(address = %self.address, error = %e, "redis connection lost; reconnecting");
            }
            result = op(self.manager.clone()).await;
        }
        match result {
            Ok(value) => {
                if self.lost.load(Ordering::Relaxed) && self.lost.swap(false, Ordering::Relaxed) {
                    tracing::info!(address = %self.address, "redis connection back");
                }
                Ok(value)
            }
            Err(e) => {
                let message = if e.is_unrecoverable_error() || e.is_io_error() {
                    format!("{}: cannot reach redis at {}: {e}", what(), self.address)
                } else {
                    format!("{} (redis at {}): {e}", what(), self.address)
                };
                Err(Error::backend(component, NAME, message, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redaction() {
        assert_eq!(url_of(" "), DEFAULT_ADDRESS);
        assert_eq!(url_of("10.0.0.1:6380"), "redis://10.0.0.1:6380");
        assert_eq!(url_of("redis://h:1/2"), "redis://h:1/2");
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://u:p@ss@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
