//! The integration tests of micro-etcd, as one test binary: each file beside this one is a
//! module (`conformance::`, `watch::`, ...), so the shared helpers and the generic code they
//! instantiate are compiled and linked once. Run one file's tests with
//! `cargo test -p micro-etcd --test etcd watch::`.
//!
//! The modules' tests run in one process, side by side, on the one etcd of `scripts/setup`:
//! the tests that compact its history or fill its registry take it alone, the others share it
//! ([`common::alone`], [`common::share`]).

mod common;

mod conformance;
mod faults;
mod scale;
mod tls;
mod watch;
