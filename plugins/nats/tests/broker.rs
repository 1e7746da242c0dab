//! What is particular to the NATS broker, against the real NATS (`MICRO_NATS_ADDRESS`, default
//! `nats://127.0.0.1:4222`): in-process retries and dead letters, unsubscribe finishing its
//! retries, subscriptions live on return across connections, NATS headers both ways, and what
//! NATS cannot carry refused by name. Streams a test creates are deleted when it ends.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use micro_core::broker::{Message, Reject, SubscribeOptions, handler};
use micro_core::conformance::{PROMPT, eventually, next, unique};
use micro_core::{Broker, Error};
use micro_nats::{ATTEMPTS_HEADER, NatsBroker, QUEUE_HEADER, REASON_HEADER, TOPIC_HEADER};
use micro_testkit::collecting;

async fn broker() -> NatsBroker {
    NatsBroker::connect(&common::address())
        .await
        .expect("nats broker (run scripts/setup)")
        .with_retry_backoff(Duration::from_millis(10))
}

/// Deletes the stream `name` when dropped.
struct DeleteStream(String);

impl Drop for DeleteStream {
    fn drop(&mut self) {
        common::delete_streams(&common::address(), &self.0);
    }
}

/// A message that always fails goes to the dead-letter stream after `max_attempts` handler runs
/// (the first a panic), with its body, its headers and the `x-micro-*` headers, while the
/// messages after it are handled meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn failing_messages_are_dead_lettered_into_a_stream_after_max_attempts() {
    let topic = unique("test.poison");
    let prefix = unique("test.dead");
    let stream = unique("test-dead");
    let _cleanup = DeleteStream(stream.clone());
    let broker = broker()
        .await
        .with_max_attempts(3)
        .with_dead_letter(prefix.clone(), Some(stream.clone()));
    let attempts = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (seen, done) = (attempts.clone(), handled.clone());
    let queue = unique("workers");
    let subscription = broker
        .subscribe(
            &topic,
            handler(move |message: Message| {
                let (seen, done) = (seen.clone(), done.clone());
                async move {
                    if message.body != "poison" {
                        done.lock().expect("lock").push(message.body);
                        return Ok(());
                    }
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("first run of the poison message panics");
                    }
                    Err("still poison".into())
                }
            }),
            SubscribeOptions::queue(queue.clone()),
        )
        .await
        .expect("subscribe");
    broker
        .publish(
            &topic,
            Message::new("poison").with_header("x-trace-id", "t-1"),
        )
        .await
        .expect("publish poison");
    for i in 0..5 {
        broker
            .publish(&topic, Message::new(format!("good-{i}")))
            .await
            .expect("publish good");
    }
    eventually(PROMPT, "the good messages are handled", || async {
        handled.lock().expect("lock").len() == 5
    })
    .await;

    let client = async_nats::connect(common::address().as_str())
        .await
        .expect("connect");
    let jetstream = async_nats::jetstream::new(client);
    let subject = broker.dead_letter_subject(&topic);
    assert_eq!(subject, format!("{prefix}.{topic}"));
    let dead_letter = || async {
        let stream = jetstream.get_stream(&stream).await.ok()?;
        stream.get_last_raw_message_by_subject(&subject).await.ok()
    };
    eventually(PROMPT, "the dead letter is in the stream", || async {
        dead_letter().await.is_some()
    })
    .await;
    let dead = dead_letter().await.expect("found");
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "three handler runs");
    assert_eq!(dead.payload, "poison");
    let header = |name: &str| {
        dead.headers
            .get_last(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("dead letter header {name}: {:?}", dead.headers))
    };
    assert_eq!(header(ATTEMPTS_HEADER), "3");
    assert_eq!(header(TOPIC_HEADER), topic);
    assert_eq!(header(QUEUE_HEADER), queue);
    assert_eq!(header(REASON_HEADER), "still poison");
    assert_eq!(header("x-trace-id"), "t-1", "the original headers are kept");
    subscription.unsubscribe().await.expect("unsubscribe");
}

/// A [`Reject`]ed message is dead-lettered at once, without a retry; with no stream, the dead
/// letter is published on core NATS, where a subscriber of the subject sees it.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_messages_are_dead_lettered_at_once() {
    let topic = unique("test.reject");
    let broker = broker().await.with_dead_letter(unique("test.dead"), None);
    let client = async_nats::connect(common::address().as_str())
        .await
        .expect("connect");
    let mut dead_letters =
        common::subscribe_synced(&client, broker.dead_letter_subject(&topic)).await;
    let runs = Arc::new(AtomicU32::new(0));
    let seen = runs.clone();
    let subscription = broker
        .subscribe(
            &topic,
            handler(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Err(Box::new(Reject("cannot decode".into())) as _) }
            }),
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");
    broker
        .publish(&topic, Message::new("garbage"))
        .await
        .expect("publish");
    let dead = next(&mut dead_letters, "the dead letter").await;
    assert_eq!(dead.payload, "garbage");
    let headers = dead.headers.expect("headers");
    assert_eq!(
        headers.get_last(ATTEMPTS_HEADER).map(|v| v.as_str()),
        Some("1")
    );
    assert!(headers.get_last(QUEUE_HEADER).is_none(), "no queue group");
    assert!(
        headers
            .get_last(REASON_HEADER)
            .is_some_and(|v| v.as_str().contains("cannot decode")),
        "{headers:?}"
    );
    subscription.unsubscribe().await.expect("unsubscribe");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "never retried");
}

/// `unsubscribe` returns only once the message in hand, retries included, is done.
#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_finishes_the_retries_in_hand() {
    let topic = unique("test.unsub-retry");
    let broker = broker()
        .await
        .with_retry_backoff(Duration::from_millis(200));
    let runs = Arc::new(AtomicU32::new(0));
    let succeeded = Arc::new(AtomicU32::new(0));
    let (seen, ok) = (runs.clone(), succeeded.clone());
    let subscription = broker
        .subscribe(
            &topic,
            handler(move |_| {
                let run = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let ok = ok.clone();
                async move {
                    if run < 3 {
                        return Err(format!("run {run} fails").into());
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
            SubscribeOptions::queue(unique("q")),
        )
        .await
        .expect("subscribe");
    broker
        .publish(&topic, Message::new("job"))
        .await
        .expect("publish");
    eventually(PROMPT, "the first run failed", || async {
        runs.load(Ordering::SeqCst) >= 1
    })
    .await;
    subscription.unsubscribe().await.expect("unsubscribe");
    assert_eq!(runs.load(Ordering::SeqCst), 3, "both retries ran");
    assert_eq!(succeeded.load(Ordering::SeqCst), 1, "the job succeeded");
}

/// A message published from another connection right after `subscribe` returned is delivered:
/// the server has the subscription by then.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_are_live_when_subscribe_returns() {
    let (subscriber, publisher) = (broker().await, broker().await);
    for round in 0..10 {
        let topic = unique("test.live");
        let (keep, got) = collecting();
        let subscription = subscriber
            .subscribe(&topic, keep, SubscribeOptions::default())
            .await
            .expect("subscribe");
        publisher
            .publish(&topic, Message::new(format!("round-{round}")))
            .await
            .expect("publish");
        eventually(
            PROMPT,
            "the message published right after subscribe",
            || async { !got.is_empty() },
        )
        .await;
        subscription.unsubscribe().await.expect("unsubscribe");
    }
}

/// Headers are NATS headers: a plain NATS client sees the broker's, and the broker's handler
/// sees a plain client's (the last value of a repeated header).
#[tokio::test(flavor = "multi_thread")]
async fn headers_are_nats_headers_both_ways() {
    let broker = broker().await;
    let client = async_nats::connect(common::address().as_str())
        .await
        .expect("connect");

    let outbound = unique("test.headers-out");
    let mut raw = common::subscribe_synced(&client, outbound.clone()).await;
    broker
        .publish(
            &outbound,
            Message::new(Bytes::from_static(b"\x00\xff"))
                .with_header("Content-Type", "application/json")
                .with_header("x-trace-id", "ü-1"),
        )
        .await
        .expect("publish");
    let message = next(&mut raw, "the broker's message").await;
    let headers = message.headers.expect("NATS headers");
    assert_eq!(
        headers.get_last("Content-Type").map(|v| v.as_str()),
        Some("application/json"),
        "names keep their case"
    );
    assert_eq!(
        headers.get_last("x-trace-id").map(|v| v.as_str()),
        Some("ü-1")
    );
    assert_eq!(message.payload, Bytes::from_static(b"\x00\xff"));

    let inbound = unique("test.headers-in");
    let (keep, got) = collecting();
    let subscription = broker
        .subscribe(&inbound, keep, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut headers = async_nats::HeaderMap::new();
    headers.append("x-repeated", "first");
    headers.append("x-repeated", "last");
    headers.insert("x-one", "1");
    client
        .publish_with_headers(inbound.clone(), headers, "raw".into())
        .await
        .expect("raw publish");
    client.flush().await.expect("flush");
    eventually(PROMPT, "the raw message", || async { !got.is_empty() }).await;
    let message = got.messages()[0].clone();
    let want: BTreeMap<String, String> = [
        ("x-one".to_string(), "1".to_string()),
        ("x-repeated".to_string(), "last".to_string()),
    ]
    .into();
    assert_eq!(message.header, want);
    assert_eq!(message.body, "raw");
    subscription.unsubscribe().await.expect("unsubscribe");
}

/// Headers NATS cannot carry and messages over the server's `max_payload` are refused before
/// anything is sent, naming what is wrong; the connection keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn what_nats_cannot_carry_is_refused_by_name() {
    let broker = broker().await;
    let topic = unique("test.refused");
    let got = Arc::new(AtomicU32::new(0));
    let count = got.clone();
    let subscription = broker
        .subscribe(
            &topic,
            handler(move |_| {
                count.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            }),
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");

    let colon = broker
        .publish(&topic, Message::new("x").with_header("bad:name", "v"))
        .await;
    assert!(
        matches!(&colon, Err(Error::Invalid { what: "header", message }) if message.contains("bad:name")),
        "{colon:?}"
    );
    let newline = broker
        .publish(&topic, Message::new("x").with_header("x-multi", "a\r\nb"))
        .await;
    assert!(
        matches!(&newline, Err(Error::Invalid { what: "header", message }) if message.contains("x-multi")),
        "{newline:?}"
    );
    let max = broker.client().server_info().max_payload;
    let huge = broker
        .publish(&topic, Message::new(vec![0u8; max + 1]))
        .await;
    assert!(
        matches!(&huge, Err(Error::Invalid { what: "message", message }) if message.contains(&topic) && message.contains("max_payload")),
        "{huge:?}"
    );
    let queue = broker
        .subscribe(
            &topic,
            handler(|_| async { Ok(()) }),
            SubscribeOptions::queue("two words"),
        )
        .await;
    assert!(
        matches!(&queue, Err(Error::Invalid { what: "queue", message }) if message.contains("two words")),
        "{:?}",
        queue.as_ref().map(|_| ())
    );

    broker
        .publish(&topic, Message::new(vec![0u8; max - 1024]))
        .await
        .expect("a message under the limit");
    eventually(PROMPT, "the connection still delivers", || async {
        got.load(Ordering::SeqCst) == 1
    })
    .await;
    subscription.unsubscribe().await.expect("unsubscribe");
}
