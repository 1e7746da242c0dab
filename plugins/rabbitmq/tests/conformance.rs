//! The core broker conformance suite, against the RabbitMQ at `MICRO_TEST_RABBITMQ` (default
//! 127.0.0.1:5672).

use crate::common;

use std::sync::Arc;

use micro_core::Broker;
use micro_rabbitmq::RabbitOptions;

micro_core::broker_conformance!(async {
    Arc::new(common::broker(RabbitOptions::new(common::address())).await) as Arc<dyn Broker>
});
