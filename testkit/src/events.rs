//! Reading what an [`Events`] backend dead-lettered.

use micro_core::Events;
use micro_core::events::{ConsumeOptions, EventStream, Offset, dead_letter_topic};

/// The dead letters of `topic` (its `<topic>.dead-letter` topic) from the earliest, without a
/// group; panics when the consume fails.
pub async fn dead_letters<E: Events + ?Sized>(events: &E, topic: &str) -> EventStream {
    events
        .consume(
            &dead_letter_topic(topic),
            ConsumeOptions::default().with_offset(Offset::Earliest),
        )
        .await
        .expect("consume the dead letters")
}
