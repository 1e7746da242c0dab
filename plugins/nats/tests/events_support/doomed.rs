//! The group member the events tests kill, run in a child process by
//! [`micro_testkit::doomed::Orders::spawn`]: it handles and acknowledges the first
//! `handle_first` events (`done <id>`, its ack confirmed by the server), then handles every later
//! one without acknowledging it (`held <id>`), as if the process died between the two.

use futures::StreamExt;
use micro_core::Events;
use micro_core::events::{ConsumeOptions, Offset};
use micro_nats::NatsEvents;
use micro_testkit::checker::id_of;
use micro_testkit::doomed::{self, Orders};

/// The child's side, until it is killed. Returns at once unless run by [`Orders::spawn`].
pub async fn child_main() {
    let Some(orders) = Orders::from_env() else {
        return;
    };
    let events = NatsEvents::connect(&orders.address)
        .await
        .expect("the doomed consumer connects")
        .with_prefetch(orders.prefetch);
    let mut options = ConsumeOptions::group(orders.group).with_offset(Offset::Earliest);
    if let Some(ack_wait) = orders.ack_wait {
        options = options.with_ack_wait(ack_wait);
    }
    let mut stream = events
        .consume(&orders.topic, options)
        .await
        .expect("the doomed consumer consumes");
    doomed::report_ready();
    let mut handled = 0;
    let mut held = Vec::new();
    while let Some(delivery) = stream.next().await {
        let Ok(delivery) = delivery else { continue };
        let id = id_of(&delivery.event.payload);
        if handled < orders.handle_first {
            delivery.ack().await.expect("the doomed consumer acks");
            doomed::report_done(id);
        } else {
            doomed::report_held(id);
            held.push(delivery); // never acknowledged
        }
        handled += 1;
    }
}
