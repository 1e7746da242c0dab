//! The one error type of `micro-core`, shared by every component and plugin.

use std::time::Duration;

/// A boxed error from a backend client or a user handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where.
///
/// Plugins report backend failures as [`Error::Backend`], naming themselves, so a log line says
/// which plugin spoke (`etcd registry: connect 127.0.0.1:2379: connection refused`).
///
/// Its display ends with the backend client's error, which says why; [`with_causes`] adds the
/// causes under that one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend (etcd, RabbitMQ, ...) failed or could not be reached.
    #[error("{plugin} {component}: {}", append_source(.message, .source))]
    Backend {
        /// Which component: "registry", "broker", "store", "config" or "auth".
        component: &'static str,
        /// The plugin's name.
        plugin: String,
        /// What failed, including the address where one is involved.
        message: String,
        /// The backend client's own error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A record, key or service does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry knows no live node of the service.
    #[error("no live node of service `{service}` in the `{registry}` registry")]
    NoNode {
        /// The service asked for.
        service: String,
        /// The registry plugin that was asked.
        registry: String,
    },
    /// A plugin name that is not installed in the catalog.
    #[error("unknown {component} plugin `{name}`; installed: {installed}")]
    UnknownPlugin {
        /// Which component.
        component: &'static str,
        /// The name asked for.
        name: String,
        /// The installed names, comma-separated.
        installed: String,
    },
    /// An option (flag, environment variable or config file key) with a bad value.
    #[error("{0}")]
    Option(String),
    /// A caller passed an argument that cannot be used (empty name, bad path, ...).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A value could not be encoded or decoded.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded (a key, a message, a topic).
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        /// What timed out.
        what: String,
        /// How long it was given.
        after: Duration,
    },
    /// The gRPC server could not bind or serve.
    #[error("server: {0}")]
    Server(String),
    /// An I/O error (binding a port, reading a file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A backend failure with the client's error as source.
    pub fn backend(
        component: &'static str,
        plugin: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            component,
            plugin: plugin.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A backend failure described by a message alone.
    pub fn backend_msg(
        component: &'static str,
        plugin: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Backend {
            component,
            plugin: plugin.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An invalid argument.
    pub fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }
}

/// `message`, then the source's own message unless `message` holds it already (some plugins
/// write it in): the message says what failed, the source why (`list /micro/registry/: message
/// length too large: ...`). Dropping the source hid why; the causes under it are
/// [`with_causes`]'s to add.
fn append_source(message: &str, source: &Option<BoxError>) -> String {
    let cause = source.as_ref().map(ToString::to_string).unwrap_or_default();
    if cause.is_empty() || message.contains(&cause) {
        message.to_string()
    } else {
        format!("{message}: {cause}")
    }
}

/// `error` and every cause under it, `: `-separated, each once: a transport error's display
/// alone ("transport error") hides what failed (a refused connection, a certificate that does
/// not verify).
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    append_causes(error.to_string(), error.source())
}

/// `text` followed by `cause` and every cause under it, as [`with_causes`] writes them: for
/// errors whose own text is not their `Display` (a gRPC status's message).
pub fn append_causes(
    mut text: String,
    mut cause: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(error) = cause {
        let message = error.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_error_says_why_once() {
        let refused = || std::io::Error::other("connection refused");
        let error = Error::backend("registry", "etcd", "list /micro/registry/", refused());
        assert_eq!(
            error.to_string(),
            "etcd registry: list /micro/registry/: connection refused"
        );
        assert_eq!(with_causes(&error), error.to_string(), "the cause once");
        let written_in = Error::backend("store", "redis", "read k: connection refused", refused());
        assert_eq!(
            written_in.to_string(),
            "redis store: read k: connection refused"
        );
        let alone = Error::backend_msg("config", "etcd", "set `a`: other writers");
        assert_eq!(alone.to_string(), "etcd config: set `a`: other writers");
    }
}
