//! A consumer closed (`RabbitBroker::close`) before acknowledging: its message goes to another
//! member of the group. (`queue_group.rs` kills a consumer outright, with SIGKILL.)

use crate::common;

use std::time::Duration;

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::RabbitOptions;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread")]
async fn unacknowledged_message_goes_to_another_member() {
    let address = common::address();
    let topic = common::unique("test.redeliver");
    let queue = common::unique("test-redeliver");
    let options = RabbitOptions::new(&address);
    let (doomed, survivor) = (
        common::broker(options.clone()).await,
        common::broker(options).await,
    );

    // The doomed member takes the message and never finishes with it.
    let (took, mut taken) = mpsc::unbounded_channel();
    let hang = handler(move |message: Message| {
        let took = took.clone();
        async move {
            let _ = took.send(message.body);
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let _doomed_subscription = doomed
        .subscribe(&topic, hang, SubscribeOptions::queue(&queue))
        .await
        .expect("subscribe");
    survivor
        .publish(&topic, Message::new("job-1").with_header("x-job", "1"))
        .await
        .expect("publish");
    let body = tokio::time::timeout(Duration::from_secs(10), taken.recv())
        .await
        .expect("the doomed member gets the job");
    assert_eq!(body.as_deref(), Some(&b"job-1"[..]));

    // Now a second member joins, and the first one dies before acknowledging.
    let (done, mut finished) = mpsc::unbounded_channel();
    let work = handler(move |message: Message| {
        let done = done.clone();
        async move {
            let _ = done.send(message);
            Ok(())
        }
    });
    let subscription = survivor
        .subscribe(&topic, work, SubscribeOptions::queue(&queue))
        .await
        .expect("subscribe");
    doomed.close().await;

    let message = tokio::time::timeout(Duration::from_secs(10), finished.recv())
        .await
        .expect("the job is redelivered to the survivor")
        .expect("handler channel open");
    assert_eq!(&message.body[..], b"job-1");
    assert_eq!(message.header.get("x-job").map(String::as_str), Some("1"));

    subscription.unsubscribe().await.expect("unsubscribe");
    common::delete_queues(&address, &[&queue]).await;
}
