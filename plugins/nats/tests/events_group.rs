//! 10 000 events to a group of 3 consumers on JetStream, one of which is killed part-way
//! (SIGKILL, in a child process) holding events it handled but never acknowledged: every
//! published event is handled at least once, none is lost, and an event is handled twice only if
//! the killed member held it.

use crate::events_support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use micro_core::Events;
use micro_core::events::{ConsumeOptions, Offset};
use micro_nats::NatsEvents;
use micro_testkit::checker::{Checker, id_of};
use micro_testkit::checker::{assert_none_lost, body_of, print_summary, publish_ids};
use micro_testkit::doomed::{Handled, Orders};
use micro_testkit::eventually;

const EVENTS: u64 = 10_000;
const PUBLISHERS: u64 = 8;
/// Events the doomed member handles and acknowledges before it starts holding them.
const DOOMED_HANDLES: usize = 500;
/// Events it holds (handled, never acknowledged) when it is killed, at least.
const DOOMED_HOLDS: usize = 40;
const PREFETCH: usize = 16;
/// Long enough that nothing the doomed member holds comes back before it is killed.
const ACK_WAIT: Duration = Duration::from_secs(3);
/// The child-process entry below, by its full name in the test binary.
const DOOMED_ENTRY: &str = "events_group::doomed_consumer";

/// Member 2 of the group, run by the test below as a child process it then kills.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child process of ten_thousand_events_to_three_consumers_none_lost"]
async fn doomed_consumer() {
    events_support::doomed::child_main().await;
}

/// A member that handles (records) and acknowledges every event until aborted.
async fn member(
    events: NatsEvents,
    topic: String,
    options: ConsumeOptions,
    checker: Checker,
    member: usize,
) -> tokio::task::JoinHandle<()> {
    let mut stream = events.consume(&topic, options).await.expect("consume");
    tokio::spawn(async move {
        while let Some(delivery) = stream.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(err) => {
                    eprintln!("member {member}: {err}");
                    continue;
                }
            };
            let id = id_of(&delivery.event.payload).expect("an event with an id");
            checker.consumed(id, member);
            if let Err(err) = delivery.ack().await {
                eprintln!("member {member}: ack {id}: {err}");
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_to_three_consumers_none_lost() {
    let _heavy = crate::common::HEAVY.lock().await;
    let address = events_support::address();
    let topic = events_support::TestTopic::new("group");
    let topic = &topic.name;
    let group = micro_core::conformance::unique("test-group");
    let options = ConsumeOptions::group(&group)
        .with_offset(Offset::Earliest)
        .with_ack_wait(ACK_WAIT);
    let publisher = events_support::events().await;
    let checker = Checker::default();
    let mut members = Vec::new();
    for m in 0..2 {
        let events = events_support::events().await.with_prefetch(PREFETCH);
        members.push(member(events, topic.clone(), options.clone(), checker.clone(), m).await);
    }
    // Member 2 is a process of its own, so killing it is that consumer dying.
    let orders = Orders {
        address: address.clone(),
        topic: topic.clone(),
        group: group.clone(),
        ack_wait: Some(ACK_WAIT),
        prefetch: PREFETCH,
        handle_first: DOOMED_HANDLES,
    };
    let recorder = checker.clone();
    let doomed = orders.spawn(DOOMED_ENTRY, move |handled: Handled| {
        recorder.consumed(handled.id(), 2)
    });
    eventually(Duration::from_secs(30), "member 2 consumes", || async {
        doomed.seen().ready
    })
    .await;

    let (sender, to) = (publisher.clone(), topic.clone());
    let publishers = publish_ids(PUBLISHERS, EVENTS, &checker, move |id| {
        let (sender, to) = (sender.clone(), to.clone());
        async move {
            sender
                .publish(&to, Bytes::from(body_of(id)), Default::default())
                .await
                .expect("publish");
        }
    });

    // Kill member 2 once it has done its share and holds events it will never acknowledge,
    // while events are still flowing.
    eventually(
        Duration::from_secs(60),
        "member 2 holds events it handled without acknowledging them",
        || async { doomed.seen().held.len() >= DOOMED_HOLDS },
    )
    .await;
    let published_at_kill = checker.confirmed_count();
    let died = doomed.kill();
    assert_eq!(died.done.len(), DOOMED_HANDLES);
    assert!(died.held.is_disjoint(&died.done));

    publishers.join().await;
    eventually(
        Duration::from_secs(120),
        "every published event handled",
        || async { checker.settled() as u64 == EVENTS },
    )
    .await;
    // Every event acknowledged, nothing pending: no redelivery can come after this.
    let stream = async_nats::jetstream::new(publisher.client().clone())
        .get_stream(NatsEvents::stream_name(topic))
        .await
        .expect("the topic's stream");
    eventually(
        Duration::from_secs(30),
        "the group has every event acknowledged",
        || async {
            let info = stream
                .consumer_info(NatsEvents::durable_name(&group))
                .await
                .expect("consumer info");
            info.num_ack_pending == 0 && info.num_pending == 0
        },
    )
    .await;
    for member in &members {
        member.abort();
    }

    let published: BTreeSet<u64> = (0..EVENTS).collect();
    let report = checker.report(&published);
    let extra = format!(
        " (held by the killed member: {}; killed after {published_at_kill} of {EVENTS} were \
         published)",
        died.held.len()
    );
    print_summary("events group", &checker, &report, 3, &extra);
    assert_none_lost(&report, EVENTS, &checker, &[0, 1]);
    for id in &died.held {
        let survivors = checker
            .members_of(*id)
            .into_iter()
            .filter(|m| *m != 2)
            .count();
        assert_eq!(
            survivors, 1,
            "event {id}, held unacknowledged by member 2 when it was killed, was handled by a \
             survivor {survivors} times: want exactly once"
        );
    }
    for id in &died.done {
        assert_eq!(
            checker.members_of(*id),
            [2],
            "event {id}, acknowledged by member 2, was delivered again"
        );
    }
    for (id, members) in &report.duplicates {
        assert!(
            died.held.contains(id) && members.contains(&2),
            "event {id} handled by {members:?}: a duplicate the killed member does not explain"
        );
    }
}
