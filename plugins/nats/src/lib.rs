//! # micro-nats
//!
//! NATS for micro (work in progress).
