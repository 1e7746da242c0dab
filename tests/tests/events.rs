//! Event consumers on the server, and the order stream across processes: typed handlers whose
//! `Ok` acks and `Err` nacks, payloads that do not decode dead-lettered at once, consumers
//! stopped with the server; a consumer group that resumes after its process is killed, and a
//! new group that replays the whole stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use micro_core::conformance::unique;
use micro_core::events::{
    ConsumeOptions, DELIVERIES, Event, EventStream, ORIGINAL_SEQUENCE, Offset, handler, typed,
};
use micro_core::{Events, Registry, Server};
use micro_memory::{MemoryEvents, MemoryRegistry};
use micro_testkit::jobs::v1::EmailJob;
use micro_testkit::{Process, SLACK, binary, eventually, test_options};

const GARBAGE: [u8; 2] = [0xff, 0x01];

/// How long a process may take to start, or to get through its orders, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn job(id: &str) -> EmailJob {
    EmailJob {
        id: id.into(),
        ..Default::default()
    }
}

async fn take(stream: &mut EventStream, what: &str) -> micro_core::events::Delivery {
    match tokio::time::timeout(SLACK, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        other => panic!(
            "{what}: no delivery within {SLACK:?}: {:?}",
            other.map(|o| o.map(|r| r.map(|d| d.event)))
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_consumer_acks_nacks_and_dead_letters_what_does_not_decode() {
    let events: Arc<dyn Events> = Arc::new(MemoryEvents::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let topic = unique("jobs.events");
    let group = unique("mailers");
    // Published before the server starts: a new group from Earliest still gets them.
    events
        .publish(&topic, GARBAGE.to_vec().into(), BTreeMap::new())
        .await
        .expect("publish garbage");
    for n in 0..10 {
        events
            .publish_message(&topic, &job(&format!("j{n}")))
            .await
            .expect("publish");
    }
    let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = attempts.clone();
    let jobs = typed(move |job: EmailJob, _event: Event| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().expect("lock");
            let n = seen.entry(job.id.clone()).or_default();
            *n += 1;
            if job.id == "j3" && *n == 1 {
                return Err("j3 fails its first attempt".into());
            }
            Ok(())
        }
    });
    let garbage_deliveries = Arc::new(AtomicUsize::new(0));
    let counter = garbage_deliveries.clone();
    let counted = handler(move |event: Event| {
        if event.payload.as_ref() == GARBAGE {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        jobs(event)
    });
    let options = ConsumeOptions::group(&group).with_offset(Offset::Earliest);
    let server = Server::new(test_options("mailer"), registry)
        .consume(&events, &topic, options.clone(), counted)
        .start()
        .await
        .expect("start");

    let mut dead = micro_testkit::dead_letters(&*events, &topic).await;
    let letter = take(&mut dead, "the garbage's dead letter").await;
    assert_eq!(letter.event.payload.as_ref(), GARBAGE);
    assert_eq!(
        letter
            .event
            .metadata
            .get(ORIGINAL_SEQUENCE)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        letter.event.metadata.get(DELIVERIES).map(String::as_str),
        Some("1"),
        "dead-lettered at its first delivery, not retried"
    );
    eventually(
        SLACK,
        "10 jobs handled, j3 again after its failure",
        || async {
            let attempts = attempts.lock().expect("lock");
            attempts.len() == 10 && attempts.get("j3") == Some(&2)
        },
    )
    .await;
    assert_eq!(
        garbage_deliveries.load(Ordering::SeqCst),
        1,
        "the garbage was handled once"
    );
    {
        let attempts = attempts.lock().expect("lock");
        let twice: Vec<_> = attempts
            .iter()
            .filter(|(id, n)| *id != "j3" && **n != 1)
            .collect();
        assert!(twice.is_empty(), "acked jobs came again: {twice:?}");
    }
    server.stop().await.expect("stop");

    // Stopped with the server: what comes next is left to the group, not taken by the server.
    events
        .publish_message(&topic, &job("late"))
        .await
        .expect("publish late");
    let mut group_member = events.consume(&topic, options).await.expect("consume");
    let late = take(&mut group_member, "the job published after stop").await;
    assert_eq!(
        late.event.sequence, 12,
        "everything before was acknowledged"
    );
    late.ack().await.expect("ack");
    assert!(!attempts.lock().expect("lock").contains_key("late"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_waits_for_the_event_being_handled_and_settles_it() {
    let events: Arc<dyn Events> = Arc::new(MemoryEvents::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let topic = unique("jobs.slow");
    let ack_wait = Duration::from_millis(500);
    let options = ConsumeOptions::group(unique("slow")).with_ack_wait(ack_wait * 4);
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    // The handler holds its event until the test lets it go, after stop has begun.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, f, g) = (started.clone(), finished.clone(), gate.clone());
    let slow = handler(move |_event: Event| {
        let (s, f, g) = (s.clone(), f.clone(), g.clone());
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            g.acquire().await.expect("gate open").forget();
            f.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let server = Server::new(test_options("slow"), registry.clone())
        .consume(&events, &topic, options.clone(), slow)
        .start()
        .await
        .expect("start");
    events
        .publish(&topic, "one".into(), BTreeMap::new())
        .await
        .expect("publish");
    eventually(SLACK, "the handler started", || async {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // Stop deregisters first, then stops consumers and drains: once the service has left the
    // registry, stop is under way with the event still in the handler.
    let stopping = tokio::spawn(server.stop());
    eventually(SLACK, "stop deregistered the service", || async {
        registry
            .get_service("slow")
            .await
            .is_ok_and(|s| s.is_empty())
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "stop returned with the event in the handler"
    );
    gate.add_permits(1);
    stopping.await.expect("stop task").expect("stop");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "stop let the handler finish"
    );
    // It was acknowledged: the group's next delivery is the next event, and the first does not
    // come back after ack_wait.
    let mut member = events
        .consume(&topic, options.with_ack_wait(ack_wait))
        .await
        .expect("consume");
    events
        .publish(&topic, "two".into(), BTreeMap::new())
        .await
        .expect("publish");
    let next = take(&mut member, "the second event").await;
    assert_eq!(next.event.sequence, 2);
    next.ack().await.expect("ack");
    match tokio::time::timeout(ack_wait * 8, member.next()).await {
        Err(_) => {}
        Ok(item) => panic!(
            "the event handled during stop came again: {:?}",
            item.map(|r| r.map(|d| d.event))
        ),
    }
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

/// The `processed <id> (sequence <n>)` lines of an orders-consumer, in order, from `from`.
fn processed(process: &Process, from: usize) -> Vec<(String, u64)> {
    process.seen[from..]
        .iter()
        .filter_map(|line| {
            let rest = line.strip_prefix("processed ")?;
            let (id, sequence) = rest.split_once(" (sequence ")?;
            let sequence = sequence.strip_suffix(')')?.parse().ok()?;
            Some((id.to_string(), sequence))
        })
        .collect()
}

/// Reads `process`'s lines until `done` says so, panicking with `what` after `deadline`.
fn read_until(
    process: &mut Process,
    deadline: Duration,
    what: &str,
    done: impl Fn(&Process) -> bool,
) {
    let until = Instant::now() + deadline;
    while !done(process) {
        assert!(
            Instant::now() < until,
            "{what}: not within {deadline:?}; saw {:?}; stderr: {}",
            process.seen,
            process.stderr()
        );
        process.read_lines(Duration::from_millis(50));
    }
}

/// Deletes the test's topic (its JetStream stream and the groups on it) when dropped.
struct NatsTopic(String);

impl Drop for NatsTopic {
    fn drop(&mut self) {
        let topic = self.0.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let events = micro_nats::NatsEvents::connect("").await?;
                events.delete_topic(&topic).await
            })
        })
        .join();
        if let Ok(Err(e)) = deleted {
            eprintln!("cleanup: cannot delete topic {}: {e}", self.0);
        }
    }
}

#[test]
fn order_consumer_resumes_after_sigkill_and_a_new_group_replays_on_nats() {
    const ORDERS: usize = 60;
    const ACK_WAIT: Duration = Duration::from_secs(2);
    let ack_wait = humantime_arg(ACK_WAIT);
    let topic = unique("orders.e2e");
    let _cleanup = NatsTopic(topic.clone());
    let billing = unique("billing");
    let batch = unique("o");
    let consumer = |group: &str, delay: &str| {
        let mut process = Process::start(
            "orders-consumer",
            &[
                "--events",
                "nats",
                "--registry",
                "memory",
                "--topic",
                &topic,
                "--group",
                group,
                "--from",
                "earliest",
                "--ack-wait",
                &ack_wait,
                "--delay",
                delay,
            ],
            &[],
            None,
        );
        process.line_containing("consuming", PATIENCE);
        process
    };

    let output = std::process::Command::new(binary("orders-producer"))
        .args(["--events", "nats", "--topic", &topic, "--batch", &batch])
        .args(["--count", &ORDERS.to_string()])
        .output()
        .expect("run orders-producer");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "published {ORDERS} orders on `{topic}` (nats), sequences 1 to {ORDERS}"
        )),
        "{stdout}"
    );

    // A slow consumer, killed mid-stream: no chance to settle anything.
    let mut first = consumer(&billing, "50ms");
    read_until(&mut first, PATIENCE, "10 orders processed", |p| {
        processed(p, 0).len() >= 10
    });
    first.kill();
    first.wait(SLACK);
    first.read_lines(Duration::from_millis(100));
    let before = processed(&first, 0);
    assert!(
        before.len() < ORDERS,
        "killed before the end: {}",
        before.len()
    );

    let mut second = consumer(&billing, "0s");
    read_until(
        &mut second,
        ACK_WAIT + PATIENCE,
        "the rest of the orders",
        |p| {
            let mut ids: Vec<String> = before
                .iter()
                .chain(&processed(p, 0))
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            ids.len() == ORDERS
        },
    );
    let after = processed(&second, 0);
    // At least once: the order being handled when the process died may come again, no other.
    let last_before = before.last().map(|(id, _)| id.clone());
    let again: Vec<_> = after
        .iter()
        .filter(|(id, _)| before.iter().any(|(b, _)| b == id))
        .collect();
    assert!(
        again.iter().all(|(id, _)| Some(id) == last_before.as_ref()),
        "the restarted consumer processed again what its group had acknowledged: {again:?}"
    );
    second.terminate();
    assert!(second.wait(SLACK).success(), "stops cleanly on SIGTERM");

    // A group started later replays everything, in order.
    let mut audit = consumer(&unique("audit"), "0s");
    read_until(&mut audit, PATIENCE, "every order replayed", |p| {
        processed(p, 0).len() >= ORDERS
    });
    let replayed: Vec<u64> = processed(&audit, 0).iter().map(|(_, s)| *s).collect();
    assert_eq!(
        replayed,
        (1..=ORDERS as u64).collect::<Vec<_>>(),
        "in order, from the first"
    );
    audit.terminate();
    assert!(audit.wait(SLACK).success());
}

fn humantime_arg(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}
