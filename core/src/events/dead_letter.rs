//! Dead letters: what an event becomes after its last allowed delivery, or at once when its
//! handler [`Reject`](crate::broker::Reject)s it. One shape for every backend, so a consumer of
//! `<topic>.dead-letter` reads the same metadata whichever plugin wrote it.

use std::collections::BTreeMap;

use super::{Delivery, Event, Events, dead_letter_topic};
use crate::Result;

/// Metadata key of a dead letter: the original event's id.
pub const ORIGINAL_ID: &str = "x-micro-original-id";
/// Metadata key of a dead letter: the original event's sequence in its topic.
pub const ORIGINAL_SEQUENCE: &str = "x-micro-original-sequence";
/// Metadata key of a dead letter: how many times the original was delivered.
pub const DELIVERIES: &str = "x-micro-deliveries";

/// The metadata of the dead letter of `event` after `deliveries` deliveries: the original's
/// metadata plus [`ORIGINAL_ID`], [`ORIGINAL_SEQUENCE`] and [`DELIVERIES`] (for backend authors).
pub fn dead_letter_metadata(event: &Event, deliveries: u32) -> BTreeMap<String, String> {
    let mut metadata = event.metadata.clone();
    metadata.insert(ORIGINAL_ID.into(), event.id.clone());
    metadata.insert(ORIGINAL_SEQUENCE.into(), event.sequence.to_string());
    metadata.insert(DELIVERIES.into(), deliveries.to_string());
    metadata
}

/// Publishes `delivery`'s event to [`dead_letter_topic`] of its topic and acknowledges it, so it
/// is never delivered again: what a consumer does with an event it can never process. Returns
/// the dead letter as stored. If the publish fails the delivery is left unacknowledged (it comes
/// again), so the event is never lost.
pub async fn dead_letter(events: &dyn Events, delivery: Delivery) -> Result<Event> {
    let event = &delivery.event;
    let stored = events
        .publish(
            &dead_letter_topic(&event.topic),
            event.payload.clone(),
            dead_letter_metadata(event, delivery.deliveries),
        )
        .await?;
    tracing::warn!(
        topic = %event.topic,
        id = %event.id,
        sequence = event.sequence,
        deliveries = delivery.deliveries,
        dead_letter = %stored.topic,
        "event dead-lettered"
    );
    delivery.ack().await?;
    Ok(stored)
}
