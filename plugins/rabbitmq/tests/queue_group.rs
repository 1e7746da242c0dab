//! 10 000 persistent messages to a queue group of 3 consumers, one of which is killed part-way
//! (SIGKILL, in a child process) with messages in hand: every confirmed message is processed,
//! each message the killed consumer held is processed exactly once by a survivor, and a message
//! is processed twice only if the killed consumer had handled it (its acknowledgement lost).

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::RabbitOptions;
use micro_testkit::checker::{Checker, id_of};
use micro_testkit::checker::{assert_none_lost, body_of, print_summary, publish_ids};
use micro_testkit::doomed::{Handled, Orders};
use micro_testkit::eventually;

const MESSAGES: u64 = 10_000;
const PUBLISHERS: u64 = 8;
/// Messages the doomed member handles before its handler starts holding them.
const DOOMED_HANDLES: usize = 500;
/// The doomed member's prefetch: how many messages it holds when it is killed.
const DOOMED_PREFETCH: u16 = 16;
/// The child-process entry below, by its full name in the test binary.
const DOOMED_ENTRY: &str = "queue_group::doomed_consumer";

/// Member 2 of the group, run by the test below as a child process it then kills.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a child process of ten_thousand_messages_to_three_consumers_none_lost"]
async fn doomed_consumer() {
    common::doomed::child_main().await;
}

fn counting(checker: &Checker, member: usize) -> micro_core::broker::Handler {
    let checker = checker.clone();
    handler(move |message: Message| {
        let checker = checker.clone();
        async move {
            let id = id_of(&message.body).ok_or("a message without an id")?;
            checker.consumed(id, member);
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_messages_to_three_consumers_none_lost() {
    let _heavy = common::HEAVY.lock().await;
    let address = common::address();
    let topic = common::unique("test.group");
    let queue = common::unique("test-group");
    let options = RabbitOptions::new(&address);
    let publisher = common::broker(options.clone()).await;
    let steady = common::broker(options).await;
    let checker = Checker::default();
    let mut subscriptions = Vec::new();
    for member in 0..2 {
        subscriptions.push(
            steady
                .subscribe(
                    &topic,
                    counting(&checker, member),
                    SubscribeOptions::queue(&queue),
                )
                .await
                .expect("subscribe"),
        );
    }
    // Member 2 is a process of its own, so killing it is that consumer dying.
    let orders = Orders {
        address: address.clone(),
        topic: topic.clone(),
        group: queue.clone(),
        ack_wait: None,
        prefetch: usize::from(DOOMED_PREFETCH),
        handle_first: DOOMED_HANDLES,
    };
    let recorder = checker.clone();
    let doomed = orders.spawn(DOOMED_ENTRY, move |handled| {
        // Only what its handler finished: a held message is still in RabbitMQ's hands.
        if let Handled::Done(id) = handled {
            recorder.consumed(id, 2);
        }
    });
    eventually(Duration::from_secs(30), "member 2 subscribes", || async {
        doomed.seen().ready
    })
    .await;

    let (sender, to) = (publisher.clone(), topic.clone());
    let publishers = publish_ids(PUBLISHERS, MESSAGES, &checker, move |id| {
        let (sender, to) = (sender.clone(), to.clone());
        async move {
            sender
                .publish(&to, Message::new(body_of(id)))
                .await
                .expect("publish");
        }
    });

    // Kill member 2 once it has done its share and holds a full prefetch of messages it will
    // never acknowledge, while messages are still flowing.
    eventually(
        Duration::from_secs(60),
        "member 2 holds a full prefetch of messages",
        || async { doomed.seen().held.len() == usize::from(DOOMED_PREFETCH) },
    )
    .await;
    let died = doomed.kill();
    assert_eq!(died.done.len(), DOOMED_HANDLES);
    assert_eq!(died.held.len(), usize::from(DOOMED_PREFETCH));
    assert!(died.held.is_disjoint(&died.done));

    publishers.join().await;
    eventually(
        Duration::from_secs(60),
        "every confirmed message consumed",
        || async { checker.settled() as u64 == MESSAGES },
    )
    .await;
    // Let stray redeliveries land before counting duplicates.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let published: BTreeSet<u64> = (0..MESSAGES).collect();
    let report = checker.report(&published);
    print_summary("queue group", &checker, &report, 3, "");
    assert_none_lost(&report, MESSAGES, &checker, &[0, 1]);
    for id in &died.held {
        let members = checker.members_of(*id);
        assert!(
            members.len() == 1 && members[0] != 2,
            "message {id}, held by member 2 when it was killed, was handled by {members:?}: \
             want exactly once, by a survivor"
        );
    }
    for (id, members) in &report.duplicates {
        assert!(
            died.done.contains(id) && members.contains(&2),
            "message {id} handled by {members:?}: a duplicate the killed consumer does not explain"
        );
    }

    for subscription in subscriptions {
        subscription.unsubscribe().await.expect("unsubscribe");
    }
    common::delete_queues(&address, &[&queue]).await;
}
