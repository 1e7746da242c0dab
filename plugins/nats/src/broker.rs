//! The [`Broker`] on core NATS.
//!
//! A topic is a subject, a queue name a NATS queue group, message headers NATS headers. Each
//! subscription is a task running its handler one message at a time. Core NATS keeps nothing and
//! redelivers nothing, so a failed message is retried here, in the process that received it:
//! after a handler's `Err` (or panic) the message is handed to the same handler again after
//! `retry_backoff × attempt`, other messages flowing meanwhile, up to `max_attempts` runs; then,
//! or at once for a [`Reject`](micro_core::broker::Reject), it is published as a dead letter on
//! `<dead-letter prefix>.<topic>`, which a JetStream stream keeps when the server has
//! JetStream. The memory broker behaves the same way, in one process.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream::{self, StorageType};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use micro_core::broker::{
    Broker, Failure, Handler, Message, SubscribeOptions, Subscription, TaskSubscription, deliver,
    validate_topic,
};
use micro_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::NAME;
use crate::conn::Conn;

/// Handler runs of one message (the first included) before it is dead-lettered, by default.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The wait before the second run of a failed message; the n-th retry waits n times this.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long a publish may wait for the connection (during a reconnect) before it fails.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead letters of topic `t` are published on `<this>.t`.
pub const DEFAULT_DEAD_LETTER_PREFIX: &str = "micro.dead-letter";
/// The JetStream stream keeping dead letters (subjects `<prefix>.>`), created on the first dead
/// letter when the server has JetStream.
pub const DEFAULT_DEAD_LETTER_STREAM: &str = "micro-dead-letter";

/// Dead-letter header: handler runs.
pub const ATTEMPTS_HEADER: &str = "x-micro-attempts";
/// Dead-letter header: the topic the message was published on.
pub const TOPIC_HEADER: &str = "x-micro-topic";
/// Dead-letter header: the queue group whose handler gave up (absent for broadcast subscribers).
pub const QUEUE_HEADER: &str = "x-micro-dead-letter-queue";
/// Dead-letter header: the last error (or panic message), up to 1 KiB.
pub const REASON_HEADER: &str = "x-micro-dead-letter-reason";

const COMPONENT: &str = "broker";

/// Publish/subscribe on core NATS. Cheap to clone; clones share the connection and settings.
///
/// ```no_run
/// use micro_core::Broker;
/// use micro_core::broker::{Message, SubscribeOptions, handler};
/// # #[tokio::main] async fn main() -> micro_core::Result<()> {
/// let broker = micro_nats::NatsBroker::connect("nats://127.0.0.1:4222")
///     .await?
///     .with_max_attempts(3);
/// let on_email = handler(|message: Message| async move {
///     println!("sending {:?}", message.body);
///     Ok(())
/// });
/// let subscription = broker
///     .subscribe("jobs.email", on_email, SubscribeOptions::queue("mailers"))
///     .await?;
/// broker.publish("jobs.email", Message::new("to: alice")).await?;
/// # subscription.unsubscribe().await?; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsBroker {
    conn: Conn,
    settings: Arc<Settings>,
    /// Whether the dead-letter stream is known to exist.
    dead_letter_ready: Arc<Mutex<bool>>,
}

#[derive(Clone, Debug)]
struct Settings {
    max_attempts: u32,
    retry_backoff: Duration,
    publish_timeout: Duration,
    dead_letter_prefix: String,
    dead_letter_stream: Option<String>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("address", &self.conn.address)
            .field("max_attempts", &self.settings.max_attempts)
            .field("retry_backoff", &self.settings.retry_backoff)
            .field("publish_timeout", &self.settings.publish_timeout)
            .field("dead_letter_prefix", &self.settings.dead_letter_prefix)
            .field("dead_letter_stream", &self.settings.dead_letter_stream)
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects to the NATS servers at `address` (comma-separated URLs, `nats://user:pass@host:port`;
    /// blank: [`DEFAULT_ADDRESS`](crate::DEFAULT_ADDRESS)), failing with an error naming the
    /// address when none answers. The client reconnects by itself afterwards.
    pub async fn connect(address: &str) -> Result<Self> {
        Ok(Self::on(Conn::connect(COMPONENT, address).await?))
    }

    /// The broker on a client the caller already has; `address` names it in errors.
    pub fn from_client(client: async_nats::Client, address: impl Into<String>) -> Self {
        Self::on(Conn::from_client(client, address))
    }

    fn on(conn: Conn) -> Self {
        NatsBroker {
            conn,
            settings: Arc::new(Settings {
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                retry_backoff: DEFAULT_RETRY_BACKOFF,
                publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                dead_letter_prefix: DEFAULT_DEAD_LETTER_PREFIX.to_string(),
                dead_letter_stream: Some(DEFAULT_DEAD_LETTER_STREAM.to_string()),
            }),
            dead_letter_ready: Arc::default(),
        }
    }

    /// Dead-letters a message after `attempts` failed handler runs (0 is taken as 1). Applies
    /// to subscriptions made afterwards.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        Arc::make_mut(&mut self.settings).max_attempts = attempts.max(1);
        self
    }

    /// Waits `backoff × n` before the n-th retry of a failed message.
    pub fn with_retry_backoff(mut self, backoff: Duration) -> Self {
        Arc::make_mut(&mut self.settings).retry_backoff = backoff;
        self
    }

    /// Bounds how long a publish waits for the connection to the server.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.settings).publish_timeout = timeout;
        self
    }

    /// Publishes dead letters of topic `t` on `<prefix>.t` (a valid topic itself, no
    /// wildcards), kept by the JetStream stream `stream` (subjects `<prefix>.>`, created on the
    /// first dead letter) or, with `None`, by no stream: then only a live subscriber of the
    /// subject sees them.
    pub fn with_dead_letter(mut self, prefix: impl Into<String>, stream: Option<String>) -> Self {
        let settings = Arc::make_mut(&mut self.settings);
        settings.dead_letter_prefix = prefix.into();
        settings.dead_letter_stream = stream;
        self.dead_letter_ready = Arc::default();
        self
    }

    /// The subject dead letters of `topic` are published on.
    pub fn dead_letter_subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.settings.dead_letter_prefix)
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.conn.client
    }

    /// Waits until the server has processed everything this client sent before: a message to
    /// a fresh inbox of ours comes back only after it.
    async fn round_trip(&self, what: &str) -> Result<()> {
        let client = &self.conn.client;
        let inbox = client.new_inbox();
        let work = async {
            let mut echo = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| self.conn.err(COMPONENT, what, e))?;
            client
                .publish(inbox, Bytes::new())
                .await
                .map_err(|e| self.conn.err(COMPONENT, what, e))?;
            echo.next().await.map(|_| ()).ok_or_else(|| {
                self.conn
                    .err_msg(COMPONENT, format!("{what}: the connection closed"))
            })
        };
        tokio::time::timeout(self.settings.publish_timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("nats {COMPONENT}: {what} (nats at {})", self.conn.address),
                after: self.settings.publish_timeout,
            })?
    }

    /// Publishes a dead letter and logs it; a dead letter that cannot be published is logged
    /// as lost.
    async fn dead_letter(
        &self,
        topic: &str,
        queue: Option<&str>,
        message: Message,
        attempts: u32,
        failure: &Failure,
    ) {
        let subject = self.dead_letter_subject(topic);
        let reason = failure.header_reason();
        let mut header = message.header.clone();
        header.insert(ATTEMPTS_HEADER.into(), attempts.to_string());
        header.insert(TOPIC_HEADER.into(), topic.to_string());
        if let Some(queue) = queue {
            header.insert(QUEUE_HEADER.into(), queue.to_string());
        }
        header.insert(REASON_HEADER.into(), reason.clone());
        let headers = match to_headers(&header) {
            Ok(headers) => headers.unwrap_or_default(),
            Err(e) => {
                warn!(%topic, error = %e, "dead letter headers dropped");
                HeaderMap::new()
            }
        };
        let kept = self.ensure_dead_letter_stream().await;
        let published = if kept {
            match self
                .conn
                .jetstream
                .publish_with_headers(subject.clone(), headers, message.body.clone())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let client = &self.conn.client;
            match client
                .publish_with_headers(subject.clone(), headers, message.body.clone())
                .await
            {
                Ok(()) => client.flush().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        match published {
            Ok(()) => error!(
                %topic, attempts, queue = queue.unwrap_or(""), %reason, dead_letter = %subject, stream = kept,
                "message dead-lettered after {attempts} failed handler runs"
            ),
            Err(e) => error!(
                %topic, attempts, queue = queue.unwrap_or(""), %reason, error = %e, bytes = message.body.len(),
                "message failed {attempts} handler runs and could not be dead-lettered on {subject}: lost"
            ),
        }
    }

    /// Whether dead letters go to a JetStream stream: creates it when missing.
    async fn ensure_dead_letter_stream(&self) -> bool {
        let Some(name) = &self.settings.dead_letter_stream else {
            return false;
        };
        if *self
            .dead_letter_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            return true;
        }
        let config = stream::Config {
            name: name.clone(),
            description: Some("micro broker dead letters".into()),
            subjects: vec![format!("{}.>", self.settings.dead_letter_prefix)],
            storage: StorageType::File,
            ..Default::default()
        };
        match self.conn.jetstream.get_or_create_stream(config).await {
            Ok(_) => {
                *self
                    .dead_letter_ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = true;
                true
            }
            Err(e) => {
                warn!(stream = %name, address = %self.conn.address, error = %e,
                    "no JetStream stream for dead letters (is JetStream enabled?); publishing them on core NATS only");
                false
            }
        }
    }
}

/// NATS headers for `header`; an invalid-argument error naming a name or value NATS cannot
/// carry (empty or non-visible-ASCII names, `:` in names, CR/LF in values).
fn to_headers(header: &BTreeMap<String, String>) -> Result<Option<HeaderMap>> {
    if header.is_empty() {
        return Ok(None);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in header {
        let parsed_name = HeaderName::from_str(name)
            .ok()
            .filter(|_| !name.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    "header",
                    format!(
                        "header name {name:?} is not a NATS header name (visible ASCII, no `:`)"
                    ),
                )
            })?;
        let parsed_value = HeaderValue::from_str(value).map_err(|_| {
            Error::invalid(
                "header",
                format!(
                    "the value of header {name:?} has a CR or LF, which NATS headers cannot carry"
                ),
            )
        })?;
        headers.insert(parsed_name, parsed_value);
    }
    Ok(Some(headers))
}

/// The bytes a message with these headers takes on the wire against `max_payload`.
fn wire_size(headers: Option<&HeaderMap>, body: &Bytes) -> usize {
    let header_bytes = headers.map_or(0, |h| {
        // "NATS/1.0\r\n", each "name: value\r\n", the closing "\r\n".
        12 + h
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum::<usize>()
    });
    header_bytes + body.len()
}

/// A received NATS message as a broker [`Message`]; of repeated headers the last value counts.
fn from_nats(message: async_nats::Message) -> Message {
    let mut header = BTreeMap::new();
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            if let Some(value) = values.last() {
                let name: &str = name.as_ref();
                header.insert(name.to_string(), value.as_str().to_string());
            }
        }
    }
    Message {
        header,
        body: message.payload,
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &str {
        NAME
    }

    /// Returns once the message was written to the server's connection (or with an error after
    /// `publish_timeout` while the client reconnects). Core NATS acknowledges nothing: the server
    /// hands the message to the subscribers it has now and keeps nothing.
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        validate_topic(topic)?;
        let headers = to_headers(&message.header)?;
        let client = &self.conn.client;
        let max_payload = client.server_info().max_payload;
        let size = wire_size(headers.as_ref(), &message.body);
        if max_payload > 0 && size > max_payload {
            return Err(Error::invalid(
                "message",
                format!(
                    "a message of {size} bytes on topic {topic:?} exceeds the max_payload of {max_payload} bytes of nats at {}",
                    self.conn.address
                ),
            ));
        }
        let work = async {
            let sent = match headers {
                Some(headers) => {
                    client
                        .publish_with_headers(topic.to_string(), headers, message.body)
                        .await
                }
                None => client.publish(topic.to_string(), message.body).await,
            };
            sent.map_err(|e| self.conn.err(COMPONENT, format!("publish to `{topic}`"), e))?;
            client
                .flush()
                .await
                .map_err(|e| self.conn.err(COMPONENT, format!("publish to `{topic}`"), e))
        };
        tokio::time::timeout(self.settings.publish_timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!(
                    "nats {COMPONENT}: publish to `{topic}` (nats at {}: not connected?)",
                    self.conn.address
                ),
                after: self.settings.publish_timeout,
            })?
    }

    /// Subscribes, and returns once the server has the subscription: a message published after
    /// `subscribe` returned, from any connection, reaches it.
    async fn subscribe(
        &self,
        topic: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>> {
        validate_topic(topic)?;
        let bad_queue = |queue: &String| {
            queue.is_empty() || queue.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if let Some(queue) = options.queue.as_ref().filter(|q| bad_queue(q)) {
            return Err(Error::invalid(
                "queue",
                format!("queue name {queue:?} is empty or has whitespace"),
            ));
        }
        let client = &self.conn.client;
        let subscriber = match &options.queue {
            Some(queue) => {
                client
                    .queue_subscribe(topic.to_string(), queue.clone())
                    .await
            }
            None => client.subscribe(topic.to_string()).await,
        }
        .map_err(|e| {
            self.conn
                .err(COMPONENT, format!("subscribe to `{topic}`"), e)
        })?;
        self.round_trip(&format!("subscribe to `{topic}`")).await?;
        let (retry, retries) = mpsc::unbounded_channel();
        let worker = Worker {
            broker: self.clone(),
            topic: topic.to_string(),
            queue: options.queue,
            handler,
            retry,
            pending: 0,
        };
        Ok(Box::new(TaskSubscription::spawn(NAME, topic, |stopped| {
            worker.run(subscriber, stopped, retries)
        })))
    }
}

/// The task behind one subscription.
struct Worker {
    broker: NatsBroker,
    topic: String,
    queue: Option<String>,
    handler: Handler,
    retry: mpsc::UnboundedSender<(Message, u32)>,
    /// Retries scheduled and not yet run.
    pending: usize,
}

impl Worker {
    async fn run(
        mut self,
        mut subscriber: async_nats::Subscriber,
        mut stop: oneshot::Receiver<()>,
        mut retries: mpsc::UnboundedReceiver<(Message, u32)>,
    ) {
        let (mut listening, mut stop_armed) = (true, true);
        loop {
            if !listening && self.pending == 0 {
                return;
            }
            tokio::select! {
                biased;
                Some((message, attempt)) = retries.recv() => {
                    self.pending -= 1;
                    self.deliver(message, attempt).await;
                }
                asked = &mut stop, if stop_armed => {
                    stop_armed = false;
                    // A dropped Subscription leaves the subscription running.
                    if asked.is_ok() && listening {
                        // No more from the server; what it already sent is still handled.
                        if let Err(e) = subscriber.unsubscribe().await {
                            warn!(topic = %self.topic, error = %e, "nats unsubscribe failed");
                        }
                    }
                }
                next = subscriber.next(), if listening => match next {
                    Some(message) => self.deliver(from_nats(message), 1).await,
                    None => listening = false,
                },
            }
        }
    }

    /// Runs the handler on one delivery; a failure schedules a retry or dead-letters it.
    async fn deliver(&mut self, message: Message, attempt: u32) {
        let Err(failure) = deliver(&self.handler, message.clone()).await else {
            return;
        };
        let settings = &self.broker.settings;
        if failure.dead_letters(attempt, settings.max_attempts) {
            self.broker
                .dead_letter(
                    &self.topic,
                    self.queue.as_deref(),
                    message,
                    attempt,
                    &failure,
                )
                .await;
            return;
        }
        warn!(topic = %self.topic, attempt, error = %failure.reason, "handler failed; retrying");
        self.pending += 1;
        let delay = settings.retry_backoff * attempt;
        let retry = self.retry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The worker waits for every pending retry, so it is still receiving.
            let _ = retry.send((message, attempt + 1));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_nats_cannot_carry_are_refused_by_name() {
        let bad_name: BTreeMap<String, String> = [("a:b".to_string(), "v".to_string())].into();
        let error = to_headers(&bad_name).expect_err("`:` in a name");
        assert!(error.to_string().contains("\"a:b\""), "{error}");
        let bad_value: BTreeMap<String, String> =
            [("x-trace".to_string(), "a\r\nb".to_string())].into();
        let error = to_headers(&bad_value).expect_err("CR LF in a value");
        assert!(error.to_string().contains("\"x-trace\""), "{error}");
        assert!(to_headers(&BTreeMap::new()).expect("empty").is_none());
    }

    #[test]
    fn sizes_count_headers() {
        let headers = to_headers(&[("ab".to_string(), "cd".to_string())].into())
            .expect("valid")
            .expect("some");
        assert_eq!(
            wire_size(Some(&headers), &Bytes::from_static(b"xyz")),
            12 + 8 + 3
        );
        assert_eq!(wire_size(None, &Bytes::from_static(b"xyz")), 3);
    }
}
