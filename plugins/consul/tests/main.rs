//! The integration tests of micro-consul, as one test binary: each file beside this one is a
//! module (`conformance::`, `faults::`, ...), so the shared helpers and the generic code they
//! instantiate are compiled and linked once. Run one file's tests with
//! `cargo test -p micro-consul --test consul faults::`.
//!
//! Each test talks to a Consul API double of its own (or to the agent at `CONSUL_HTTP_ADDR`).

mod support;

mod conformance;
mod double_api;
mod faults;
mod watch_ttl;
