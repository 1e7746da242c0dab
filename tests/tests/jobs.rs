//! Typed subscribers on the server: jobs through the broker, a queue shared by workers, and
//! messages that do not decode dead-lettered at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_core::broker::{SubscribeOptions, typed};
use micro_core::{Broker, Registry, Server};
use micro_examples::jobs::v1::EmailJob;
use micro_memory::{MemoryBroker, MemoryRegistry};
use micro_tests::{Process, binary, test_options};

#[tokio::test(flavor = "multi_thread")]
async fn typed_subscriber_gets_jobs_and_undecodable_messages_are_dead_lettered() {
    let memory = MemoryBroker::new();
    let broker: Arc<dyn Broker> = Arc::new(memory.clone());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let server = Server::new(test_options("worker"), registry)
        .subscribe(
            &broker,
            "jobs.email",
            SubscribeOptions::queue("workers"),
            typed(move |job: EmailJob, _| {
                let sink = sink.clone();
                async move {
                    sink.lock().expect("lock").push(job.id);
                    Ok(())
                }
            }),
        )
        .start()
        .await
        .expect("start");
    broker
        .publish(
            "jobs.email",
            micro_core::broker::Message::new(vec![0xff, 0x01]),
        )
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
    let until = Instant::now() + Duration::from_secs(10);
    while seen.lock().expect("lock").len() < 20 || memory.dead_letters().is_empty() {
        assert!(
            Instant::now() < until,
            "jobs or dead letter missing: {:?}",
            seen.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        memory.dead_letters().len(),
        1,
        "the garbage, once: not retried"
    );
    assert_eq!(memory.dead_letters()[0].1.body.as_ref(), [0xff, 0x01]);
    server.stop().await.expect("stop");
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
    let batch = format!("batch{}", std::process::id());
    let worker = || {
        let mut process = Process::start(
            "jobs-worker",
            &["--broker", "rabbitmq", "--registry", "memory"],
            &[],
            None,
        );
        process.line_containing("consuming", Duration::from_secs(30));
        process
    };
    let mut workers = [worker(), worker()];
    let output = std::process::Command::new(binary("jobs-producer"))
        .args(["--broker", "rabbitmq", "--count", "200", "--batch", &batch])
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
