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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use micro_nats::NatsBroker;
use micro_testkit::bench::{BenchResult, broker_latency, broker_round, fan_out, rate};

/// Messages per round with one publish in flight; each side runs two rounds, interleaved.
const SERIAL_MESSAGES: usize = 20_000;
/// Messages per round with [`IN_FLIGHT`] concurrent publishers.
const MESSAGES: usize = 50_000;
/// Concurrent publishing tasks in the second comparison.
const IN_FLIGHT: usize = 32;
/// Messages timed end to end.
const LATENCY_MESSAGES: usize = 2_000;
const BODY: &[u8] = &[b'x'; 256];

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
    broker_round(&broker, &subject, BODY, 1_000, 1).await?;
    for (count, in_flight) in [(SERIAL_MESSAGES, 1), (MESSAGES, IN_FLIGHT)] {
        let (mut flushed, mut fire, mut trait_time) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..2 {
            flushed += raw_round(&raw, &subject, count, in_flight, true).await?;
            fire += raw_round(&raw, &subject, count, in_flight, false).await?;
            trait_time += broker_round(&broker, &subject, BODY, count, in_flight).await?;
        }
        let rate = |time: Duration| rate(2 * count, time);
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

    let topic = format!("bench.latency-{suffix}");
    broker_latency(&broker, &topic, BODY, LATENCY_MESSAGES)
        .await?
        .print();
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
