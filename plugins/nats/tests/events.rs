//! `NatsEvents` against the real NATS JetStream (`MICRO_NATS_ADDRESS`, default
//! `nats://127.0.0.1:4222`): the core conformance suite, and what is particular to JetStream —
//! the stream and consumer layout, headers, dead-lettering on a nacked last delivery, consumer
//! clean-up and updates. Every stream a test creates is deleted when it ends.

use crate::events_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use bytes::Bytes;
use events_support::{TestTopic, stream_exists};
use futures::StreamExt;
use micro_core::Events;
use micro_core::conformance::{PROMPT, eventually, next};
use micro_core::events::{ConsumeOptions, DELIVERIES, ORIGINAL_ID, ORIGINAL_SEQUENCE, Offset};
use micro_nats::NatsEvents;
use micro_testkit::Wrapped;

/// `NatsEvents` that remembers the topics it touched and deletes their streams when dropped, so
/// the conformance cases (which know nothing of streams) leave nothing behind.
async fn cleaning() -> Arc<dyn Events> {
    let topics: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let touched = topics.clone();
    let events = Wrapped::new(events_support::events().await)
        .on_topic(move |topic| {
            touched.lock().expect("lock").insert(topic.to_string());
        })
        .on_drop(move || {
            let topics = std::mem::take(&mut *topics.lock().expect("lock"));
            events_support::delete_topics_blocking(
                &events_support::address(),
                topics.into_iter().collect(),
            );
        });
    Arc::new(events)
}

micro_core::events_conformance!(crate::events::cleaning());

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Topic `t` is stream `MICRO_EVENTS_<escaped t>` with the one subject `micro.events.<t>`; a
/// group is a durable pull consumer named after it, with the options as its settings.
#[tokio::test(flavor = "multi_thread")]
async fn topics_are_streams_and_groups_durable_consumers() {
    let events = events_support::events().await;
    let topic = TestTopic::new("layout");
    let group = format!("{}.billing", micro_core::conformance::unique("g"));
    let _stream = events
        .consume(
            &topic,
            ConsumeOptions::group(&group)
                .with_offset(Offset::Earliest)
                .with_ack_wait(Duration::from_secs(7))
                .with_max_deliveries(4),
        )
        .await
        .expect("consume");

    let name = NatsEvents::stream_name(&topic);
    assert!(
        name.starts_with("MICRO_EVENTS_test_2Eevents_2Elayout-"),
        "{name}"
    );
    let js = jetstream::new(events.client().clone());
    let mut stream = js.get_stream(&name).await.expect("the topic's stream");
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(
        info.config.subjects,
        [format!("micro.events.{}", topic.name)]
    );
    assert_eq!(info.config.subjects, [NatsEvents::subject(&topic)]);
    assert!(info.config.allow_direct);

    let durable = NatsEvents::durable_name(&group);
    assert!(!durable.contains('.'), "{durable}");
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&durable)
        .await
        .expect("the group's consumer");
    let config = &consumer.cached_info().config;
    assert_eq!(config.durable_name.as_deref(), Some(durable.as_str()));
    assert_eq!(config.deliver_policy, DeliverPolicy::All);
    assert_eq!(config.ack_policy, AckPolicy::Explicit);
    assert_eq!(config.ack_wait, Duration::from_secs(7));
    assert_eq!(
        config.max_deliver, 5,
        "max_deliveries + 1: the extra one dead-letters"
    );
}

/// What a consumer receives is exactly what `publish` returned — id, sequence, the server's
/// timestamp, metadata of any shape — and the id is the `Nats-Msg-Id` header, so a raw
/// re-publish with it is deduplicated.
#[tokio::test(flavor = "multi_thread")]
async fn delivered_events_equal_published_ones() {
    let events = events_support::events().await;
    let topic = TestTopic::new("roundtrip");
    let odd = metadata(&[
        ("plain", "value"),
        ("with:colon", "  padded  "),
        ("ключ", "line\r\nbreak"),
        ("100%", "50% off"),
        ("", "empty key"),
        ("Nats-Msg-Id", "not the id"),
    ]);
    let mut published = Vec::new();
    for n in 0..3 {
        let payload = Bytes::from(format!("payload {n}"));
        published.push(
            events
                .publish(&topic, payload, odd.clone())
                .await
                .expect("publish"),
        );
    }
    let mut stream = events
        .consume(
            &topic,
            ConsumeOptions::default().with_offset(Offset::Earliest),
        )
        .await
        .expect("consume");
    for sent in &published {
        let delivery = next(&mut stream, "a published event")
            .await
            .expect("delivery");
        assert_eq!(delivery.event, *sent, "delivered as published");
        delivery.ack().await.expect("ack");
    }

    let js = jetstream::new(events.client().clone());
    let ack = js
        .send_publish(
            NatsEvents::subject(&topic),
            jetstream::context::Publish::build()
                .payload(Bytes::from_static(b"again"))
                .message_id(&published[1].id),
        )
        .await
        .expect("raw publish")
        .await
        .expect("raw publish ack");
    assert!(ack.duplicate, "the event id is the Nats-Msg-Id: {ack:?}");
    assert_eq!(ack.sequence, published[1].sequence);

    // A message from a client that does not set an id still reads as an event.
    let raw = js
        .publish(NatsEvents::subject(&topic), Bytes::from_static(b"foreign"))
        .await
        .expect("raw publish")
        .await
        .expect("raw publish ack");
    let foreign = next(&mut stream, "the foreign message")
        .await
        .expect("delivery");
    assert_eq!(foreign.event.sequence, raw.sequence);
    assert_eq!(
        foreign.event.id,
        format!("{}-{}", NatsEvents::stream_name(&topic), raw.sequence)
    );
    assert!(foreign.event.metadata.is_empty());
    foreign.ack().await.expect("ack");
}

/// A nack on the last allowed delivery dead-letters the event at once (no wait for ack_wait)
/// and terminates it.
#[tokio::test(flavor = "multi_thread")]
async fn nack_on_the_last_delivery_dead_letters_at_once() {
    let events = events_support::events().await;
    let topic = TestTopic::new("lastnack");
    let ack_wait = PROMPT * 3;
    let options = ConsumeOptions::group(micro_core::conformance::unique("nackers"))
        .with_ack_wait(ack_wait)
        .with_max_deliveries(2);
    let mut stream = events.consume(&topic, options).await.expect("consume");
    let poison = events
        .publish(
            &topic,
            Bytes::from_static(b"poison"),
            metadata(&[("k", "v")]),
        )
        .await
        .expect("publish");
    for deliveries in 1..=2 {
        let delivery = next(&mut stream, "the poison").await.expect("delivery");
        assert_eq!(
            (delivery.event.id.as_str(), delivery.deliveries),
            (poison.id.as_str(), deliveries)
        );
        delivery.nack().await.expect("nack");
    }
    let mut dead = micro_testkit::dead_letters(&events, &topic).await;
    // `next` waits PROMPT, a third of ack_wait: only the nack can have dead-lettered it.
    let letter = next(&mut dead, "the dead letter").await.expect("delivery");
    assert_eq!(letter.event.payload, poison.payload);
    assert_eq!(letter.event.id, format!("{}.dead-letter", poison.id));
    let expected = metadata(&[
        ("k", "v"),
        (ORIGINAL_ID, &poison.id),
        (ORIGINAL_SEQUENCE, "1"),
        (DELIVERIES, "2"),
    ]);
    assert_eq!(letter.event.metadata, expected);
    letter.ack().await.expect("ack");

    events
        .publish(&topic, Bytes::from_static(b"next"), BTreeMap::new())
        .await
        .expect("publish");
    let after = next(&mut stream, "the event after the poison")
        .await
        .expect("delivery");
    assert_eq!(
        after.event.payload,
        Bytes::from_static(b"next"),
        "the poison is not delivered a third time"
    );
    after.ack().await.expect("ack");
}

/// A consumer without a group is an ephemeral consumer, deleted when its stream is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn ephemeral_consumers_go_away_with_their_stream() {
    let events = events_support::events().await;
    let topic = TestTopic::new("ephemeral");
    let js = jetstream::new(events.client().clone());
    let consumers = || async {
        let stream = js
            .get_stream(NatsEvents::stream_name(&topic))
            .await
            .expect("the topic's stream");
        stream.consumer_names().count().await
    };
    let first = events
        .consume(&topic, ConsumeOptions::default())
        .await
        .expect("consume");
    let second = events
        .consume(&topic, ConsumeOptions::default())
        .await
        .expect("consume");
    assert_eq!(consumers().await, 2);
    drop(first);
    eventually(PROMPT, "the dropped consumer is deleted", || async {
        consumers().await == 1
    })
    .await;
    drop(second);
    eventually(PROMPT, "both consumers are deleted", || async {
        consumers().await == 0
    })
    .await;
}

/// A group consumed again with other `ack_wait` and `max_deliveries` has its consumer updated;
/// its position is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_consumed_with_new_settings_is_updated() {
    let events = events_support::events().await;
    let topic = TestTopic::new("update");
    let group = micro_core::conformance::unique("updated");
    let js = jetstream::new(events.client().clone());
    let config = || async {
        let stream = js
            .get_stream(NatsEvents::stream_name(&topic))
            .await
            .expect("stream");
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(&NatsEvents::durable_name(&group))
            .await
            .expect("consumer");
        consumer.cached_info().config.clone()
    };
    let mut stream = events
        .consume(
            &topic,
            ConsumeOptions::group(&group).with_offset(Offset::Earliest),
        )
        .await
        .expect("consume");
    events
        .publish(&topic, Bytes::from_static(b"one"), BTreeMap::new())
        .await
        .expect("publish");
    next(&mut stream, "one")
        .await
        .expect("delivery")
        .ack()
        .await
        .expect("ack");
    drop(stream);
    assert_eq!(
        (config().await.ack_wait, config().await.max_deliver),
        (Duration::from_secs(30), 6)
    );

    let mut stream = events
        .consume(
            &topic,
            ConsumeOptions::group(&group)
                .with_ack_wait(Duration::from_secs(3))
                .with_max_deliveries(2),
        )
        .await
        .expect("consume again");
    let config = config().await;
    assert_eq!(
        (config.ack_wait, config.max_deliver),
        (Duration::from_secs(3), 3)
    );
    events
        .publish(&topic, Bytes::from_static(b"two"), BTreeMap::new())
        .await
        .expect("publish");
    let two = next(&mut stream, "two").await.expect("delivery");
    assert_eq!(two.event.sequence, 2, "the group kept its position");
    two.ack().await.expect("ack");
}

/// Deleting a topic deletes its stream; publishing to it again starts a new one from sequence 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_topic_starts_again() {
    let events = events_support::events().await;
    let topic = TestTopic::new("deleted");
    let first = events
        .publish(&topic, Bytes::from_static(b"a"), BTreeMap::new())
        .await
        .expect("publish");
    assert_eq!(first.sequence, 1);
    // Deleted behind this instance's back (it has the stream cached).
    let other = events_support::events().await;
    other.delete_topic(&topic).await.expect("delete");
    assert!(!stream_exists(&events, &NatsEvents::stream_name(&topic)).await);
    let again = events
        .publish(&topic, Bytes::from_static(b"b"), BTreeMap::new())
        .await
        .expect("publish after the stream was deleted");
    assert_eq!(again.sequence, 1, "a new stream");
    events.delete_topic(&topic).await.expect("delete");
    events
        .delete_topic(&topic)
        .await
        .expect("deleting a missing topic is fine");
}

/// `install` registers `nats` for the events slot; the factory connects to the events address
/// and fails naming an unreachable one.
#[tokio::test(flavor = "multi_thread")]
async fn installed_as_nats_for_events() {
    let mut catalog = micro_core::Catalog::new();
    micro_nats::install(&mut catalog);
    assert!(catalog.events_names().contains(&"nats".to_string()));
    let options = micro_testkit::test_options("events-catalog-test");
    let events = catalog
        .events_named("nats", Some(events_support::address()), &options)
        .await
        .expect("events from the catalog");
    assert_eq!(events.name(), "nats");
    let topic = TestTopic::new("catalog");
    let event = events
        .publish(&topic, Bytes::from_static(b"x"), BTreeMap::new())
        .await
        .expect("publish through the catalog's events");
    assert_eq!(event.sequence, 1);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let unreachable = format!("nats://127.0.0.1:{port}");
    let error = catalog
        .events_named("nats", Some(unreachable.clone()), &options)
        .await
        .err()
        .expect("nothing listens there")
        .to_string();
    assert!(error.contains(&unreachable), "{error}");
}

/// An event over the server's `max_payload` is refused before it is sent (the server would drop
/// the connection), naming the sizes; the connection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_max_payload_is_refused() {
    let events = events_support::events().await;
    let topic = TestTopic::new("large");
    let max = events.client().server_info().max_payload;
    let error = events
        .publish(&topic, Bytes::from(vec![b'x'; max + 1]), BTreeMap::new())
        .await
        .expect_err("over max_payload");
    assert!(
        matches!(error, micro_core::Error::Invalid { what: "event", .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&max.to_string()), "{error}");
    let small = events
        .publish(&topic, Bytes::from_static(b"small"), BTreeMap::new())
        .await
        .expect("a small event after the refused one");
    assert_eq!(small.sequence, 1);
}
