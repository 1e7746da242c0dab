//! The queue-group member the tests kill, run in a child process by
//! [`micro_testkit::doomed::Orders::spawn`] (no AMQP `connection.close`, the TCP connection torn
//! down by the kernel): it handles the first `handle_first` messages (`done <id>`, `Ok`), then
//! holds every later one (`held <id>`): its handler never returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::{RabbitBroker, RabbitOptions};
use micro_testkit::checker::id_of;
use micro_testkit::doomed::{self, Orders};

/// The child's side, until it is killed. Returns at once unless run by [`Orders::spawn`].
pub async fn child_main() {
    let Some(orders) = Orders::from_env() else {
        return;
    };
    let prefetch = u16::try_from(orders.prefetch).expect("a prefetch that fits AMQP's");
    let broker = RabbitBroker::connect(RabbitOptions::new(orders.address).with_prefetch(prefetch))
        .await
        .expect("the doomed consumer connects");
    let (started, handle_first) = (Arc::new(AtomicUsize::new(0)), orders.handle_first);
    let hold = handler(move |message: Message| {
        // Reported in delivery order, as the handler is called.
        let id = id_of(&message.body);
        let hold = started.fetch_add(1, Ordering::SeqCst) >= handle_first;
        if hold {
            doomed::report_held(id);
        } else {
            doomed::report_done(id);
        }
        async move {
            id.ok_or("a message without an id")?;
            if hold {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    });
    let _subscription = broker
        .subscribe(&orders.topic, hold, SubscribeOptions::queue(orders.group))
        .await
        .expect("the doomed consumer subscribes");
    doomed::report_ready();
    std::future::pending::<()>().await;
}
