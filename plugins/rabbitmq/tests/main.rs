//! The integration tests of micro-rabbitmq, as one test binary: each file beside this one is a
//! module (`dead_letter::`, `tls::`, ...), so the shared helpers and the generic code they
//! instantiate are compiled and linked once. Run one file's tests with
//! `cargo test -p micro-rabbitmq --test rabbitmq dead_letter::`.
//!
//! The modules' tests run in one process, side by side, on the RabbitMQ at 5672: each works on
//! queues and exchanges of its own, `reconnect.rs` closes connections only in a vhost of its own,
//! `tls.rs` starts a node of its own, and the heavy tests take [`common::HEAVY`].

mod common;

mod conformance;
mod dead_letter;
mod queue_group;
mod reconnect;
mod redelivery;
mod tls;
