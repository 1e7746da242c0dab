//! Publish throughput through the `Events` trait (`NatsEvents`) against raw async-nats JetStream
//! publishes awaiting their acks, on the same stream and subject, in the same run.
//!
//! Needs NATS with JetStream (`MICRO_NATS_ADDRESS`, default `nats://127.0.0.1:4222`). Run:
//! `cargo bench -p micro-nats --bench events`. Prints figures and ratios; asserts nothing about
//! time.
//!
//! What `NatsEvents::publish` does beyond the raw publish: an id in `Nats-Msg-Id` (which the
//! server then tracks for deduplication), metadata headers, and by default a direct get of the
//! stored message for the server's timestamp (a second round trip), so the event it returns is
//! exactly what consumers will see. `with_local_publish_time` skips that read; both are
//! measured.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use micro_core::Events;
use micro_nats::NatsEvents;
use micro_testkit::bench::{BenchResult, fan_out, rate};

/// Events per round with one publish in flight; each side runs two rounds, interleaved.
const SERIAL_EVENTS: usize = 2_000;
/// Events per round with [`IN_FLIGHT`] concurrent publishers.
const EVENTS: usize = 20_000;
/// Concurrent publishers (tasks, each awaiting its own ack) in the second comparison.
const IN_FLIGHT: usize = 32;
const PAYLOAD: &[u8] = &[b'x'; 256];

#[tokio::main]
async fn main() -> BenchResult<()> {
    let address = std::env::var("MICRO_NATS_ADDRESS")
        .unwrap_or_else(|_| micro_nats::DEFAULT_ADDRESS.to_string());
    let events = NatsEvents::connect(&address).await?;
    let local = NatsEvents::connect(&address)
        .await?
        .with_local_publish_time();
    let raw = jetstream::new(async_nats::connect(&address).await?);
    let topic = format!("bench.events-{:08x}", fastrand::u32(..));
    let subject = NatsEvents::subject(&topic);
    let payload = Bytes::from_static(PAYLOAD);

    // The first publish creates the topic's stream; both sides then write to it.
    events
        .publish(&topic, payload.clone(), Default::default())
        .await?;
    // Warm up both paths, then interleave rounds so neither side gets the quieter moment.
    raw_round(&raw, &subject, &payload, 200, 1).await?;
    events_round(&events, &topic, &payload, 200, 1).await?;
    events_round(&local, &topic, &payload, 200, 1).await?;
    for (count, in_flight) in [(SERIAL_EVENTS, 1), (EVENTS, IN_FLIGHT)] {
        let mut times = [Duration::ZERO; 3];
        for _ in 0..2 {
            times[0] += raw_round(&raw, &subject, &payload, count, in_flight).await?;
            times[1] += events_round(&events, &topic, &payload, count, in_flight).await?;
            times[2] += events_round(&local, &topic, &payload, count, in_flight).await?;
        }
        let rate = |time: Duration| rate(2 * count, time);
        let (raw_rate, events_rate, local_rate) = (rate(times[0]), rate(times[1]), rate(times[2]));
        println!(
            "JetStream publish awaiting the ack, {count} x 2 events of {} bytes to a file stream, {in_flight} in flight:",
            PAYLOAD.len()
        );
        println!("  raw async-nats                       {raw_rate:>10.0} events/s");
        println!(
            "  micro Events (stored time read back) {events_rate:>10.0} events/s   ratio {:.2}",
            events_rate / raw_rate
        );
        println!(
            "  micro Events, with_local_publish_time {local_rate:>9.0} events/s   ratio {:.2}",
            local_rate / raw_rate
        );
    }

    events.delete_topic(&topic).await?;
    Ok(())
}

/// `count` raw JetStream publishes from `in_flight` tasks, each awaiting its ack.
async fn raw_round(
    js: &jetstream::Context,
    subject: &str,
    payload: &Bytes,
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (js, subject, payload) = (js.clone(), subject.to_string(), payload.clone());
    fan_out(count, in_flight, move || {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        async move {
            js.publish(subject, payload).await?.await?;
            Ok(())
        }
    })
    .await
}

/// `count` publishes through the `Events` trait from `in_flight` tasks.
async fn events_round(
    events: &NatsEvents,
    topic: &str,
    payload: &Bytes,
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (events, topic, payload) = (events.clone(), topic.to_string(), payload.clone());
    fan_out(count, in_flight, move || {
        let (events, topic, payload) = (events.clone(), topic.clone(), payload.clone());
        async move {
            events.publish(&topic, payload, Default::default()).await?;
            Ok(())
        }
    })
    .await
}
