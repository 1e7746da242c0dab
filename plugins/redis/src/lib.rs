//! # micro-redis
//!
//! Redis for micro (work in progress).
