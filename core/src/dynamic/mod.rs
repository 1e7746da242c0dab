//! Calling services known only at run time, the way grpcurl does: descriptors fetched by gRPC
//! reflection, methods found by loose name, JSON transcoded with the proto3 JSON mapping, and a
//! tonic codec for the resulting messages. The gateway and the `micro` command share it.
//!
//! ```no_run
//! use micro_core::dynamic::{self, DynamicCodec};
//! # async fn run(client: micro_core::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let channel = client.channel("greeter");
//! let (pool, names) = dynamic::reflection::fetch(channel.clone()).await?;
//! let services: Vec<_> = names.iter().filter_map(|n| pool.get_service_by_name(n)).collect();
//! let method = dynamic::find_method("greeter", &services, None, "say-hello")?;
//! let request = dynamic::from_json(&method.input(), br#"{"name":"Alice"}"#, false)?;
//! let mut grpc = tonic::client::Grpc::new(channel);
//! grpc.ready().await?;
//! let reply = grpc
//!     .unary(tonic::Request::new(request), dynamic::path(&method), DynamicCodec::new(method.output()))
//!     .await?;
//! println!("{}", String::from_utf8(dynamic::to_json(reply.get_ref())?)?);
//! # Ok(())
//! # }
//! ```

mod codec;
mod comments;
mod json;
mod kind;
mod method;
pub mod reflection;
mod reply;
mod transcode;
mod unique;

pub use codec::{BytesEncoder, DynamicCodec, DynamicDecoder, DynamicEncoder, WireCodec};
pub use comments::{field_comment, leading_comment, message_comment, method_comment};
pub use json::{JsonError, MAX_DEPTH, check_unique_keys, from_json, query_to_json, to_json};
pub use method::{MethodError, find_method, normalize, path};
pub use reply::ReplyPlan;
pub use transcode::{Plan, json_to_wire};
