//! A poison message (its handler fails every time, once by panicking) ends in the dead-letter
//! exchange after `max_attempts` runs, and the messages behind it are processed meanwhile.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, ExchangeDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::RabbitOptions;
use micro_testkit::eventually;

const ATTEMPTS: u32 = 3;
const GOOD: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn poison_message_is_dead_lettered_after_max_attempts() {
    let names = Names::new("poison");
    let (topic, queue) = (names.topic.clone(), names.queue.clone());
    let broker = common::broker(names.options(ATTEMPTS).with_prefetch(1)).await;

    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = runs.clone();
    let picky = handler(move |message: Message| {
        let seen = seen.clone();
        async move {
            let body = String::from_utf8_lossy(&message.body).into_owned();
            let run = {
                let mut seen = seen.lock().expect("lock");
                let run = seen.entry(body.clone()).or_default();
                *run += 1;
                *run
            };
            match (body.as_str(), run) {
                ("poison", 1) => panic!("the poison message, first run"),
                ("poison", _) => Err("the poison message again".into()),
                _ => Ok(()),
            }
        }
    });
    // Prefetch 1: one delivery at a time, so a poison message stuck at the head would block all.
    let subscription = broker
        .subscribe(&topic, picky, SubscribeOptions::queue(&queue))
        .await
        .expect("subscribe");

    broker
        .publish(
            &topic,
            Message::new("poison").with_header("x-job", "poison"),
        )
        .await
        .expect("publish");
    for i in 0..GOOD {
        broker
            .publish(&topic, Message::new(format!("good-{i}")))
            .await
            .expect("publish");
    }
    eventually(
        Duration::from_secs(30),
        "every good message processed",
        || async {
            let runs = runs.lock().expect("lock");
            (0..GOOD).all(|i| runs.contains_key(&format!("good-{i}")))
        },
    )
    .await;

    // The dead letter: the original body and headers, the run count, the queue and the reason.
    let (connection, channel) = common::raw_channel(&names.address).await;
    let dead = names.dead_letter(&channel).await;
    assert_eq!(dead.data, b"poison");
    assert_eq!(
        dead.routing_key.as_str(),
        topic,
        "dead letters keep their topic as routing key"
    );
    let headers = dead
        .properties
        .headers()
        .clone()
        .expect("dead letter headers");
    let header = |key: &str| headers.inner().get(key).cloned();
    assert_eq!(
        header("x-micro-attempts"),
        Some(AMQPValue::LongUInt(ATTEMPTS))
    );
    assert_eq!(
        header("x-job"),
        Some(AMQPValue::LongString("poison".into()))
    );
    assert_eq!(
        header("x-micro-dead-letter-queue"),
        Some(AMQPValue::LongString(queue.as_str().into()))
    );
    match header("x-micro-dead-letter-reason") {
        Some(AMQPValue::LongString(reason)) => {
            assert_eq!(reason.as_bytes(), b"the poison message again")
        }
        other => panic!("dead-letter reason: {other:?}"),
    }
    dead.ack(BasicAckOptions::default()).await.expect("ack");

    // Exactly N runs, then no more; the good messages once each.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(
        runs.get("poison"),
        Some(&ATTEMPTS),
        "runs of the poison message"
    );
    let good: BTreeSet<_> = runs
        .iter()
        .filter(|(body, _)| body.starts_with("good-"))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(good, BTreeSet::from([1]), "good messages ran once each");

    names
        .tear_down(subscription, broker, connection, &channel)
        .await;
}

/// A typed subscriber rejects a message that does not decode: it is dead-lettered after one
/// run, not retried `max_attempts` times.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_typed_message_is_dead_lettered_at_once() {
    let names = Names::new("undecodable");
    let (topic, queue) = (names.topic.clone(), names.queue.clone());
    let broker = common::broker(names.options(5)).await;
    let decoded: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sink = decoded.clone();
    let typed = micro_core::broker::typed(move |value: prost_types::Duration, _| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("lock").push(value.seconds);
            Ok(())
        }
    });
    let subscription = broker
        .subscribe(&topic, typed, SubscribeOptions::queue(&queue))
        .await
        .expect("subscribe");
    broker
        .publish(&topic, Message::new(vec![0xff, 0xff, 0xff]))
        .await
        .expect("publish garbage");
    let broker_dyn: &dyn Broker = &broker;
    broker_dyn
        .publish_message(
            &topic,
            &prost_types::Duration {
                seconds: 42,
                nanos: 0,
            },
        )
        .await
        .expect("publish typed");

    let (connection, channel) = common::raw_channel(&names.address).await;
    let dead = names.dead_letter(&channel).await;
    assert_eq!(dead.data, vec![0xff, 0xff, 0xff]);
    let headers = dead.properties.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("x-micro-attempts").cloned(),
        Some(AMQPValue::LongUInt(1)),
        "dead-lettered after one run"
    );
    match headers.inner().get("x-micro-dead-letter-reason") {
        Some(AMQPValue::LongString(reason)) => assert!(
            String::from_utf8_lossy(reason.as_bytes()).contains("cannot decode"),
            "reason names the decode failure"
        ),
        other => panic!("dead-letter reason: {other:?}"),
    }
    dead.ack(BasicAckOptions::default()).await.expect("ack");
    eventually(
        Duration::from_secs(10),
        "the good message decoded",
        || async { *decoded.lock().expect("lock") == [42] },
    )
    .await;

    names
        .tear_down(subscription, broker, connection, &channel)
        .await;
}

/// A test's own topic, queue, and dead-letter exchange and queue, so what it finds there is
/// its own.
struct Names {
    address: String,
    topic: String,
    queue: String,
    dead_exchange: String,
    dead_queue: String,
}

impl Names {
    fn new(what: &str) -> Self {
        Names {
            address: common::address(),
            topic: common::unique(&format!("test.{what}")),
            queue: common::unique(&format!("test-{what}")),
            dead_exchange: common::unique("test.dead-letter"),
            dead_queue: common::unique("test-dead-letter"),
        }
    }

    /// Options dead-lettering into this test's own exchange and queue after `max_attempts`.
    fn options(&self, max_attempts: u32) -> RabbitOptions {
        RabbitOptions::new(&self.address)
            .with_max_attempts(max_attempts)
            .with_dead_letter_exchange(&self.dead_exchange)
            .with_dead_letter_queue(Some(self.dead_queue.clone()))
    }

    /// The next dead letter, delivered to a consumer of the dead-letter queue on `channel`
    /// (unacknowledged) within 30 s. The consumer is cancelled once it has it.
    async fn dead_letter(&self, channel: &lapin::Channel) -> lapin::message::Delivery {
        let tag = ShortString::from(format!("dead-letter-reader-{:08x}", fastrand::u32(..)));
        let mut consumer = channel
            .basic_consume(
                self.dead_queue.as_str().into(),
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("no dead letter within 30 s")
            .expect("the dead-letter consumer is open")
            .expect("a dead-letter delivery");
        channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .expect("basic.cancel");
        delivery
    }

    /// Unsubscribes, closes the broker, and deletes what the test declared: its dead-letter
    /// exchange and queues.
    async fn tear_down(
        self,
        subscription: Box<dyn micro_core::broker::Subscription>,
        broker: micro_rabbitmq::RabbitBroker,
        connection: lapin::Connection,
        channel: &lapin::Channel,
    ) {
        subscription.unsubscribe().await.expect("unsubscribe");
        broker.close().await;
        let _ = channel
            .exchange_delete(
                self.dead_exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = connection.close(200, "done".into()).await;
        common::delete_queues(&self.address, &[&self.queue, &self.dead_queue]).await;
    }
}
