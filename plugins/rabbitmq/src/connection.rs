//! The connection to RabbitMQ, shared by publishing and every subscription, and brought back when
//! it drops.
//!
//! We reconnect ourselves rather than with lapin's `enable_auto_recover`: every user of the
//! connection finds out it is gone (a failed publish, a consumer stream ending) and asks the
//! [`Connector`] for a healthy [`Link`]; the first to ask reconnects, with backoff, and declares
//! the exchanges again, the others wait for that. Subscriptions then declare and bind their queues
//! again and consume anew, so recovery is the same code path as a first subscribe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use micro_core::{BoxError, Error, Result};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::NAME;
use crate::headers::short;
use crate::options::RabbitOptions;
use crate::tls::is_amqps;

/// First pause between reconnection attempts; doubles up to [`MAX_BACKOFF`].
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One live connection and the confirm-mode channel everything is published on.
pub(crate) struct Link {
    /// Bumped on every reconnect, for logs.
    pub(crate) generation: u64,
    pub(crate) connection: Arc<Connection>,
    publisher: Channel,
}

impl Link {
    fn connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// What became of a confirmed publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// At least one queue took the message.
    Queued,
    /// No queue was bound for it; RabbitMQ returned it (the text says why).
    Unroutable(String),
}

/// Hands out the current [`Link`], reconnecting when it is gone.
pub(crate) struct Connector {
    pub(crate) options: RabbitOptions,
    /// The address without its password, for logs and errors.
    pub(crate) address: String,
    current: Mutex<Option<Arc<Link>>>,
    generations: AtomicU64,
    /// True once the broker is closed: no reconnecting after that.
    closed: watch::Sender<bool>,
}

impl Connector {
    /// Connects once, failing fast: a wrong address at startup should be an error, not a hang.
    pub(crate) async fn connect(options: RabbitOptions) -> Result<Arc<Connector>> {
        let connector = Arc::new(Connector {
            address: options.redacted_address(),
            options,
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            closed: watch::channel(false).0,
        });
        let link = connector.open().await?;
        *connector.current.lock().await = Some(link);
        Ok(connector)
    }

    /// Flips to true when the broker is closed.
    pub(crate) fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// The current link, reconnecting (with backoff, for as long as it takes) when it is down.
    /// Fails only once the broker is closed.
    pub(crate) async fn link(&self) -> Result<Arc<Link>> {
        let mut current = self.current.lock().await;
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        loop {
            if *self.closed.borrow() {
                return Err(Error::backend_msg(
                    "broker",
                    NAME,
                    format!("the broker for {} is closed", self.address),
                ));
            }
            match current.as_ref() {
                Some(link) if link.connected() && link.publisher.status().connected() => {
                    return Ok(link.clone());
                }
                Some(link) if link.connected() => {
                    // Only the publishing channel died (a channel-level error, e.g. a deleted
                    // exchange): keep the connection and its consumers, open a new channel.
                    warn!(address = %self.address, "rabbitmq publishing channel closed; opening another");
                    match self.publisher(&link.connection).await {
                        Ok(publisher) => {
                            let link = Arc::new(Link {
                                generation: self.next_generation(),
                                connection: link.connection.clone(),
                                publisher,
                            });
                            *current = Some(link.clone());
                            return Ok(link);
                        }
                        Err(err) => {
                            warn!(address = %self.address, error = %err, "rabbitmq channel reopen failed")
                        }
                    }
                }
                _ => {
                    if let Some(link) = current.take() {
                        warn!(address = %self.address, generation = link.generation, "rabbitmq connection lost; reconnecting");
                    }
                    match self.open().await {
                        Ok(link) => {
                            info!(address = %self.address, generation = link.generation, failures, "rabbitmq reconnected");
                            *current = Some(link.clone());
                            return Ok(link);
                        }
                        Err(err) => {
                            failures += 1;
                            warn!(address = %self.address, failures, retry_in = ?backoff, error = %err, "rabbitmq reconnect failed");
                        }
                    }
                }
            }
            let mut closed = self.closed();
            tokio::select! {
                _ = tokio::time::sleep(jitter(backoff)) => {}
                _ = until_closed(&mut closed) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Publishes with confirms, retrying on a new link when the channel or connection fails,
    /// until RabbitMQ confirms or `deadline` passes. A message whose confirm was lost with its
    /// channel is published again: a duplicate is possible, a loss is not.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
        deadline: Instant,
    ) -> Result<Routed> {
        let (exchange_name, key) = (exchange, routing_key);
        let exchange = short(exchange, "exchange")?;
        let routing_key = short(routing_key, "topic")?;
        let mut last_error: Option<BoxError> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            let attempt = async {
                let link = self.link().await?;
                let confirm = link
                    .publisher
                    .basic_publish(
                        exchange.clone(),
                        routing_key.clone(),
                        // Mandatory, so a message no queue takes comes back and we can tell.
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        properties.clone(),
                    )
                    .await
                    .map_err(|err| {
                        self.error(
                            &format!("publish to exchange {exchange_name:?} with key {key:?}"),
                            err,
                        )
                    })?;
                confirm.await.map_err(|err| {
                    self.error(
                        &format!(
                            "confirm of a publish to exchange {exchange_name:?} with key {key:?}"
                        ),
                        err,
                    )
                })
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                    return Ok(Routed::Queued);
                }
                Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                    return Ok(Routed::Unroutable(format!(
                        "{} {}",
                        returned.reply_code, returned.reply_text
                    )));
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    debug!(address = %self.address, %exchange, %routing_key, "rabbitmq nacked a publish; retrying");
                    last_error = Some("RabbitMQ refused the message (basic.nack)".into());
                }
                Ok(Err(err)) => {
                    if *self.closed.borrow() {
                        return Err(err);
                    }
                    debug!(address = %self.address, error = %err, "rabbitmq publish failed; retrying");
                    last_error = Some(err.into());
                }
                Err(_elapsed) => break,
            }
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let message = format!(
            "publish to exchange {exchange_name:?} with key {key:?} on {}: not confirmed within {:?}",
            self.address, self.options.publish_timeout
        );
        Err(match last_error {
            Some(err) => Error::backend("broker", NAME, message, err),
            None => Error::backend_msg("broker", NAME, message),
        })
    }

    /// Stops reconnecting and closes the connection. Deliveries not yet acknowledged go back to
    /// their queues.
    pub(crate) async fn close(&self) {
        self.closed.send_replace(true);
        let link = self.current.lock().await.take();
        if let Some(link) = link
            && link.connected()
            && let Err(err) = link
                .connection
                .close(200, ShortString::from("closed by micro"))
                .await
        {
            debug!(address = %self.address, error = %err, "rabbitmq close failed");
        }
    }

    /// A `broker`/`rabbitmq` error saying what failed, on which server.
    pub(crate) fn error(&self, what: &str, err: lapin::Error) -> Error {
        Error::backend("broker", NAME, format!("{what} on {}", self.address), err)
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new connection with the exchanges (and dead-letter queue) declared. Over TLS
    /// (`amqps://`) the certificate files are read again, so rotated ones are used.
    async fn open(&self) -> Result<Arc<Link>> {
        let properties = ConnectionProperties::default().with_connection_name("micro".into());
        let connection = if is_amqps(&self.options.address) {
            let tls = &self.options.tls;
            let config = crate::tls::lapin(tls).map_err(|e| {
                Error::Option(format!("{NAME} broker: TLS to {}: {e}", self.address))
            })?;
            let runtime = lapin::runtime::default_runtime()
                .map_err(|err| self.error("start lapin's runtime", err))?;
            match Connection::connect_with_config(
                &self.options.address,
                properties,
                config,
                runtime,
            )
            .await
            {
                Ok(connection) => connection,
                Err(err) => {
                    let why = match crate::tls::explain(tls, &err) {
                        Some(why) => Some(why),
                        None => crate::tls::diagnose(tls, &self.options.address).await,
                    };
                    return Err(match why {
                        Some(why) => Error::backend(
                            "broker",
                            NAME,
                            format!("cannot connect to {} over TLS: {why}", self.address),
                            err,
                        ),
                        None => self.error("connect", err),
                    });
                }
            }
        } else {
            Connection::connect(&self.options.address, properties)
                .await
                .map_err(|err| self.error("connect", err))?
        };
        let connection = Arc::new(connection);
        let publisher = self.publisher(&connection).await?;
        Ok(Arc::new(Link {
            generation: self.next_generation(),
            connection,
            publisher,
        }))
    }

    /// A confirm-mode channel, after declaring the topology on it (declaring is idempotent, and
    /// doing it on every new channel restores whatever was deleted while we were away).
    async fn publisher(&self, connection: &Connection) -> Result<Channel> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|err| self.error("open a channel", err))?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in [&self.options.exchange, &self.options.dead_letter_exchange] {
            channel
                .exchange_declare(
                    short(exchange, "exchange")?,
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await
                .map_err(|err| {
                    self.error(&format!("declare the topic exchange {exchange:?}"), err)
                })?;
        }
        if let Some(queue) = &self.options.dead_letter_queue {
            let name = short(queue, "queue")?;
            channel
                .queue_declare(
                    name.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|err| {
                    self.error(&format!("declare the dead-letter queue {queue:?}"), err)
                })?;
            channel
                .queue_bind(
                    name,
                    short(&self.options.dead_letter_exchange, "exchange")?,
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|err| self.error(&format!("bind the dead-letter queue {queue:?}"), err))?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|err| self.error("enable publisher confirms", err))?;
        Ok(channel)
    }
}

/// Returns once `closed` turns true (or its sender is gone). The guard `wait_for` returns is
/// dropped here, so callers' futures stay `Send`.
pub(crate) async fn until_closed(closed: &mut watch::Receiver<bool>) {
    let _ = closed.wait_for(|closed| *closed).await;
}

/// `base` plus up to 25 %, so a fleet of clients does not reconnect in lockstep.
pub(crate) fn jitter(base: Duration) -> Duration {
    base + base.mul_f64(fastrand::f64() * 0.25)
}
