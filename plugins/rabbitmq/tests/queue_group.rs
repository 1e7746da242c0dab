//! 10 000 persistent messages to a queue group of 3 consumers, one of which dies part-way:
//! every confirmed message is processed, and a message is processed twice only if the dead
//! consumer had it when it died.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Checker, id_of};
use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::RabbitConfig;

const MESSAGES: u64 = 10_000;
const PUBLISHERS: u64 = 8;

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
    let address = common::address();
    let topic = common::unique("test.group");
    let queue = common::unique("test-group");
    let config = RabbitConfig::new(&address);
    let publisher = common::broker(config.clone()).await;
    // Member 2 has a connection of its own, so closing it is that consumer dying.
    let (steady, doomed) = (
        common::broker(config.clone()).await,
        common::broker(config).await,
    );
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
    let _doomed_subscription = doomed
        .subscribe(
            &topic,
            counting(&checker, 2),
            SubscribeOptions::queue(&queue),
        )
        .await
        .expect("subscribe");

    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (publisher, topic, checker) = (publisher.clone(), topic.clone(), checker.clone());
            tokio::spawn(async move {
                for id in (p..MESSAGES).step_by(PUBLISHERS as usize) {
                    publisher
                        .publish(&topic, Message::new(format!("id:{id}")))
                        .await
                        .expect("publish");
                    checker.confirmed(id);
                }
            })
        })
        .collect();

    // Kill member 2 once it has done a fair share, while messages are still flowing.
    common::eventually(
        Duration::from_secs(60),
        "member 2 handles 1000 messages",
        || checker.per_member(2) >= 1000,
    )
    .await;
    doomed.close().await;
    let died_with = checker.handled_by(2);

    for task in tasks {
        task.await.expect("publisher task");
    }
    common::eventually(
        Duration::from_secs(60),
        "every confirmed message consumed",
        || checker.settled() as u64 == MESSAGES,
    )
    .await;
    // Let stray redeliveries land before counting duplicates.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let published: BTreeSet<u64> = (0..MESSAGES).collect();
    let report = checker.report(&published);
    println!(
        "queue group: confirmed {}, consumed {}, lost {}, unexpected {}, duplicates {} (members: {} / {} / {})",
        report.confirmed,
        report.consumed,
        report.lost.len(),
        report.unexpected.len(),
        report.duplicates.len(),
        checker.per_member(0),
        checker.per_member(1),
        checker.per_member(2),
    );
    assert_eq!(report.confirmed as u64, MESSAGES);
    assert!(report.lost.is_empty(), "lost: {:?}", report.lost);
    assert!(
        report.unexpected.is_empty(),
        "unexpected: {:?}",
        report.unexpected
    );
    for (id, members) in &report.duplicates {
        assert!(
            died_with.contains(id) && members.contains(&2),
            "message {id} handled by {members:?}: a duplicate the dead consumer does not explain"
        );
    }
    assert!(
        checker.per_member(0) > 0 && checker.per_member(1) > 0,
        "the survivors share the rest"
    );

    for subscription in subscriptions {
        subscription.unsubscribe().await.expect("unsubscribe");
    }
    common::delete_queues(&address, &[&queue]).await;
}
