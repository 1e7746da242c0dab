//! Typed subscribers on the server: jobs through the broker, a queue shared by workers, and
//! messages that do not decode dead-lettered at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_core::broker::{Message, SubscribeOptions, handler, typed};
use micro_core::{Broker, Registry, Server};
use micro_memory::{MemoryBroker, MemoryRegistry};
use micro_testkit::jobs::v1::EmailJob;
use micro_testkit::{Process, SLACK, binary, eventually, test_options};

const GARBAGE: [u8; 2] = [0xff, 0x01];

#[tokio::test(flavor = "multi_thread")]
async fn typed_subscriber_gets_jobs_and_undecodable_messages_are_dead_lettered() {
    let memory = MemoryBroker::new();
    let broker: Arc<dyn Broker> = Arc::new(memory.clone());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let jobs = typed(move |job: EmailJob, _| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("lock").push(job.id);
            Ok(())
        }
    });
    // Every delivery of the garbage to the subscriber, retries included.
    let garbage_deliveries = Arc::new(AtomicUsize::new(0));
    let counter = garbage_deliveries.clone();
    let counted = handler(move |message: Message| {
        if message.body.as_ref() == GARBAGE {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        jobs(message)
    });
    let server = Server::new(test_options("worker"), registry)
        .subscribe(
            &broker,
            "jobs.email",
            SubscribeOptions::queue("workers"),
            counted,
        )
        .start()
        .await
        .expect("start");
    broker
        .publish("jobs.email", Message::new(GARBAGE.to_vec()))
        .await
        .expect("publish garbage");
    for n in 0..20 {
        broker
            .publish_message(
                "jobs.email",
                &EmailJob {
                    id: format!("j{n}"),
                    ..Default::default()
                },
            )
            .await
            .expect("publish");
    }
    // Retrying would also end in one dead letter (after the broker's last attempt): what tells
    // "dead-lettered at once" apart is that the subscriber saw the garbage once.
    eventually(
        SLACK,
        "20 jobs handled and the garbage dead-lettered",
        || async {
            let deliveries = garbage_deliveries.load(Ordering::SeqCst);
            assert!(
                deliveries <= 1,
                "the garbage was redelivered ({deliveries} deliveries)"
            );
            seen.lock().expect("lock").len() == 20 && !memory.dead_letters().is_empty()
        },
    )
    .await;
    assert_eq!(
        garbage_deliveries.load(Ordering::SeqCst),
        1,
        "the garbage was delivered once: rejected, not retried"
    );
    let dead_letters = memory.dead_letters();
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert_eq!(dead_letters[0].1.body.as_ref(), GARBAGE);
    server.stop().await.expect("stop");
    assert_eq!(
        garbage_deliveries.load(Ordering::SeqCst),
        1,
        "no redelivery after the dead letter either"
    );
    // Unsubscribed at stop: nothing more is handled.
    broker
        .publish_message(
            "jobs.email",
            &EmailJob {
                id: "late".into(),
                ..Default::default()
            },
        )
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!seen.lock().expect("lock").contains(&"late".to_string()));
}

#[test]
fn two_workers_share_the_email_queue_on_rabbitmq() {
    two_workers_share_the_email_queue("rabbitmq");
}

/// The same example binaries, unchanged, on core NATS (queue groups are NATS queue groups).
#[test]
fn two_workers_share_the_email_queue_on_nats() {
    two_workers_share_the_email_queue("nats");
}

fn two_workers_share_the_email_queue(broker: &str) {
    let batch = format!("batch{}-{broker}", std::process::id());
    let worker = || {
        let mut process = Process::start(
            "jobs-worker",
            &["--broker", broker, "--registry", "memory"],
            &[],
            None,
        );
        process.line_containing("consuming", Duration::from_secs(30));
        process
    };
    let mut workers = [worker(), worker()];
    let output = std::process::Command::new(binary("jobs-producer"))
        .args(["--broker", broker, "--count", "200", "--batch", &batch])
        .output()
        .expect("run jobs-producer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut sent: HashMap<String, Vec<usize>> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(30);
    while sent.len() < 200 {
        assert!(
            Instant::now() < until,
            "only {} of 200 jobs sent",
            sent.len()
        );
        for (index, worker) in workers.iter_mut().enumerate() {
            let already = worker.seen.len();
            worker.read_lines(Duration::from_millis(50));
            for line in &worker.seen[already..] {
                if let Some(id) = line
                    .strip_prefix("sent ")
                    .and_then(|r| r.split_whitespace().next())
                    .filter(|id| id.starts_with(&format!("{batch}-")))
                {
                    sent.entry(id.to_string()).or_default().push(index);
                }
            }
        }
    }
    assert!(sent.values().all(|w| w.len() == 1), "each job sent once");
    for index in 0..2 {
        assert!(
            sent.values().any(|w| w[0] == index),
            "worker {index} got none: the queue is not shared"
        );
    }
    for worker in &mut workers {
        worker.terminate();
        assert!(worker.wait(Duration::from_secs(10)).success());
    }
}
