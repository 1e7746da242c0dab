//! The integration tests of micro-redis, as one test binary: each file beside this one is a
//! module (`conformance::`, `cache::`, `faults::`), so the shared helpers and the generic code
//! they instantiate are compiled and linked once. Run one file's tests with
//! `cargo test -p micro-redis --test redis cache::`.
//!
//! The modules' tests run in one process, side by side, on the Redis at 6379: each works in
//! namespaces of its own and removes what it wrote; the restart test has a Redis of its own.

mod common;

mod cache;
mod conformance;
mod faults;
