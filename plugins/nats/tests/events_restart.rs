//! The NATS server restarted mid-stream: a private `nats-server -js` is stopped and started
//! again on the same port and store while publishers publish and a group consumes. Publishers
//! and consumers reconnect by themselves, every publish that returned `Ok` is stored and
//! handled, and after the restart events still flow.

use crate::events_support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use events_support::server::PrivateNats;
use futures::StreamExt;
use micro_core::Events;
use micro_core::events::{ConsumeOptions, Offset};
use micro_nats::NatsEvents;
use micro_testkit::checker::{Checker, id_of};
use micro_testkit::eventually;

const EVENTS: u64 = 3_000;
const PUBLISHERS: u64 = 4;
/// Events handled before the server is stopped.
const BEFORE_RESTART: usize = 1_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_loses_nothing_acknowledged() {
    let _heavy = crate::common::HEAVY.lock().await;
    let mut server = PrivateNats::start();
    let topic = events_support::topic("restart");
    let group = micro_core::conformance::unique("restarted");
    let options = ConsumeOptions::group(&group)
        .with_offset(Offset::Earliest)
        .with_ack_wait(Duration::from_secs(2));
    let publisher = events_support::connect(&server.address)
        .await
        .with_publish_timeout(Duration::from_secs(60));
    let checker = Checker::default();
    let errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let mut members = Vec::new();
    for member in 0..2 {
        let events = events_support::connect(&server.address).await;
        let mut stream = events
            .consume(&topic, options.clone())
            .await
            .expect("consume");
        let (checker, errors) = (checker.clone(), errors.clone());
        members.push(tokio::spawn(async move {
            while let Some(delivery) = stream.next().await {
                let delivery = match delivery {
                    Ok(delivery) => delivery,
                    Err(_) => {
                        // The server is away: the stream reports it and goes on.
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                };
                let id = id_of(&delivery.event.payload).expect("an event with an id");
                checker.consumed(id, member);
                // An ack lost in the restart only means the event comes again.
                let _ = delivery.ack().await;
            }
        }));
    }

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (publisher, topic, checker) = (publisher.clone(), topic.clone(), checker.clone());
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for id in (p..EVENTS).step_by(PUBLISHERS as usize) {
                    match publisher
                        .publish(&topic, Bytes::from(format!("id:{id}")), Default::default())
                        .await
                    {
                        Ok(_) => checker.confirmed(id),
                        Err(err) => failed.push((id, err.to_string())),
                    }
                }
                failed
            })
        })
        .collect();

    eventually(
        Duration::from_secs(60),
        "events handled before the restart",
        || async { checker.settled() >= BEFORE_RESTART },
    )
    .await;
    let confirmed_before = checker.confirmed_count();
    server = tokio::task::spawn_blocking(move || {
        server.stop();
        server.restart();
        server
    })
    .await
    .expect("restart the server");
    let restarted_at = checker.confirmed_count();

    let mut failed = Vec::new();
    for task in publishers {
        failed.extend(task.await.expect("publisher task"));
    }
    assert!(
        failed.is_empty(),
        "publishes failed across the restart: {failed:?}\nserver log:\n{}",
        server.log()
    );
    assert!(
        (restarted_at as u64) < EVENTS,
        "the restart came after the last publish: it tested nothing"
    );
    eventually(
        Duration::from_secs(120),
        "every published event handled after the restart",
        || async { checker.settled() as u64 == EVENTS },
    )
    .await;
    for member in &members {
        member.abort();
    }

    // What was acknowledged to the publishers is in the stream: replay it all.
    let replayer = events_support::connect(&server.address).await;
    let mut replay = replayer
        .consume(
            &topic,
            ConsumeOptions::default()
                .with_offset(Offset::Earliest)
                .with_auto_ack(),
        )
        .await
        .expect("replay");
    let mut stored = BTreeSet::new();
    let mut sequences = BTreeSet::new();
    while stored.len() < EVENTS as usize {
        let delivery = tokio::time::timeout(Duration::from_secs(10), replay.next())
            .await
            .expect("the replay goes on")
            .expect("the replay does not end")
            .expect("a stored event");
        stored.insert(id_of(&delivery.event.payload).expect("an id"));
        assert!(
            sequences.insert(delivery.event.sequence),
            "sequence {} replayed twice",
            delivery.event.sequence
        );
    }
    let lost = checker.lost();
    println!(
        "events restart: published {} ({} before the stop, {} when it was back), handled all, \
         lost {}, duplicates {}, stream errors seen by consumers {}",
        checker.confirmed_count(),
        confirmed_before,
        restarted_at,
        lost.len(),
        checker.duplicates().len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(
        stored,
        (0..EVENTS).collect(),
        "the stream holds every event once"
    );
    let mut stream = async_nats::jetstream::new(replayer.client().clone())
        .get_stream(NatsEvents::stream_name(&topic))
        .await
        .expect("the topic's stream");
    let state = stream.info().await.expect("stream info").state.clone();
    assert_eq!(
        (state.messages, state.last_sequence),
        (EVENTS, EVENTS),
        "no event stored twice (publish retries are deduplicated)"
    );
    drop(replay);
    replayer
        .delete_topic(&topic)
        .await
        .expect("delete the topic");
}
