//! [`RabbitOptions`]: where to connect and how messages are routed, retried and confirmed.

use std::time::Duration;

use crate::tls::RabbitTls;

/// The address used when none is given: a local RabbitMQ with the default account and vhost.
pub const DEFAULT_ADDRESS: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The topic exchange messages are published to unless configured otherwise.
pub const DEFAULT_EXCHANGE: &str = "micro";
/// The exchange failed messages are dead-lettered to unless configured otherwise.
pub const DEFAULT_DEAD_LETTER_EXCHANGE: &str = "micro.dead-letter";
/// Deliveries of a message (first one included) before it is dead-lettered, by default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Unacknowledged deliveries per subscription, by default.
pub const DEFAULT_PREFETCH: u16 = 32;
/// How long a publish may wait for a connection and a confirm, by default.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// How to connect to RabbitMQ and how to treat messages. Build it with [`RabbitOptions::new`] and
/// the `with_*` methods, then [`RabbitBroker::connect`](crate::RabbitBroker::connect).
///
/// ```
/// use std::time::Duration;
/// let options = micro_rabbitmq::RabbitOptions::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .with_exchange("shop")
///     .with_prefetch(64)
///     .with_max_attempts(3)
///     .with_publish_timeout(Duration::from_secs(5));
/// assert_eq!(options.exchange, "shop");
/// ```
///
/// Its `Debug` output shows the address with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitOptions {
    /// The `amqp://` (or `amqps://`) URL of the broker, vhost included.
    pub address: String,
    /// The durable topic exchange every topic is a routing key of.
    pub exchange: String,
    /// The durable topic exchange messages go to after `max_attempts` failed deliveries; routing
    /// key is the original topic.
    pub dead_letter_exchange: String,
    /// A durable queue bound to the dead-letter exchange with `#`, so dead letters are kept until
    /// someone looks at them; `None` declares no such queue (bind your own to inspect them, or
    /// they are discarded by RabbitMQ).
    pub dead_letter_queue: Option<String>,
    /// Handler runs of one message, the first included, before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Deliveries a subscription holds unacknowledged (the AMQP `basic.qos` prefetch count); this
    /// is also how many handler calls of one subscription run at once.
    pub prefetch: u16,
    /// How long `publish` waits, reconnecting if needed, for RabbitMQ to confirm a message before
    /// it returns an error.
    pub publish_timeout: Duration,
    /// When true, a publish that no queue is bound for is an error (`mandatory` publish that came
    /// back). When false (the default, go-micro's semantics) it succeeds and the message, which
    /// no one subscribed to, is discarded.
    pub require_route: bool,
    /// The client TLS of an `amqps://` address: the CA to verify RabbitMQ with (the system's
    /// roots by default) and the client certificate to present. Ignored for `amqp://`.
    pub tls: RabbitTls,
}

impl std::fmt::Debug for RabbitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitOptions")
            .field("address", &self.redacted_address())
            .field("exchange", &self.exchange)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("max_attempts", &self.max_attempts)
            .field("prefetch", &self.prefetch)
            .field("publish_timeout", &self.publish_timeout)
            .field("require_route", &self.require_route)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for RabbitOptions {
    fn default() -> Self {
        RabbitOptions::new(DEFAULT_ADDRESS)
    }
}

impl RabbitOptions {
    /// The defaults, connecting to `address`.
    pub fn new(address: impl Into<String>) -> Self {
        RabbitOptions {
            address: address.into(),
            exchange: DEFAULT_EXCHANGE.to_string(),
            dead_letter_exchange: DEFAULT_DEAD_LETTER_EXCHANGE.to_string(),
            dead_letter_queue: Some(DEFAULT_DEAD_LETTER_EXCHANGE.to_string()),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            prefetch: DEFAULT_PREFETCH,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            require_route: false,
            tls: RabbitTls::default(),
        }
    }

    /// Publishes to and subscribes on the topic exchange `name`.
    pub fn with_exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }

    /// Dead-letters to the exchange `name`.
    pub fn with_dead_letter_exchange(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_exchange = name.into();
        self
    }

    /// Keeps dead letters in the durable queue `name` (`None`: declare no such queue).
    pub fn with_dead_letter_queue(mut self, name: Option<String>) -> Self {
        self.dead_letter_queue = name;
        self
    }

    /// Dead-letters a message after `attempts` failed handler runs (0 is taken as 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Holds at most `prefetch` unacknowledged deliveries per subscription (0 is taken as 1:
    /// AMQP's 0 would mean unlimited).
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Bounds how long a publish waits for a connection and a confirm.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Makes a publish that no queue is bound for an error.
    pub fn with_require_route(mut self, require: bool) -> Self {
        self.require_route = require;
        self
    }

    /// Connects to an `amqps://` address with `tls` (CA and client certificate); see
    /// [`RabbitTls::from_options`] for the process's `--client-tls-*` options.
    pub fn with_tls(mut self, tls: RabbitTls) -> Self {
        self.tls = tls;
        self
    }

    /// The address with any password replaced by `***`, for logs and errors.
    pub fn redacted_address(&self) -> String {
        redact(&self.address)
    }
}

/// `scheme://user:secret@host/...` becomes `scheme://user:***@host/...`.
fn redact(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else {
        return address.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return address.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(redact("not a url"), "not a url");
        let debug = format!("{:?}", RabbitOptions::new("amqp://u:secret@h/%2f"));
        assert!(debug.contains("amqp://u:***@h/%2f") && !debug.contains("secret"));
    }

    #[test]
    fn zero_limits_are_clamped() {
        let options = RabbitOptions::default()
            .with_max_attempts(0)
            .with_prefetch(0);
        assert_eq!((options.max_attempts, options.prefetch), (1, 1));
    }
}
