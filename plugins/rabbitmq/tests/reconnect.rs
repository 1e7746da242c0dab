//! RabbitMQ closes every connection mid-stream (`rabbitmqctl close_all_connections`): the plugin
//! reconnects by itself, resubscribes, and none of the messages confirmed before, during or after
//! is lost. Runs in a vhost of its own, so closing "all" connections disturbs no other test.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::RabbitOptions;
use micro_testkit::checker::{Checker, id_of};
use micro_testkit::eventually;

/// Messages confirmed after `rabbitmqctl` returned before the publishers stop.
const AFTER: usize = 1_000;
const PUBLISHERS: u64 = 4;

fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (is it on PATH?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {text}"
    );
    text
}

/// A vhost for this test alone, deleted (with its queues) on drop.
struct Vhost(String);

impl Vhost {
    fn create() -> Vhost {
        let vhost = Vhost(common::unique("micro-test"));
        add_vhost(&vhost.0);
        vhost
    }

    /// The test address, pointed at this vhost.
    fn address(&self) -> String {
        let base = common::address();
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let server = match base[after_scheme..].find('/') {
            Some(slash) => &base[..after_scheme + slash],
            None => &base[..],
        };
        format!("{server}/{}", self.0)
    }
}

/// Adds `name` and lets `guest` use it.
fn add_vhost(name: &str) {
    rabbitmqctl(&["add_vhost", name]);
    rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_the_broker_closes_every_connection() {
    let _heavy = common::HEAVY.lock().await;
    let vhost = Vhost::create();
    let broker = common::broker(RabbitOptions::new(vhost.address())).await;
    let topic = common::unique("test.reconnect");
    let queue = common::unique("test-reconnect");

    let checker = Checker::default();
    let mut subscriptions = Vec::new();
    for member in 0..2 {
        let checker = checker.clone();
        let count = handler(move |message: Message| {
            let checker = checker.clone();
            async move {
                checker.consumed(
                    id_of(&message.body).ok_or("a message without an id")?,
                    member,
                );
                Ok(())
            }
        });
        subscriptions.push(
            broker
                .subscribe(&topic, count, SubscribeOptions::queue(&queue))
                .await
                .expect("subscribe"),
        );
    }
    // A subscriber of its own, to see that broadcast subscriptions come back too.
    let broadcast = Arc::new(AtomicUsize::new(0));
    let seen = broadcast.clone();
    let broadcast_sub = broker
        .subscribe(
            &topic,
            handler(move |message: Message| {
                let seen = seen.clone();
                async move {
                    if &message.body[..] == b"after" {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                }
            }),
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");

    // Publishers run until told to stop: before, during and well after the close.
    let failures = Arc::new(AtomicUsize::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (broker, topic, checker) = (broker.clone(), topic.clone(), checker.clone());
            let (failures, next_id, stop) = (failures.clone(), next_id.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    match broker
                        .publish(&topic, Message::new(format!("id:{id}")))
                        .await
                    {
                        Ok(()) => checker.confirmed(id),
                        Err(err) => {
                            eprintln!("publish {id} failed: {err}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();

    // Once 1000 messages went through, the broker drops every connection of the vhost.
    eventually(
        Duration::from_secs(60),
        "1000 messages consumed",
        || async { checker.settled() >= 1000 },
    )
    .await;
    let before = checker.confirmed_count();
    let vhost_name = vhost.0.clone();
    let closed = tokio::task::spawn_blocking(move || {
        rabbitmqctl(&["close_all_connections", "-p", &vhost_name, "test"])
    })
    .await
    .expect("rabbitmqctl task");
    assert!(
        closed.contains("Closed 1 connection"),
        "rabbitmqctl did not close our connection: {closed}"
    );
    let at_close = checker.confirmed_count();
    eventually(
        Duration::from_secs(60),
        "1000 more messages confirmed after the close",
        || async { checker.confirmed_count() >= at_close + AFTER },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("publisher task");
    }
    let issued = next_id.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(60),
        "every confirmed message consumed",
        || async { checker.settled() == checker.confirmed_count() },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let published: BTreeSet<u64> = (0..issued).collect();
    let report = checker.report(&published);
    println!(
        "reconnect: confirmed {} ({before} before the close, {at_close} when rabbitmqctl returned), consumed {}, lost {}, unexpected {}, duplicates {}, failed publishes {}",
        report.confirmed,
        report.consumed,
        report.lost.len(),
        report.unexpected.len(),
        report.duplicates.len(),
        failures.load(Ordering::SeqCst),
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "a publish failed across the reconnect"
    );
    assert_eq!(report.confirmed as u64, issued);
    assert!(report.lost.is_empty(), "lost: {:?}", report.lost);
    assert!(
        report.unexpected.is_empty(),
        "unexpected: {:?}",
        report.unexpected
    );

    // The broadcast subscription was restored as well.
    broker
        .publish(&topic, Message::new("after"))
        .await
        .expect("publish after");
    eventually(
        Duration::from_secs(10),
        "the broadcast subscriber sees a message after the reconnect",
        || async { broadcast.load(Ordering::SeqCst) >= 1 },
    )
    .await;

    broadcast_sub.unsubscribe().await.expect("unsubscribe");
    for subscription in subscriptions {
        subscription.unsubscribe().await.expect("unsubscribe");
    }
    broker.close().await;
}

/// While RabbitMQ cannot be reached (here: the vhost is gone), a publish waits `publish_timeout`
/// and then fails, saying why; once it is back, publishing works again without a new broker.
#[tokio::test(flavor = "multi_thread")]
async fn publish_during_an_outage_fails_after_the_timeout_then_recovers() {
    let vhost = Vhost::create();
    let timeout = Duration::from_secs(2);
    let broker =
        common::broker(RabbitOptions::new(vhost.address()).with_publish_timeout(timeout)).await;
    let topic = common::unique("test.outage");
    broker
        .publish(&topic, Message::new("before"))
        .await
        .expect("publish while up");

    let name = vhost.0.clone();
    tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_vhost", &name]))
        .await
        .expect("rabbitmqctl task");
    let start = tokio::time::Instant::now();
    let err = broker
        .publish(&topic, Message::new("during"))
        .await
        .expect_err("a publish with nowhere to go");
    let waited = start.elapsed();
    println!("outage: publish failed after {waited:?}: {err}");
    assert!(
        waited >= timeout / 2,
        "gave up after {waited:?}, before the timeout"
    );
    assert!(
        waited < timeout * 5,
        "waited {waited:?}, far beyond the timeout"
    );
    assert!(
        err.to_string().contains("not confirmed within"),
        "unclear error: {err}"
    );

    let again = vhost.0.clone();
    tokio::task::spawn_blocking(move || add_vhost(&again))
        .await
        .expect("rabbitmqctl task");
    broker
        .publish(&topic, Message::new("after"))
        .await
        .expect("publish once RabbitMQ is back");
    broker.close().await;
}
