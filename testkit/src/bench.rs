//! What the benches share: publishing rounds from concurrent tasks, end-to-end latency through
//! a [`Broker`], and rates. Benches print figures and ratios against a baseline measured in the
//! same run; they assert nothing about time.

use std::future::Future;
use std::time::{Duration, Instant};

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use tokio::sync::mpsc;

/// A bench's error: anything.
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;
/// A bench's result.
pub type BenchResult<T> = Result<T, BenchError>;

/// Runs `publish` `count` times, from `in_flight` tasks each awaiting its own; the time it took.
pub async fn fan_out<F, Fut>(count: usize, in_flight: usize, publish: F) -> BenchResult<Duration>
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

/// `count` publishes of `body` to `topic` through the `Broker` trait from `in_flight` tasks;
/// the time it took.
pub async fn broker_round<B: Broker + Clone>(
    broker: &B,
    topic: &str,
    body: &'static [u8],
    count: usize,
    in_flight: usize,
) -> BenchResult<Duration> {
    let (broker, topic) = (broker.clone(), topic.to_string());
    fan_out(count, in_flight, move || {
        let (broker, topic) = (broker.clone(), topic.clone());
        async move {
            broker.publish(&topic, Message::new(body)).await?;
            Ok(())
        }
    })
    .await
}

/// Messages (or events) per second: `count` of them in `time`.
pub fn rate(count: usize, time: Duration) -> f64 {
    count as f64 / time.as_secs_f64()
}

/// Percentiles of a latency sample.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// How many samples.
    pub samples: usize,
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

impl Latency {
    /// The percentiles of `samples` (not empty).
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        assert!(!samples.is_empty(), "no latency samples");
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Latency {
            samples: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// Prints the figures under the heading for an end-to-end publish -> handler run.
    pub fn print(&self) {
        println!(
            "end-to-end publish -> handler (broadcast subscriber), {} messages, one at a time:",
            self.samples
        );
        println!(
            "  p50 {:>8.0} µs    p99 {:>8.0} µs",
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6
        );
    }
}

/// Times `count` messages of `body` from `publish` on `topic` to a broadcast subscriber's
/// handler, one at a time (each awaited before the next, so queueing does not inflate it).
pub async fn broker_latency<B: Broker>(
    broker: &B,
    topic: &str,
    body: &'static [u8],
    count: usize,
) -> BenchResult<Latency> {
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
        .subscribe(topic, record, SubscribeOptions::default())
        .await?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let sent = origin.elapsed().as_nanos().to_string();
        broker
            .publish(topic, Message::new(body).with_header("x-sent-ns", sent))
            .await?;
        match tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await {
            Ok(Some(latency)) => samples.push(latency),
            _ => return Err("a message did not arrive within 10 s".into()),
        }
    }
    subscription.unsubscribe().await?;
    Ok(Latency::of(samples))
}
