//! Publish throughput with confirms through the `Broker` trait against raw lapin with confirms,
//! on the same exchange and routing key, plus end-to-end publish -> handler latency.
//!
//! Needs RabbitMQ (`MICRO_TEST_RABBITMQ`, default 127.0.0.1:5672). Run: `cargo bench -p
//! micro-rabbitmq`. Prints figures and a ratio; asserts nothing about time.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use micro_rabbitmq::{RabbitBroker, RabbitOptions};
use micro_testkit::bench::{BenchError, BenchResult, broker_latency, broker_round, fan_out, rate};

/// Messages per throughput round with one publish in flight; each side runs two rounds,
/// interleaved. Small: with one in flight, each message waits for RabbitMQ's disk write.
const SERIAL_MESSAGES: usize = 500;
/// Messages per throughput round with [`IN_FLIGHT`] concurrent publishers.
const MESSAGES: usize = 5_000;
/// Concurrent publishers (tasks, each awaiting its own confirm) in the second comparison.
const IN_FLIGHT: usize = 32;
/// Messages timed end to end.
const LATENCY_MESSAGES: usize = 2_000;
const BODY: &[u8] = &[b'x'; 256];

#[tokio::main]
async fn main() -> BenchResult<()> {
    let address = std::env::var("MICRO_TEST_RABBITMQ")
        .unwrap_or_else(|_| micro_rabbitmq::DEFAULT_ADDRESS.to_string());
    let options = RabbitOptions::new(&address);
    let exchange = options.exchange.clone();
    let broker = RabbitBroker::connect(options).await?;

    // One durable queue bound to the topic, so both sides' messages are routed and persisted.
    let suffix = format!("{:08x}", fastrand::u32(..));
    let topic = format!("bench.throughput-{suffix}");
    let queue = format!("bench-throughput-{suffix}");
    let connection = Connection::connect(&address, ConnectionProperties::default()).await?;
    let raw = connection.create_channel().await?;
    raw.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    raw.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        topic.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    raw.confirm_select(ConfirmSelectOptions::default()).await?;

    // Warm up both paths, then interleave rounds so neither side gets the quieter moment.
    let raw = Arc::new(raw);
    raw_round(&raw, &exchange, &topic, 200, 1).await?;
    broker_round(&broker, &topic, BODY, 200, 1).await?;
    for (count, in_flight) in [(SERIAL_MESSAGES, 1), (MESSAGES, IN_FLIGHT)] {
        let (mut raw_time, mut broker_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..2 {
            raw_time += raw_round(&raw, &exchange, &topic, count, in_flight).await?;
            broker_time += broker_round(&broker, &topic, BODY, count, in_flight).await?;
        }
        let rate = |time: Duration| rate(2 * count, time);
        let (raw_rate, broker_rate) = (rate(raw_time), rate(broker_time));
        println!(
            "publish with confirms, {count} x 2 persistent messages of {} bytes to a durable queue, {in_flight} in flight:",
            BODY.len()
        );
        println!("  raw lapin           {raw_rate:>10.0} msg/s");
        println!("  micro Broker trait  {broker_rate:>10.0} msg/s");
        println!(
            "  ratio               {:>10.2} (target >= 0.80)",
            broker_rate / raw_rate
        );
    }

    let latency_topic = format!("bench.latency-{suffix}");
    broker_latency(&broker, &latency_topic, BODY, LATENCY_MESSAGES)
        .await?
        .print();

    raw.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "bench done".into()).await?;
    broker.close().await;
    Ok(())
}

/// `count` publishes on the raw channel from `in_flight` tasks, each awaiting its confirm.
async fn raw_round(
    channel: &Arc<Channel>,
    exchange: &str,
    topic: &str,
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (channel, exchange, topic) = (channel.clone(), exchange.to_string(), topic.to_string());
    fan_out(count, in_flight, move || {
        let (channel, exchange, topic) = (channel.clone(), exchange.clone(), topic.clone());
        async move {
            let properties = BasicProperties::default().with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    topic.as_str().into(),
                    BasicPublishOptions::default(),
                    BODY,
                    properties,
                )
                .await?
                .await?;
            if !confirm.is_ack() {
                return Err::<(), BenchError>("raw publish not acked".into());
            }
            Ok(())
        }
    })
    .await
}
