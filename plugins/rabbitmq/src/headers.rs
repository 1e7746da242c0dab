//! [`Message`] <-> AMQP properties: `Message.header` entries travel as AMQP string headers, next
//! to the plugin's own bookkeeping headers, which handlers never see.

use std::collections::BTreeMap;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use micro_core::broker::Message;
use micro_core::{Error, Result};

use crate::NAME;

/// Handler runs a message has had so far (absent: none). Set when a failed message is
/// republished for another attempt.
pub(crate) const ATTEMPTS: &str = "x-micro-attempts";
/// On a dead letter: the queue whose handler gave up on it.
pub(crate) const DEAD_QUEUE: &str = "x-micro-dead-letter-queue";
/// On a dead letter: the last handler error.
pub(crate) const DEAD_REASON: &str = "x-micro-dead-letter-reason";
/// The topic a message was first published on, kept when it is republished for another attempt
/// (which goes straight to its queue, with the queue's name as routing key).
pub(crate) const TOPIC: &str = "x-micro-topic";

/// AMQP delivery mode 2: RabbitMQ writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;

/// An AMQP short string (exchange, routing key, header name), or an error naming `what`.
pub(crate) fn short(value: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|err| {
        Error::backend(
            "broker",
            NAME,
            format!("{what} {value:?} is too long for AMQP"),
            err,
        )
    })
}

/// The properties of a published message: persistent, with `message.header` as string headers.
pub(crate) fn properties(message: &Message) -> Result<BasicProperties> {
    let mut table = FieldTable::default();
    for (key, value) in &message.header {
        table.insert(
            short(key, "header name")?,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    Ok(BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(table))
}

/// The message a handler sees: string headers (numbers and booleans rendered as text), without
/// the plugin's bookkeeping headers and RabbitMQ's own `x-death` tables.
pub(crate) fn message(properties: &BasicProperties, body: Bytes) -> Message {
    let mut header = BTreeMap::new();
    if let Some(table) = properties.headers() {
        for (key, value) in table.inner() {
            if key.as_str().starts_with("x-micro-") {
                continue;
            }
            if let Some(text) = text(value) {
                header.insert(key.to_string(), text);
            }
        }
    }
    Message { header, body }
}

/// How many handler runs the message had before this delivery.
pub(crate) fn attempts(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(ATTEMPTS));
    match value {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// `properties` with the bookkeeping header `key` set to `value`.
pub(crate) fn with_header(
    properties: &BasicProperties,
    key: &'static str,
    value: AMQPValue,
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert(ShortString::from(key), value);
    properties.clone().with_headers(table)
}

/// A header value as text, if it has a sensible one.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_without_bookkeeping() {
        let sent = Message::new("body")
            .with_header("content-type", "text/plain")
            .with_header("x-trace-id", "abc");
        let props = properties(&sent).expect("properties");
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        let props = with_header(&props, ATTEMPTS, AMQPValue::LongUInt(3));
        assert_eq!(attempts(&props), 3);
        let got = message(&props, Bytes::from_static(b"body"));
        assert_eq!(got, sent);
    }

    #[test]
    fn overlong_header_names_are_errors() {
        let sent = Message::new("").with_header("k".repeat(300), "v");
        assert!(properties(&sent).is_err());
    }
}
