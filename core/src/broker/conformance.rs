//! The conformance suite every [`Broker`] implementation must pass.
//!
//! Run it with [`broker_conformance!`](crate::broker_conformance). Topics and queues are unique
//! per case, so cases can share one real backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::Error;
use crate::broker::{Broker, Message, SubscribeOptions, Subscription, handler};
use crate::conformance::{PROMPT, eventually, unique};

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression giving an
/// `Arc<dyn Broker>`.
#[macro_export]
macro_rules! broker_conformance {
    ($make:expr) => {
        mod broker_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::broker::conformance as suite;
            #[tokio::test(flavor = "multi_thread")]
            async fn broadcast_reaches_every_subscriber() {
                suite::broadcast_reaches_every_subscriber($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn queue_group_shares_messages() {
                suite::queue_group_shares_messages($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn handler_error_redelivers() {
                suite::handler_error_redelivers($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn headers_round_trip() {
                suite::headers_round_trip($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn topics_are_separate() {
                suite::topics_are_separate($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn unsubscribe_stops_delivery() {
                suite::unsubscribe_stops_delivery($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn concurrent_publishers() {
                suite::concurrent_publishers($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn refuses_unroutable_topics() {
                suite::refuses_unroutable_topics($make.await).await
            }
        }
    };
}

/// Counts deliveries per subscriber and per message body.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<HashMap<(usize, Bytes), usize>>>);

impl Tally {
    async fn subscribe(
        &self,
        broker: &dyn Broker,
        topic: &str,
        member: usize,
        options: SubscribeOptions,
    ) -> Box<dyn Subscription> {
        let tally = self.clone();
        let on_message = handler(move |message: Message| {
            let tally = tally.clone();
            async move {
                *tally
                    .0
                    .lock()
                    .expect("tally lock")
                    .entry((member, message.body))
                    .or_default() += 1;
                Ok(())
            }
        });
        broker
            .subscribe(topic, on_message, options)
            .await
            .expect("subscribe")
    }

    fn total(&self) -> usize {
        self.0.lock().expect("tally lock").values().sum()
    }

    fn per_member(&self, member: usize) -> usize {
        self.0
            .lock()
            .expect("tally lock")
            .iter()
            .filter(|((m, _), _)| *m == member)
            .map(|(_, n)| n)
            .sum()
    }

    fn per_body(&self) -> HashMap<Bytes, usize> {
        let mut counts = HashMap::new();
        for ((_, body), n) in self.0.lock().expect("tally lock").iter() {
            *counts.entry(body.clone()).or_default() += n;
        }
        counts
    }
}

async fn publish_numbered(broker: &dyn Broker, topic: &str, count: usize) {
    for i in 0..count {
        broker
            .publish(topic, Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
}

/// Subscribers without a queue each get every message.
pub async fn broadcast_reaches_every_subscriber(broker: Arc<dyn Broker>) {
    let topic = unique("conf.broadcast");
    let tally = Tally::default();
    let subs = [
        tally
            .subscribe(&*broker, &topic, 0, SubscribeOptions::default())
            .await,
        tally
            .subscribe(&*broker, &topic, 1, SubscribeOptions::default())
            .await,
    ];
    publish_numbered(&*broker, &topic, 100).await;
    eventually(PROMPT, "both subscribers get all 100", || async {
        tally.total() >= 200
    })
    .await;
    assert_eq!(tally.per_member(0), 100);
    assert_eq!(tally.per_member(1), 100);
    for sub in subs {
        sub.unsubscribe().await.expect("unsubscribe");
    }
}

/// 1 000 messages to a queue group of 3: each delivered to exactly one member, none lost, and
/// every member gets some.
pub async fn queue_group_shares_messages(broker: Arc<dyn Broker>) {
    let topic = unique("conf.group");
    let queue = SubscribeOptions::queue(unique("conf-workers"));
    let tally = Tally::default();
    let mut subs = Vec::new();
    for member in 0..3 {
        subs.push(
            tally
                .subscribe(&*broker, &topic, member, queue.clone())
                .await,
        );
    }
    publish_numbered(&*broker, &topic, 1000).await;
    eventually(PROMPT * 3, "1000 deliveries", || async {
        tally.total() >= 1000
    })
    .await;
    // Give stray duplicates a moment to show up before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_body = tally.per_body();
    assert_eq!(per_body.len(), 1000, "every message delivered");
    assert!(
        per_body.values().all(|&n| n == 1),
        "no message delivered twice"
    );
    for member in 0..3 {
        assert!(
            tally.per_member(member) > 0,
            "member {member} got none: the group is not shared"
        );
    }
    for sub in subs {
        sub.unsubscribe().await.expect("unsubscribe");
    }
}

/// A handler that fails the first attempt of every message still sees every message succeed.
pub async fn handler_error_redelivers(broker: Arc<dyn Broker>) {
    let topic = unique("conf.redeliver");
    let attempts: Arc<Mutex<HashMap<Bytes, usize>>> = Arc::default();
    let seen = attempts.clone();
    let failing_once = handler(move |message: Message| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().expect("attempts lock");
            let n = seen.entry(message.body).or_default();
            *n += 1;
            if *n == 1 {
                Err("first attempt fails".into())
            } else {
                Ok(())
            }
        }
    });
    let sub = broker
        .subscribe(
            &topic,
            failing_once,
            SubscribeOptions::queue(unique("conf-retry")),
        )
        .await
        .expect("subscribe");
    publish_numbered(&*broker, &topic, 10).await;
    eventually(
        PROMPT * 2,
        "every message redelivered after its failure",
        || async {
            let attempts = attempts.lock().expect("attempts lock");
            attempts.len() == 10 && attempts.values().all(|&n| n >= 2)
        },
    )
    .await;
    sub.unsubscribe().await.expect("unsubscribe");
}

/// Headers and binary bodies arrive as sent.
pub async fn headers_round_trip(broker: Arc<dyn Broker>) {
    let topic = unique("conf.headers");
    let received: Arc<Mutex<Vec<Message>>> = Arc::default();
    let sink = received.clone();
    let sub = broker
        .subscribe(
            &topic,
            handler(move |m| {
                let sink = sink.clone();
                async move {
                    sink.lock().expect("lock").push(m);
                    Ok(())
                }
            }),
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");
    let sent = Message::new(Bytes::from_static(&[0, 159, 146, 150, 255]))
        .with_header("content-type", "application/octet-stream")
        .with_header("x-trace-id", "abc123");
    broker.publish(&topic, sent.clone()).await.expect("publish");
    eventually(PROMPT, "message received", || async {
        !received.lock().expect("lock").is_empty()
    })
    .await;
    let got = received.lock().expect("lock")[0].clone();
    assert_eq!(got.body, sent.body);
    for (key, value) in &sent.header {
        assert_eq!(got.header.get(key), Some(value), "header {key}");
    }
    sub.unsubscribe().await.expect("unsubscribe");
}

/// A subscriber sees its topic only.
pub async fn topics_are_separate(broker: Arc<dyn Broker>) {
    let (a, b) = (unique("conf.topic-a"), unique("conf.topic-b"));
    let tally = Tally::default();
    let sub = tally
        .subscribe(&*broker, &a, 0, SubscribeOptions::default())
        .await;
    broker
        .publish(&b, Message::new("not for a"))
        .await
        .expect("publish b");
    broker
        .publish(&a, Message::new("for a"))
        .await
        .expect("publish a");
    eventually(PROMPT, "message on a", || async { tally.total() >= 1 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        tally.per_body().keys().cloned().collect::<Vec<_>>(),
        [Bytes::from("for a")]
    );
    sub.unsubscribe().await.expect("unsubscribe");
}

/// After unsubscribe, a subscriber gets nothing more.
pub async fn unsubscribe_stops_delivery(broker: Arc<dyn Broker>) {
    let topic = unique("conf.unsub");
    let tally = Tally::default();
    let gone = tally
        .subscribe(&*broker, &topic, 0, SubscribeOptions::default())
        .await;
    let stays = tally
        .subscribe(&*broker, &topic, 1, SubscribeOptions::default())
        .await;
    broker
        .publish(&topic, Message::new("before"))
        .await
        .expect("publish");
    eventually(PROMPT, "both got `before`", || async { tally.total() >= 2 }).await;
    gone.unsubscribe().await.expect("unsubscribe");
    broker
        .publish(&topic, Message::new("after"))
        .await
        .expect("publish");
    eventually(PROMPT, "the remaining subscriber got `after`", || async {
        tally.per_member(1) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tally.per_member(0), 1, "nothing after unsubscribe");
    stays.unsubscribe().await.expect("unsubscribe");
}

/// Eight tasks publishing at once lose nothing.
pub async fn concurrent_publishers(broker: Arc<dyn Broker>) {
    let topic = unique("conf.concurrent");
    let tally = Tally::default();
    let sub = tally
        .subscribe(&*broker, &topic, 0, SubscribeOptions::default())
        .await;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    broker
                        .publish(&topic, Message::new(format!("t{t}-{i}")))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher task");
    }
    eventually(PROMPT, "400 messages", || async {
        tally.per_body().len() >= 400
    })
    .await;
    sub.unsubscribe().await.expect("unsubscribe");
}

/// Publish and subscribe refuse a topic that is empty, blank, has whitespace or a wildcard
/// ([`validate_topic`](crate::broker::validate_topic)), with an invalid-argument error naming the
/// topic, before reaching the backend.
pub async fn refuses_unroutable_topics(broker: Arc<dyn Broker>) {
    let named = |result: crate::Result<()>, topic: &str, op: &str| match result {
        Err(error @ Error::Invalid { what: "topic", .. }) => assert!(
            error.to_string().contains(&format!("{topic:?}")),
            "{op} {topic:?}: the error names the topic: {error}"
        ),
        other => panic!("{op} {topic:?}: want an invalid-topic error, got {other:?}"),
    };
    let wildcard = format!("{}.*", unique("conf.wild"));
    for topic in ["", " ", "conf bad", wildcard.as_str()] {
        named(
            broker.publish(topic, Message::new("x")).await,
            topic,
            "publish",
        );
        let ignore = handler(|_| async { Ok(()) });
        let subscribed = broker
            .subscribe(topic, ignore, SubscribeOptions::default())
            .await;
        named(subscribed.map(|_| ()), topic, "subscribe");
    }
}
