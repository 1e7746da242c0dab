//! Publish throughput through the `Broker` trait against raw async-nats publishes on the same
//! server and subject, measured in the same run, plus end-to-end publish -> handler latency.
//!
//! `NatsBroker::publish` returns once the message was written to the server's connection (a
//! flush); the raw side is measured both ways: publish + flush per message (the same promise,
//! the fair baseline) and fire-and-forget publishes flushed once at the end (what core NATS can
//! do when nothing is promised). A queue subscriber on its own connection receives everything.
//!
//! Needs NATS (`MICRO_NATS_ADDRESS`, default `nats://127.0.0.1:4222`). Run: `cargo bench -p
//! micro-nats --bench throughput`. Prints figures and ratios; asserts nothing about time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_nats::NatsBroker;
use tokio::sync::mpsc;

/// Messages per round with one publish in flight; each side runs two rounds, interleaved.
const SERIAL_MESSAGES: usize = 20_000;
/// Messages per round with [`IN_FLIGHT`] concurrent publishers.
const MESSAGES: usize = 50_000;
/// Concurrent publishing tasks in the second comparison.
const IN_FLIGHT: usize = 32;
/// Messages timed end to end.
const LATENCY_MESSAGES: usize = 2_000;
const BODY: &[u8] = &[b'x'; 256];

type BenchError = Box<dyn std::error::Error + Send + Sync>;
type BenchResult<T> = Result<T, BenchError>;

#[tokio::main]
async fn main() -> BenchResult<()> {
    let address = std::env::var("MICRO_NATS_ADDRESS")
        .unwrap_or_else(|_| micro_nats::DEFAULT_ADDRESS.to_string());
    let broker = NatsBroker::connect(&address).await?;
    let raw = async_nats::connect(address.as_str()).await?;
    let suffix = format!("{:08x}", fastrand::u32(..));
    let subject = format!("bench.throughput-{suffix}");

    // Everything published is received, on a connection of its own, so the server does the
    // routing work for both sides alike.
    let sink = async_nats::connect(address.as_str()).await?;
    let mut inbox = sink
        .queue_subscribe(subject.clone(), "bench".into())
        .await?;
    sink.flush().await?;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let drain = tokio::spawn(async move {
        while inbox.next().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });

    // Warm up every path, then interleave rounds so none gets the quieter moment.
    raw_round(&raw, &subject, 1_000, 1, true).await?;
    raw_round(&raw, &subject, 1_000, 1, false).await?;
    broker_round(&broker, &subject, 1_000, 1).await?;
    for (count, in_flight) in [(SERIAL_MESSAGES, 1), (MESSAGES, IN_FLIGHT)] {
        let (mut flushed, mut fire, mut trait_time) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..2 {
            flushed += raw_round(&raw, &subject, count, in_flight, true).await?;
            fire += raw_round(&raw, &subject, count, in_flight, false).await?;
            trait_time += broker_round(&broker, &subject, count, in_flight).await?;
        }
        let rate = |time: Duration| (2 * count) as f64 / time.as_secs_f64();
        let (flushed, fire, trait_rate) = (rate(flushed), rate(fire), rate(trait_time));
        println!(
            "publish, {count} x 2 messages of {} bytes, {in_flight} in flight:",
            BODY.len()
        );
        println!("  raw async-nats, publish + flush   {flushed:>12.0} msg/s");
        println!("  raw async-nats, fire and forget   {fire:>12.0} msg/s");
        println!("  micro Broker trait                {trait_rate:>12.0} msg/s");
        println!(
            "  ratio to publish + flush          {:>12.2} (same promise; target >= 0.80)",
            trait_rate / flushed
        );
        println!(
            "  ratio to fire and forget          {:>12.2} (the price of returning once written)",
            trait_rate / fire
        );
    }

    let (p50, p99) = latency(&broker, &suffix).await?;
    println!(
        "end-to-end publish -> handler (broadcast subscriber), {LATENCY_MESSAGES} messages, one at a time:"
    );
    println!(
        "  p50 {:>8.0} µs    p99 {:>8.0} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    println!(
        "  ({} messages received by the sink)",
        received.load(Ordering::Relaxed)
    );
    drain.abort();
    Ok(())
}

/// `count` raw publishes from `in_flight` tasks; with `flush`, each flushed before the next.
async fn raw_round(
    client: &async_nats::Client,
    subject: &str,
    count: usize,
    in_flight: usize,
    flush: bool,
) -> BenchResult<Duration> {
    let (client, subject) = (client.clone(), subject.to_string());
    let last = client.clone();
    let start = Instant::now();
    fan_out(count, in_flight, move || {
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            client.publish(subject, Bytes::from_static(BODY)).await?;
            if flush {
                client.flush().await?;
            }
            Ok(())
        }
    })
    .await?;
    // Fire and forget too: the round is over once everything is written.
    last.flush().await?;
    Ok(start.elapsed())
}

/// `count` publishes through the `Broker` trait from `in_flight` tasks.
async fn broker_round(
    broker: &NatsBroker,
    subject: &str,
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (broker, subject) = (broker.clone(), subject.to_string());
    fan_out(count, in_flight, move || {
        let (broker, subject) = (broker.clone(), subject.clone());
        async move {
            broker.publish(&subject, Message::new(BODY)).await?;
            Ok(())
        }
    })
    .await
}

/// Runs `publish` `count` times, from `in_flight` tasks each awaiting its own; the time it took.
async fn fan_out<F, Fut>(count: usize, in_flight: usize, publish: F) -> BenchResult<Duration>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = BenchResult<()>> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|task| {
            let publish = publish.clone();
            tokio::spawn(async move {
                for _ in (task..count).step_by(in_flight) {
                    publish().await?;
                }
                Ok::<(), BenchError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// p50 and p99 of the time from calling `publish` to the handler running.
async fn latency(broker: &NatsBroker, suffix: &str) -> BenchResult<(Duration, Duration)> {
    let topic = format!("bench.latency-{suffix}");
    let origin = Instant::now();
    let (arrived, mut arrivals) = mpsc::unbounded_channel();
    let record = handler(move |message: Message| {
        let arrived = arrived.clone();
        async move {
            let now = origin.elapsed().as_nanos() as u64;
            let sent: u64 = message
                .header
                .get("x-sent-ns")
                .and_then(|n| n.parse().ok())
                .ok_or("no x-sent-ns")?;
            let _ = arrived.send(Duration::from_nanos(now.saturating_sub(sent)));
            Ok(())
        }
    });
    let subscription = broker
        .subscribe(&topic, record, SubscribeOptions::default())
        .await?;
    let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
    for _ in 0..LATENCY_MESSAGES {
        let sent = origin.elapsed().as_nanos().to_string();
        broker
            .publish(&topic, Message::new(BODY).with_header("x-sent-ns", sent))
            .await?;
        // One at a time: wait for this message before the next, so queueing does not inflate it.
        match tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await {
            Ok(Some(latency)) => samples.push(latency),
            _ => return Err("a message did not arrive within 10 s".into()),
        }
    }
    subscription.unsubscribe().await?;
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.50), at(0.99)))
}
