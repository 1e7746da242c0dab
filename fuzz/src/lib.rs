//! What the fuzz targets in `fuzz_targets/` share: the descriptors they transcode with (the
//! greeter's and `testing.v1`'s, compiled by `build.rs`), the messages a target's first input
//! byte picks from, a tiny `block_on` for the async entry points, and the gateway's path parser.
//!
//! Not part of micro: a `cargo fuzz` crate outside the workspace (see README.md).
//!
//! The path parser is compiled here from the gateway's own source file (`#[path]` below), with
//! a stand-in for the one gateway type it uses (`error.rs`), rather than by depending on
//! `micro-gateway`: that crate brings every registry and store plugin (etcd-client,
//! async-nats, redis, ...), about 80 more crates to build with coverage instrumentation, which
//! would make the fuzz build in CI several minutes longer for one 100-line function.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use prost_reflect::{DescriptorPool, MessageDescriptor, ServiceDescriptor};

mod error;
pub mod gateway;
#[path = "../../api-gateway/src/route.rs"]
mod route;

/// The encoded `FileDescriptorSet` of `proto/greeter/v1/greeter.proto`.
const GREETER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/greeter_descriptor.bin"));
/// The encoded `FileDescriptorSet` of `proto/testing/v1/everything.proto` (every shape of the
/// proto3 JSON mapping, well-known types included).
const EVERYTHING: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/everything_descriptor.bin"));

/// The messages the transcoding targets decode into, in the order a selector byte picks them.
/// Seeds start with the ASCII digit or letter of their message (`0` is `HelloRequest`), so that
/// the corpus stays readable; [`pick`] maps any byte onto this list.
pub const MESSAGES: [&str; 10] = [
    "greeter.v1.HelloRequest",
    "greeter.v1.StreamRequest",
    "testing.v1.Scalars",
    "testing.v1.Shapes",
    "testing.v1.Tree",
    "testing.v1.Known",
    "testing.v1.CountRequest",
    "greeter.v1.HelloReply",
    "google.protobuf.Empty",
    "google.protobuf.Struct",
];

/// Both descriptor sets in one pool.
pub fn pool() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        let mut pool = DescriptorPool::new();
        for set in [GREETER, EVERYTHING] {
            pool.decode_file_descriptor_set(set)
                .expect("build.rs encodes valid descriptor sets");
        }
        pool
    });
    &POOL
}

/// The message of [`MESSAGES`] that `selector` picks: `b'0'` the first, `b'1'` the second, ...
/// (any byte picks one, by its value modulo the count).
pub fn pick(selector: u8) -> MessageDescriptor {
    let index = usize::from(selector.wrapping_sub(b'0')) % MESSAGES.len();
    pool()
        .get_message_by_name(MESSAGES[index])
        .expect("every name of MESSAGES is in the pool")
}

/// The gRPC services of both sets, as the gateway would know them by reflection.
pub fn services() -> &'static [ServiceDescriptor] {
    static SERVICES: LazyLock<Vec<ServiceDescriptor>> =
        LazyLock::new(|| pool().services().collect());
    &SERVICES
}

/// Runs `future` to completion on this thread (parking it while the future waits), for the
/// async entry points (`Auth::inspect`) without a runtime per input.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}
