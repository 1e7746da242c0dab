//! The integration tests of micro-nats, as one test binary: each file beside this one is a
//! module (`broker::`, `events::`, ...), so the shared helpers and the generic code they
//! instantiate are compiled and linked once. Run one file's tests with
//! `cargo test -p micro-nats --test nats broker::`.
//!
//! The modules' tests run in one process, side by side: none restarts the shared NATS (the
//! restart tests start servers of their own), and the heavy ones take [`common::HEAVY`].

mod common;
mod events_support;

mod broker;
mod catalog;
mod config;
mod conformance;
mod events;
mod events_group;
mod events_restart;
mod registry;
mod restart;
mod store;
