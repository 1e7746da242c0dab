//! The conformance suite every [`Events`] implementation must pass.
//!
//! Run it with [`events_conformance!`](crate::events_conformance). Topics and groups are unique
//! per case, so cases can share one real backend. Cases that wait for a redelivery use
//! [`ACK_WAIT`], and their deadlines are derived from it.
//!
//! Just over 600 lines: one file because the macro lists every case and the cases share their
//! fixtures; a case is a function a reader finds by the name the macro gives it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use crate::Error;
use crate::conformance::{PROMPT, eventually, unique};
use crate::events::{
    ConsumeOptions, DELIVERIES, Delivery, Event, EventStream, Events, ORIGINAL_ID,
    ORIGINAL_SEQUENCE, Offset, dead_letter_topic,
};

/// The ack wait of the cases that wait for a redelivery: short, so the suite stays quick.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// Generates one `#[tokio::test]` per conformance case; `$make` is an async expression giving an
/// `Arc<dyn Events>`.
#[macro_export]
macro_rules! events_conformance {
    ($make:expr) => {
        mod events_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::events::conformance as suite;
            #[tokio::test(flavor = "multi_thread")]
            async fn publish_numbers_events_per_topic() {
                suite::publish_numbers_events_per_topic($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn latest_sees_only_later_events() {
                suite::latest_sees_only_later_events($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn earliest_replays_everything_in_order() {
                suite::earliest_replays_everything_in_order($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn sequence_offset_starts_there() {
                suite::sequence_offset_starts_there($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn time_offset_starts_at_the_first_event_at_or_after() {
                suite::time_offset_starts_at_the_first_event_at_or_after($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn consumers_without_a_group_each_get_every_event() {
                suite::consumers_without_a_group_each_get_every_event($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn group_shares_events() {
                suite::group_shares_events($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn group_resumes_after_its_last_ack() {
                suite::group_resumes_after_its_last_ack($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn unacked_is_redelivered_after_ack_wait() {
                suite::unacked_is_redelivered_after_ack_wait($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn nack_redelivers_promptly() {
                suite::nack_redelivers_promptly($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn poison_event_is_dead_lettered_without_blocking_others() {
                suite::poison_event_is_dead_lettered_without_blocking_others($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn auto_ack_does_not_redeliver() {
                suite::auto_ack_does_not_redeliver($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn refuses_invalid_topics_and_groups() {
                suite::refuses_invalid_topics_and_groups($make.await).await
            }
        }
    };
}

/// Publishes `e<from>`..`e<from+count-1>` on `topic`, each with metadata `n` = its number.
async fn publish_numbered(
    events: &dyn Events,
    topic: &str,
    from: usize,
    count: usize,
) -> Vec<Event> {
    let mut published = Vec::with_capacity(count);
    for n in from..from + count {
        let metadata = BTreeMap::from([("n".to_string(), n.to_string())]);
        let event = events
            .publish(topic, Bytes::from(format!("e{n}")), metadata)
            .await
            .unwrap_or_else(|e| panic!("publish e{n} on {topic}: {e}"));
        published.push(event);
    }
    published
}

async fn consume(events: &dyn Events, topic: &str, options: ConsumeOptions) -> EventStream {
    events
        .consume(topic, options.clone())
        .await
        .unwrap_or_else(|e| panic!("consume {topic} with {options:?}: {e}"))
}

/// The next delivery, or a panic naming `what` when none comes by `until`.
async fn take_by(stream: &mut EventStream, until: Instant, what: &str) -> Delivery {
    match tokio::time::timeout_at(until, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("{what}: the stream failed: {e}"),
        Ok(None) => panic!("{what}: the stream ended"),
        Err(_) => panic!("{what}: nothing arrived in time"),
    }
}

/// The next delivery within [`PROMPT`].
async fn take(stream: &mut EventStream, what: &str) -> Delivery {
    take_by(stream, Instant::now() + PROMPT, what).await
}

/// Panics if anything is delivered within `period`.
async fn quiet(stream: &mut EventStream, period: Duration, what: &str) {
    match tokio::time::timeout(period, stream.next()).await {
        Err(_) => {}
        Ok(Some(Ok(delivery))) => panic!(
            "{what}: unexpected delivery of {:?} (sequence {}, delivery {})",
            delivery.event.payload, delivery.event.sequence, delivery.deliveries
        ),
        Ok(Some(Err(e))) => panic!("{what}: the stream failed: {e}"),
        Ok(None) => panic!("{what}: the stream ended"),
    }
}

async fn ack(delivery: Delivery) {
    let sequence = delivery.event.sequence;
    delivery
        .ack()
        .await
        .unwrap_or_else(|e| panic!("ack sequence {sequence}: {e}"));
}

/// `publish` returns the event as stored: a unique id, sequences 1, 2, 3, ... per topic,
/// timestamps of now in publish order, payload and metadata as sent.
pub async fn publish_numbers_events_per_topic(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-publish");
    let before = SystemTime::now() - Duration::from_secs(5);
    let published = publish_numbered(&*events, &topic, 0, 5).await;
    let after = SystemTime::now() + Duration::from_secs(5);
    let mut ids = BTreeSet::new();
    for (n, event) in published.iter().enumerate() {
        assert_eq!(event.topic, topic);
        assert_eq!(event.sequence, n as u64 + 1, "sequence of the event {n}");
        assert_eq!(event.payload, Bytes::from(format!("e{n}")));
        assert_eq!(
            event.metadata.get("n"),
            Some(&n.to_string()),
            "metadata as sent: {:?}",
            event.metadata
        );
        assert!(!event.id.is_empty(), "event {n} has no id");
        assert!(ids.insert(event.id.clone()), "id {} given twice", event.id);
        assert!(
            before <= event.timestamp && event.timestamp <= after,
            "timestamp of event {n} is not now: {:?}",
            event.timestamp
        );
    }
    for pair in published.windows(2) {
        assert!(
            pair[0].timestamp <= pair[1].timestamp,
            "timestamps go back: {:?} then {:?}",
            pair[0].timestamp,
            pair[1].timestamp
        );
    }
    let other = unique("conf.ev-publish-other");
    let first = publish_numbered(&*events, &other, 0, 1).await;
    assert_eq!(first[0].sequence, 1, "every topic is numbered from 1");
    assert!(!ids.contains(&first[0].id), "ids are unique across topics");
}

/// A consumer from [`Offset::Latest`] sees what is published after it starts, nothing before.
pub async fn latest_sees_only_later_events(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-latest");
    publish_numbered(&*events, &topic, 0, 3).await;
    let mut stream = consume(&*events, &topic, ConsumeOptions::default()).await;
    publish_numbered(&*events, &topic, 3, 3).await;
    for n in 3..6 {
        let delivery = take(&mut stream, &format!("event e{n}")).await;
        assert_eq!(
            (delivery.event.sequence, delivery.event.payload.clone()),
            (n as u64 + 1, Bytes::from(format!("e{n}"))),
            "Latest starts after the events published before the consumer"
        );
        ack(delivery).await;
    }
}

/// [`Offset::Earliest`] replays every stored event in order, as published, then follows the
/// topic.
pub async fn earliest_replays_everything_in_order(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-earliest");
    let published = publish_numbered(&*events, &topic, 0, 10).await;
    let mut stream = consume(
        &*events,
        &topic,
        ConsumeOptions::default().with_offset(Offset::Earliest),
    )
    .await;
    for sent in &published {
        let delivery = take(
            &mut stream,
            &format!("replay of sequence {}", sent.sequence),
        )
        .await;
        let got = &delivery.event;
        assert_eq!(
            (got.sequence, &got.id, &got.payload, &got.topic),
            (sent.sequence, &sent.id, &sent.payload, &sent.topic),
            "replayed in order, as published"
        );
        assert_eq!(got.metadata.get("n"), sent.metadata.get("n"), "metadata");
        assert_eq!(delivery.deliveries, 1, "a first delivery counts 1");
        ack(delivery).await;
    }
    publish_numbered(&*events, &topic, 10, 1).await;
    let live = take(&mut stream, "the event published after the replay").await;
    assert_eq!(live.event.sequence, 11);
    ack(live).await;
}

/// [`Offset::Sequence`] starts at that event.
pub async fn sequence_offset_starts_there(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-sequence");
    publish_numbered(&*events, &topic, 0, 10).await;
    let mut stream = consume(
        &*events,
        &topic,
        ConsumeOptions::default().with_offset(Offset::Sequence(4)),
    )
    .await;
    for sequence in 4..=10 {
        let delivery = take(&mut stream, &format!("sequence {sequence}")).await;
        assert_eq!(delivery.event.sequence, sequence, "Sequence(4) starts at 4");
        ack(delivery).await;
    }
}

/// [`Offset::Time`] starts at the first event published at or after that time.
pub async fn time_offset_starts_at_the_first_event_at_or_after(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-time");
    let first = publish_numbered(&*events, &topic, 0, 3).await;
    let last = first[2].timestamp;
    // Timestamps of the second batch must be later than the first's, at any backend resolution.
    eventually(PROMPT, "the clock moves past the first batch", || async {
        SystemTime::now() > last + Duration::from_millis(20)
    })
    .await;
    let between = last + Duration::from_millis(10);
    let second = publish_numbered(&*events, &topic, 3, 3).await;
    for (at, what) in [
        (second[0].timestamp, "its timestamp"),
        (between, "a time before it"),
    ] {
        let mut stream = consume(
            &*events,
            &topic,
            ConsumeOptions::default().with_offset(Offset::Time(at)),
        )
        .await;
        for sequence in 4..=6 {
            let delivery = take(&mut stream, &format!("sequence {sequence} from {what}")).await;
            assert_eq!(
                delivery.event.sequence, sequence,
                "Time({what}) starts at the first event at or after it"
            );
            ack(delivery).await;
        }
    }
}

/// Consumers without a group each get every event, including on a topic that had none when
/// they started.
pub async fn consumers_without_a_group_each_get_every_event(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-fanout");
    let mut a = consume(&*events, &topic, ConsumeOptions::default()).await;
    let mut b = consume(&*events, &topic, ConsumeOptions::default()).await;
    publish_numbered(&*events, &topic, 0, 5).await;
    for (name, stream) in [("a", &mut a), ("b", &mut b)] {
        for sequence in 1..=5 {
            let delivery = take(stream, &format!("consumer {name}, sequence {sequence}")).await;
            assert_eq!(delivery.event.sequence, sequence, "consumer {name}");
            ack(delivery).await;
        }
    }
}

/// 60 events to a group of 3: each delivered to exactly one member, none lost, and more than one
/// member gets some.
pub async fn group_shares_events(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-share");
    let group = ConsumeOptions::group(unique("conf-sharers"));
    let seen: Arc<Mutex<HashMap<u64, Vec<usize>>>> = Arc::default();
    let mut members = Vec::new();
    for member in 0..3 {
        let mut stream = consume(&*events, &topic, group.clone()).await;
        let seen = seen.clone();
        members.push(tokio::spawn(async move {
            while let Some(delivery) = stream.next().await {
                let delivery = delivery.expect("a delivery");
                seen.lock()
                    .expect("seen lock")
                    .entry(delivery.event.sequence)
                    .or_default()
                    .push(member);
                // Let the other members run between deliveries, as a handler that awaits does.
                tokio::task::yield_now().await;
                delivery.ack().await.expect("ack");
            }
        }));
    }
    publish_numbered(&*events, &topic, 0, 60).await;
    eventually(PROMPT, "60 events delivered to the group", || async {
        seen.lock().expect("seen lock").len() >= 60
    })
    .await;
    // A marker event after the 60: a backend that hands an event to two members does so when it
    // dispatches it, so once the marker is through, such a duplicate has shown.
    publish_numbered(&*events, &topic, 60, 1).await;
    eventually(
        PROMPT,
        "the marker event delivered to the group",
        || async { seen.lock().expect("seen lock").contains_key(&61) },
    )
    .await;
    for member in &members {
        member.abort();
    }
    let seen = seen.lock().expect("seen lock");
    let sequences: BTreeSet<u64> = seen.keys().copied().collect();
    assert_eq!(sequences, (1..=61).collect(), "every event delivered");
    let twice: Vec<_> = seen.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let busy: BTreeSet<usize> = seen.values().flatten().copied().collect();
    assert!(
        busy.len() >= 2,
        "only member {busy:?} got events: the group is not shared"
    );
}

/// A group consumed again (a restarted process) resumes after its last acknowledged event,
/// whatever offset it is given then; what it held unacknowledged comes again.
pub async fn group_resumes_after_its_last_ack(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-resume");
    let name = unique("conf-resumers");
    publish_numbered(&*events, &topic, 0, 10).await;
    let options = ConsumeOptions::group(&name).with_ack_wait(ACK_WAIT);
    let mut stream = consume(
        &*events,
        &topic,
        options.clone().with_offset(Offset::Earliest),
    )
    .await;
    for sequence in 1..=4 {
        let delivery = take(&mut stream, &format!("sequence {sequence}")).await;
        assert_eq!(
            delivery.event.sequence, sequence,
            "a new group from Earliest"
        );
        ack(delivery).await;
    }
    let held = take(&mut stream, "sequence 5").await;
    assert_eq!(held.event.sequence, 5);
    drop(held);
    drop(stream);

    // Latest would skip 5..10 if the group forgot its position.
    let mut stream = consume(&*events, &topic, options.with_offset(Offset::Latest)).await;
    let until = Instant::now() + ACK_WAIT + PROMPT;
    let mut resumed = BTreeSet::new();
    while resumed.len() < 6 {
        let delivery = take_by(
            &mut stream,
            until,
            &format!("sequences 5..=10, got {resumed:?}"),
        )
        .await;
        let sequence = delivery.event.sequence;
        assert!(
            sequence >= 5,
            "sequence {sequence} was acknowledged before the restart and came again"
        );
        resumed.insert(sequence);
        ack(delivery).await;
    }
    assert_eq!(resumed, (5..=10).collect());
    publish_numbered(&*events, &topic, 10, 1).await;
    let next = take(&mut stream, "the event after the restart").await;
    assert_eq!(next.event.sequence, 11);
    ack(next).await;
}

/// A delivery not acknowledged within `ack_wait` comes again, counted; once acknowledged, never.
pub async fn unacked_is_redelivered_after_ack_wait(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-ackwait");
    let options = ConsumeOptions::group(unique("conf-slow")).with_ack_wait(ACK_WAIT);
    let mut stream = consume(&*events, &topic, options).await;
    let sent = publish_numbered(&*events, &topic, 0, 1).await.remove(0);
    let first = take(&mut stream, "the first delivery").await;
    let delivered_at = Instant::now();
    assert_eq!(
        (first.event.id.as_str(), first.deliveries),
        (sent.id.as_str(), 1)
    );
    let again = take_by(
        &mut stream,
        Instant::now() + ACK_WAIT + PROMPT,
        "the redelivery after ack_wait",
    )
    .await;
    let waited = delivered_at.elapsed();
    assert_eq!(again.event.id, sent.id, "the same event again");
    assert_eq!(again.deliveries, 2, "the second delivery counts 2");
    assert!(
        waited >= ACK_WAIT / 2,
        "redelivered after {waited:?}, before ack_wait ({ACK_WAIT:?}) ran out"
    );
    drop(first);
    ack(again).await;
    quiet(&mut stream, ACK_WAIT * 2, "after the ack").await;
}

/// A nack has the event delivered again at once, not after `ack_wait`.
pub async fn nack_redelivers_promptly(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-nack");
    let ack_wait = PROMPT * 3;
    let options = ConsumeOptions::group(unique("conf-nackers")).with_ack_wait(ack_wait);
    let mut stream = consume(&*events, &topic, options).await;
    let sent = publish_numbered(&*events, &topic, 0, 1).await.remove(0);
    let first = take(&mut stream, "the first delivery").await;
    assert_eq!(first.deliveries, 1);
    first.nack().await.expect("nack");
    // `take` waits PROMPT, a third of ack_wait: only a nack brings it back this soon.
    let again = take(&mut stream, "the redelivery after a nack").await;
    assert_eq!(
        (again.event.id.as_str(), again.deliveries),
        (sent.id.as_str(), 2)
    );
    ack(again).await;
}

/// An event never processed (held past `ack_wait`, or nacked) is delivered `max_deliveries`
/// times, then published to the dead-letter topic with its id, sequence and delivery count,
/// and not delivered again; the events behind it flow meanwhile.
pub async fn poison_event_is_dead_lettered_without_blocking_others(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-poison");
    let options = ConsumeOptions::group(unique("conf-poisoned"))
        .with_ack_wait(ACK_WAIT)
        .with_max_deliveries(3);
    let mut stream = consume(&*events, &topic, options).await;
    let poison = events
        .publish(&topic, Bytes::from_static(b"poison"), BTreeMap::new())
        .await
        .expect("publish the poison");
    publish_numbered(&*events, &topic, 0, 5).await;

    let until = Instant::now() + ACK_WAIT * 3 + PROMPT;
    let mut held = Vec::new();
    let mut poison_deliveries = Vec::new();
    let mut good = BTreeSet::new();
    while good.len() < 5 || poison_deliveries.len() < 3 {
        let what =
            format!("5 events and 3 poison deliveries, got {good:?} and {poison_deliveries:?}");
        let delivery = take_by(&mut stream, until, &what).await;
        if delivery.event.id != poison.id {
            good.insert(delivery.event.sequence);
            ack(delivery).await;
            continue;
        }
        poison_deliveries.push(delivery.deliveries);
        match delivery.deliveries {
            // Held past ack_wait, as by a consumer that hangs or dies on it.
            1 | 3 => held.push(delivery),
            _ => {
                assert_eq!(
                    good.len(),
                    5,
                    "the events behind the poison waited for its redelivery"
                );
                delivery.nack().await.expect("nack the poison");
            }
        }
    }
    assert_eq!(
        poison_deliveries,
        [1, 2, 3],
        "delivery counts of the poison"
    );

    let mut dead = consume(
        &*events,
        &dead_letter_topic(&topic),
        ConsumeOptions::default().with_offset(Offset::Earliest),
    )
    .await;
    // The group's consumer goes on pulling meanwhile, as a live one does: nothing comes.
    let until = Instant::now() + ACK_WAIT + PROMPT;
    let what = "the dead letter after the last delivery's ack_wait";
    let letter = tokio::select! {
        letter = take_by(&mut dead, until, what) => letter,
        again = stream.next() => match again {
            Some(Ok(d)) => panic!(
                "{:?} delivered again after its last delivery (delivery {})",
                d.event.payload, d.deliveries
            ),
            Some(Err(e)) => panic!("the group's stream failed: {e}"),
            None => panic!("the group's stream ended"),
        },
    };
    assert_eq!(letter.event.topic, dead_letter_topic(&topic));
    assert_eq!(letter.event.payload, poison.payload, "the poison's payload");
    for (key, want) in [
        (ORIGINAL_ID, poison.id.clone()),
        (ORIGINAL_SEQUENCE, poison.sequence.to_string()),
        (DELIVERIES, "3".to_string()),
    ] {
        assert_eq!(
            letter.event.metadata.get(key),
            Some(&want),
            "dead-letter metadata {key}: {:?}",
            letter.event.metadata
        );
    }
    ack(letter).await;

    publish_numbered(&*events, &topic, 5, 1).await;
    let late = take(&mut stream, "an event after the dead letter").await;
    assert_eq!(late.event.payload, Bytes::from("e5"), "events keep flowing");
    ack(late).await;
    quiet(
        &mut stream,
        ACK_WAIT * 2,
        "the poison after its dead letter",
    )
    .await;
    quiet(&mut dead, ACK_WAIT / 2, "a second dead letter").await;
    drop(held);
}

/// With `auto_ack`, a delivery is acknowledged as it is made: never delivered again.
pub async fn auto_ack_does_not_redeliver(events: Arc<dyn Events>) {
    let topic = unique("conf.ev-autoack");
    let options = ConsumeOptions::group(unique("conf-auto"))
        .with_ack_wait(ACK_WAIT)
        .with_auto_ack();
    let mut stream = consume(&*events, &topic, options).await;
    publish_numbered(&*events, &topic, 0, 3).await;
    let mut held = Vec::new();
    for sequence in 1..=3 {
        let delivery = take(&mut stream, &format!("sequence {sequence}")).await;
        assert_eq!(delivery.event.sequence, sequence);
        held.push(delivery);
    }
    quiet(&mut stream, ACK_WAIT * 2, "auto-acknowledged events").await;
    drop(held);
}

/// Publish and consume refuse a topic [`validate_topic`](crate::broker::validate_topic)
/// refuses, and consume a group [`validate_group`](crate::events::validate_group) refuses, with
/// an invalid-argument error naming it.
pub async fn refuses_invalid_topics_and_groups(events: Arc<dyn Events>) {
    fn named<T>(result: crate::Result<T>, what: &str, name: &str, op: &str) {
        match result {
            Err(error @ Error::Invalid { what: w, .. }) if w == what => assert!(
                error.to_string().contains(&format!("{name:?}")),
                "{op} {name:?}: the error names the {what}: {error}"
            ),
            Err(other) => panic!("{op} {name:?}: want an invalid-{what} error, got {other:?}"),
            Ok(_) => panic!("{op} {name:?}: want an invalid-{what} error, it succeeded"),
        }
    }
    let wildcard = format!("{}.*", unique("conf.ev-wild"));
    for topic in ["", " ", "conf bad", "conf..ev", wildcard.as_str()] {
        named(
            events
                .publish(topic, Bytes::from_static(b"x"), BTreeMap::new())
                .await,
            "topic",
            topic,
            "publish",
        );
        named(
            events.consume(topic, ConsumeOptions::default()).await,
            "topic",
            topic,
            "consume",
        );
    }
    let topic = unique("conf.ev-groups");
    for group in ["", " ", "two words"] {
        named(
            events.consume(&topic, ConsumeOptions::group(group)).await,
            "group",
            group,
            "consume with group",
        );
    }
}
