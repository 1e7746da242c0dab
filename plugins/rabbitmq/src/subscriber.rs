//! Subscriptions: a queue bound to the topic, a consumer on its own channel, and a task that runs
//! the handler for each delivery and acknowledges, retries or dead-letters it.
//!
//! Retries: classic queues do not count redeliveries, and `basic.nack` with requeue puts a message
//! back at the head of its queue, where a message that always fails would be handed out again
//! and again. So a failed message is instead published again straight to its queue (default
//! exchange, routing key = queue name), at the tail, with its handler-run count in the
//! `x-micro-attempts` header; only once RabbitMQ has confirmed that copy is the original
//! acknowledged. After `max_attempts` runs the copy goes to the dead-letter exchange instead. If
//! the copy cannot be published, the original is nacked with `requeue: true`: never dropped.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Consumer};
use micro_core::broker::{Handler, TaskSubscription, deliver};
use micro_core::{Error, Result};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::NAME;
use crate::connection::{Connector, MAX_BACKOFF, MIN_BACKOFF, Routed, jitter, until_closed};
use crate::headers::{self, short};

/// What every delivery of a subscription needs.
struct Context {
    connector: Arc<Connector>,
    handler: Handler,
    topic: String,
    /// The shared queue's name; `None` for a subscriber of its own.
    group: Option<String>,
}

/// A consumer, on its channel.
struct Consuming {
    channel: Channel,
    consumer: Consumer,
    tag: ShortString,
    /// The queue's name (server-generated for a subscriber without a group).
    queue: String,
}

/// Why [`serve`] returned.
enum End {
    /// Unsubscribed, or the broker closed.
    Stopped,
    /// The channel or connection went away.
    Lost(String),
}

/// Declares and binds the queue and starts consuming before returning, so a message published
/// right after `subscribe` returns is delivered. Unsubscribing cancels the consumer and waits for
/// running handlers.
pub(crate) async fn subscribe(
    connector: Arc<Connector>,
    topic: &str,
    group: Option<String>,
    handler: Handler,
) -> Result<TaskSubscription> {
    let context = Arc::new(Context {
        connector,
        handler,
        topic: topic.to_string(),
        group,
    });
    let deadline = Instant::now() + context.connector.options.publish_timeout;
    let consuming = match tokio::time::timeout_at(deadline, consume(&context)).await {
        Ok(consuming) => consuming?,
        Err(_) => {
            return Err(Error::backend_msg(
                "broker",
                NAME,
                format!(
                    "subscribe to {topic:?} on {}: no connection",
                    context.connector.address
                ),
            ));
        }
    };
    Ok(TaskSubscription::spawn(NAME, topic, |stopped| {
        run(context, consuming, stopped)
    }))
}

/// Declares the queue, binds it to the topic and starts a consumer, on a new channel.
async fn consume(context: &Context) -> Result<Consuming> {
    let connector = &context.connector;
    let settings = &connector.options;
    let link = connector.link().await?;
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(|err| connector.error("open a channel", err))?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .map_err(|err| connector.error("set the prefetch count", err))?;
    let (name, options) = match &context.group {
        // Shared by every member of the group, and kept across restarts.
        Some(group) => (
            short(group, "queue")?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
        ),
        // This subscriber's own: gone with its consumer (or connection); RabbitMQ names it.
        None => (
            ShortString::default(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        ),
    };
    let queue = channel
        .queue_declare(name.clone(), options, FieldTable::default())
        .await
        .map_err(|err| connector.error(&format!("declare the queue {:?}", name.as_str()), err))?;
    let queue = queue.name().clone();
    channel
        .queue_bind(
            queue.clone(),
            short(&settings.exchange, "exchange")?,
            short(&context.topic, "topic")?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| {
            connector.error(
                &format!("bind the queue {:?} to {:?}", queue.as_str(), context.topic),
                err,
            )
        })?;
    let tag = ShortString::from(format!("micro-{:016x}", fastrand::u64(..)));
    let consumer = channel
        .basic_consume(
            queue.clone(),
            tag.clone(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| connector.error(&format!("consume from {:?}", queue.as_str()), err))?;
    debug!(topic = %context.topic, %queue, generation = link.generation, "rabbitmq consumer started");
    Ok(Consuming {
        channel,
        consumer,
        tag,
        queue: queue.to_string(),
    })
}

/// Serves deliveries until unsubscribed, resubscribing (with backoff) whenever the channel or
/// connection is lost.
async fn run(context: Arc<Context>, mut consuming: Consuming, stopped: oneshot::Receiver<()>) {
    // A dropped `Subscription` keeps running (the trait's contract): only an explicit send stops.
    let mut stop: BoxFuture<'static, ()> = Box::pin(async move {
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let mut closed = context.connector.closed();
    loop {
        match serve(&context, &mut consuming, &mut stop, &mut closed).await {
            End::Stopped => return,
            End::Lost(reason) => {
                warn!(topic = %context.topic, queue = %consuming.queue, reason, "rabbitmq subscription lost; resubscribing");
            }
        }
        let mut backoff = MIN_BACKOFF;
        consuming = loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = until_closed(&mut closed) => return,
                result = consume(&context) => match result {
                    Ok(consuming) => {
                        info!(topic = %context.topic, queue = %consuming.queue, "rabbitmq subscription restored");
                        break consuming;
                    }
                    Err(err) => warn!(topic = %context.topic, error = %err, retry_in = ?backoff, "rabbitmq resubscribe failed"),
                },
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = until_closed(&mut closed) => return,
                _ = tokio::time::sleep(jitter(backoff)) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
    }
}

/// Runs the handler for each delivery (up to the prefetch count at once) until told to stop or
/// the consumer ends.
async fn serve(
    context: &Arc<Context>,
    consuming: &mut Consuming,
    stop: &mut BoxFuture<'static, ()>,
    closed: &mut watch::Receiver<bool>,
) -> End {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut *stop => {
                // Cancel first so nothing new arrives; deliveries buffered but not yet handed to
                // the handler are unacknowledged and go back to the queue when the channel closes.
                if let Err(err) = consuming.channel.basic_cancel(consuming.tag.clone(), BasicCancelOptions::default()).await {
                    debug!(topic = %context.topic, error = %err, "rabbitmq cancel failed");
                }
                while running.join_next().await.is_some() {}
                if let Err(err) = consuming.channel.close(200, ShortString::from("unsubscribed")).await {
                    debug!(topic = %context.topic, error = %err, "rabbitmq channel close failed");
                }
                return End::Stopped;
            }
            _ = until_closed(closed) => {
                running.detach_all();
                return End::Stopped;
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            next = consuming.consumer.next() => match next {
                Some(Ok(delivery)) => {
                    running.spawn(handle(context.clone(), consuming.queue.clone(), delivery));
                }
                Some(Err(err)) => {
                    // Handlers still running cannot acknowledge on the dead channel; RabbitMQ
                    // redelivers their messages.
                    running.detach_all();
                    return End::Lost(err.to_string());
                }
                None => {
                    running.detach_all();
                    return End::Lost("the consumer was cancelled".to_string());
                }
            },
        }
    }
}

/// Runs the handler on one delivery, then acknowledges it, or retries or dead-letters it.
async fn handle(context: Arc<Context>, queue: String, delivery: Delivery) {
    let Delivery {
        properties,
        data,
        acker,
        routing_key,
        ..
    } = delivery;
    let body = Bytes::from(data);
    let message = headers::message(&properties, body.clone());
    let Err(failure) = deliver(&context.handler, message).await else {
        if let Err(err) = acker.ack(BasicAckOptions::default()).await {
            debug!(topic = %context.topic, error = %err, "rabbitmq ack failed; the message will be redelivered");
        }
        return;
    };
    let connector = &context.connector;
    let settings = &connector.options;
    let attempts = headers::attempts(&properties).saturating_add(1);
    let topic = match properties
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(headers::TOPIC))
    {
        Some(AMQPValue::LongString(topic)) => {
            String::from_utf8_lossy(topic.as_bytes()).into_owned()
        }
        _ => routing_key.to_string(),
    };
    let properties = headers::with_header(
        &properties,
        headers::ATTEMPTS,
        AMQPValue::LongUInt(attempts),
    );
    let properties = headers::with_header(
        &properties,
        headers::TOPIC,
        AMQPValue::LongString(LongString::from(topic.as_bytes())),
    );
    let deadline = Instant::now() + settings.publish_timeout;
    // A rejected message (it cannot be decoded, say) would fail every time: dead-letter it now.
    let dead = failure.dead_letters(attempts, settings.max_attempts);
    let published = if dead {
        warn!(%topic, %queue, attempts, reason = %failure.reason, "rabbitmq: handler gave up on a message; dead-lettering it");
        let reason = failure.header_reason();
        let properties = headers::with_header(
            &properties,
            headers::DEAD_QUEUE,
            AMQPValue::LongString(LongString::from(queue.as_bytes())),
        );
        let properties = headers::with_header(
            &properties,
            headers::DEAD_REASON,
            AMQPValue::LongString(LongString::from(reason.as_bytes())),
        );
        connector
            .publish(
                &settings.dead_letter_exchange,
                &topic,
                &body,
                &properties,
                deadline,
            )
            .await
    } else {
        debug!(%topic, %queue, attempts, reason = %failure.reason, "rabbitmq: handler failed; queueing the message again");
        connector
            .publish("", &queue, &body, &properties, deadline)
            .await
    };
    match published {
        Ok(routed) => {
            if let Routed::Unroutable(why) = routed {
                if dead {
                    warn!(%topic, exchange = %settings.dead_letter_exchange, why, "rabbitmq: no queue bound to the dead-letter exchange; dead letter discarded");
                } else {
                    debug!(%topic, %queue, why, "rabbitmq: the queue is gone; message not retried");
                }
            }
            if let Err(err) = acker.ack(BasicAckOptions::default()).await {
                debug!(topic = %context.topic, error = %err, "rabbitmq ack failed; the message will be redelivered");
            }
        }
        Err(err) => {
            warn!(%topic, %queue, error = %err, "rabbitmq: could not requeue a failed message; nacking it back to its queue");
            if let Err(err) = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
            {
                debug!(topic = %context.topic, error = %err, "rabbitmq nack failed; the message will be redelivered");
            }
        }
    }
}
