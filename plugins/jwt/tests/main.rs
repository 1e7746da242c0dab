//! The integration tests of micro-jwt, as one test binary: each file beside this one is a
//! module (`tokens::`, `sessions::`, ...), so the shared helpers and the generic code they
//! instantiate are compiled and linked once. Run one file's tests with
//! `cargo test -p micro-jwt --test jwt tokens::`.
//!
//! Everything runs in process (keys from `keys/`, memory stores and registries, servers on free
//! ports): the modules' tests share nothing but the read-only keys.

mod common;

mod conformance;
mod rules;
mod sessions;
mod tokens;
mod wrappers;
