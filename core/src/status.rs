//! Rich gRPC errors: a `tonic::Status` carrying `google.rpc.Status` details
//! (`grpc-status-details-bin`), built by services and read by callers.
//!
//! A handler answers a bad request with the field that is wrong, a throttled caller with when to
//! come back, anything with a machine-readable reason:
//!
//! ```
//! use std::time::Duration;
//! use micro_core::status;
//!
//! let refused: tonic::Status = status::invalid_argument("the name is empty")
//!     .field_violation("name", "must not be empty")
//!     .into();
//! let throttled: tonic::Status = status::resource_exhausted("too many greetings")
//!     .retry_after(Duration::from_millis(1500))
//!     .error_info("RATE_LIMITED", "greeter.example.com", [("limit", "10/s")])
//!     .into();
//! assert_eq!(status::retry_delay(&throttled), Some(Duration::from_millis(1500)));
//! # drop(refused);
//! ```
//!
//! The gateway turns the details into its error body's `details` (proto3 JSON with `@type`), and
//! a RetryInfo into `Retry-After`; [`details_json`] is that conversion. Any message type can be
//! attached with [`RichStatus::detail`] or [`RichStatus::any`]: callers that know its descriptor
//! (the gateway has every service's descriptors by reflection) show its fields, others its bytes.
//! tonic-types' [`ErrorDetails`] and [`StatusExt`] are re-exported for reading details in Rust.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Code;

/// A detail of any message type, for [`RichStatus::any`].
pub use prost_types::Any;
pub use tonic_types::{
    BadRequest, ErrorDetails, ErrorInfo, FieldViolation, Help, HelpLink, LocalizedMessage,
    PreconditionFailure, QuotaFailure, ResourceInfo, RetryInfo, StatusExt,
};

/// The prefix of the type URL of a detail (`type.googleapis.com/google.rpc.BadRequest`).
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// A status under construction: a code, a message and its details, in the order added. Becomes
/// a `tonic::Status` with [`build`](RichStatus::build) or `.into()`.
#[derive(Debug, Clone)]
pub struct RichStatus {
    code: Code,
    message: String,
    details: ErrorDetails,
    /// Details of other types, after the standard ones.
    extra: Vec<prost_types::Any>,
}

/// A status with `code` and `message` and no details yet.
pub fn new(code: Code, message: impl Into<String>) -> RichStatus {
    RichStatus {
        code,
        message: message.into(),
        details: ErrorDetails::new(),
        extra: Vec::new(),
    }
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(message: impl Into<String>) -> RichStatus {
            new(Code::$code, message)
        }
    )*};
}

constructors! {
    /// `INVALID_ARGUMENT` (HTTP 400): add [`field_violation`](RichStatus::field_violation)s.
    invalid_argument => InvalidArgument;
    /// `FAILED_PRECONDITION` (HTTP 400): add
    /// [`precondition_violation`](RichStatus::precondition_violation)s.
    failed_precondition => FailedPrecondition;
    /// `OUT_OF_RANGE` (HTTP 400).
    out_of_range => OutOfRange;
    /// `NOT_FOUND` (HTTP 404): add the [`resource`](RichStatus::resource).
    not_found => NotFound;
    /// `ALREADY_EXISTS` (HTTP 409).
    already_exists => AlreadyExists;
    /// `ABORTED` (HTTP 409).
    aborted => Aborted;
    /// `PERMISSION_DENIED` (HTTP 403).
    permission_denied => PermissionDenied;
    /// `UNAUTHENTICATED` (HTTP 401).
    unauthenticated => Unauthenticated;
    /// `RESOURCE_EXHAUSTED` (HTTP 429): add [`retry_after`](RichStatus::retry_after) and
    /// [`quota_violation`](RichStatus::quota_violation)s.
    resource_exhausted => ResourceExhausted;
    /// `UNAVAILABLE` (HTTP 503): add [`retry_after`](RichStatus::retry_after).
    unavailable => Unavailable;
    /// `INTERNAL` (HTTP 500).
    internal => Internal;
}

impl RichStatus {
    /// A `BadRequest` field violation: which field (`name`, `items[2].sku`) and what is wrong.
    pub fn field_violation(
        mut self,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.details.add_bad_request_violation(field, description);
        self
    }

    /// A `PreconditionFailure` violation: its type (`TOS`), subject and what is wrong.
    pub fn precondition_violation(
        mut self,
        kind: impl Into<String>,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.details
            .add_precondition_failure_violation(kind, subject, description);
        self
    }

    /// A `QuotaFailure` violation: whose quota (`client:203.0.113.9`) and which one.
    pub fn quota_violation(
        mut self,
        subject: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.details
            .add_quota_failure_violation(subject, description);
        self
    }

    /// `RetryInfo`: how long the caller should wait before trying again (the gateway's
    /// `Retry-After`).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.details.set_retry_info(Some(delay));
        self
    }

    /// `ErrorInfo`: a reason constant (`RATE_LIMITED`), the domain that defines it and
    /// key/value metadata.
    pub fn error_info<K: Into<String>, V: Into<String>>(
        mut self,
        reason: impl Into<String>,
        domain: impl Into<String>,
        metadata: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let metadata: std::collections::HashMap<String, String> = metadata
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.details.set_error_info(reason, domain, metadata);
        self
    }

    /// `ResourceInfo`: the resource concerned (type, name, owner) and what about it.
    pub fn resource(
        mut self,
        resource_type: impl Into<String>,
        resource_name: impl Into<String>,
        owner: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.details
            .set_resource_info(resource_type, resource_name, owner, description);
        self
    }

    /// A `Help` link: where to read how to fix it.
    pub fn help_link(mut self, description: impl Into<String>, url: impl Into<String>) -> Self {
        self.details.add_help_link(description, url);
        self
    }

    /// `LocalizedMessage`: the message for a person, in `locale` (`en-US`).
    pub fn localized(mut self, locale: impl Into<String>, message: impl Into<String>) -> Self {
        self.details.set_localized_message(locale, message);
        self
    }

    /// A detail of the service's own message type (one implementing [`prost::Name`]).
    pub fn detail<M: prost::Name>(self, message: &M) -> Self {
        self.any(prost_types::Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        })
    }

    /// A detail already packed as an `Any` (its `type_url` as
    /// `type.googleapis.com/<full message name>`).
    pub fn any(mut self, detail: prost_types::Any) -> Self {
        self.extra.push(detail);
        self
    }

    /// The `tonic::Status`, its details in `grpc-status-details-bin`.
    pub fn build(self) -> tonic::Status {
        let status = tonic::Status::with_error_details(self.code, self.message, self.details);
        if self.extra.is_empty() {
            return status;
        }
        // tonic-types encodes only its own types: add the others to the google.rpc.Status it
        // encoded. Decoding what was just encoded cannot fail; if it did, the standard details
        // are kept rather than losing the status.
        let mut encoded = match tonic_types::Status::decode(status.details()) {
            Ok(encoded) => encoded,
            Err(e) => {
                tracing::warn!(error = %e, "cannot add details to a status; sent without them");
                return status;
            }
        };
        encoded.details.extend(self.extra);
        tonic::Status::with_details(
            status.code(),
            status.message(),
            encoded.encode_to_vec().into(),
        )
    }
}

impl From<RichStatus> for tonic::Status {
    fn from(status: RichStatus) -> tonic::Status {
        status.build()
    }
}

/// How long the status's `RetryInfo` asks the caller to wait, if it has one.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    if status.details().is_empty() {
        return None;
    }
    status.get_details_retry_info()?.retry_delay
}

/// The details of `status` as proto3 JSON, each with its `@type`; `[]` when it has none.
///
/// A detail is decoded with the message descriptors of `pool` (the called service's, which may
/// define its own detail types) or else the standard `google.rpc` ones (BadRequest, ErrorInfo,
/// RetryInfo, ...). One that neither knows, or that does not decode, is shown as
/// `{"@type": <type URL>, "value": <base64 bytes>}` rather than dropped. A message whose JSON is
/// not an object (a well-known type such as `google.protobuf.Duration`) is
/// `{"@type", "value": <its JSON>}`, as proto3 JSON writes an `Any` holding one.
pub fn details_json(
    status: &tonic::Status,
    pool: Option<&DescriptorPool>,
) -> Vec<serde_json::Value> {
    let bytes = status.details();
    if bytes.is_empty() {
        return Vec::new();
    }
    let Ok(decoded) = tonic_types::Status::decode(bytes) else {
        return vec![opaque(
            &format!("{TYPE_URL_PREFIX}google.rpc.Status"),
            bytes,
        )];
    };
    decoded
        .details
        .iter()
        .map(|any| detail_json(any, pool))
        .collect()
}

fn detail_json(any: &prost_types::Any, pool: Option<&DescriptorPool>) -> serde_json::Value {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = pool
        .and_then(|pool| pool.get_message_by_name(name))
        .or_else(|| standard().and_then(|pool| pool.get_message_by_name(name)));
    let json = descriptor
        .and_then(|descriptor| DynamicMessage::decode(descriptor, any.value.as_slice()).ok())
        .and_then(|message| crate::dynamic::to_json(&message).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
    match json {
        Some(serde_json::Value::Object(mut fields)) => {
            fields.insert("@type".into(), any.type_url.clone().into());
            serde_json::Value::Object(fields)
        }
        Some(value) => serde_json::json!({ "@type": any.type_url, "value": value }),
        None => opaque(&any.type_url, &any.value),
    }
}

fn opaque(type_url: &str, value: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "@type": type_url,
        "value": base64::engine::general_purpose::STANDARD.encode(value),
    })
}

/// The descriptors of `google/rpc/status.proto` and `error_details.proto` (with the well-known
/// types they import), built once.
fn standard() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::global();
        match pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET) {
            Ok(()) => Some(pool),
            Err(e) => {
                // Only a tonic-types release with a broken descriptor set gets here: details are
                // then shown as bytes.
                tracing::error!(error = %e, "the google.rpc descriptors do not load; error details are shown as base64");
                None
            }
        }
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_details_are_proto3_json_with_their_type() {
        let status: tonic::Status = invalid_argument("bad")
            .field_violation("name", "must not be empty")
            .retry_after(Duration::from_millis(1500))
            .error_info("EMPTY", "greeter.example", [("field", "name")])
            .help_link("naming", "https://example.com/names")
            .into();
        let details = details_json(&status, None);
        let by_type = |name: &str| {
            details
                .iter()
                .find(|d| d["@type"] == format!("{TYPE_URL_PREFIX}google.rpc.{name}"))
                .unwrap_or_else(|| panic!("no {name} in {details:?}"))
                .clone()
        };
        assert_eq!(
            by_type("BadRequest")["fieldViolations"][0]["field"],
            "name",
            "lowerCamelCase field names"
        );
        assert_eq!(by_type("RetryInfo")["retryDelay"], "1.500s");
        assert_eq!(by_type("ErrorInfo")["metadata"]["field"], "name");
        assert_eq!(
            by_type("Help")["links"][0]["url"],
            "https://example.com/names"
        );
        assert_eq!(retry_delay(&status), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn unknown_and_undecodable_details_are_kept_as_base64() {
        let status: tonic::Status = not_found("gone")
            .any(prost_types::Any {
                type_url: format!("{TYPE_URL_PREFIX}shop.v1.Unknown"),
                value: vec![8, 1],
            })
            .any(prost_types::Any {
                type_url: format!("{TYPE_URL_PREFIX}google.rpc.ErrorInfo"),
                value: vec![0xff, 0xff],
            })
            .into();
        let details = details_json(&status, None);
        assert_eq!(
            details,
            vec![
                serde_json::json!({"@type": "type.googleapis.com/shop.v1.Unknown", "value": "CAE="}),
                serde_json::json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "value": "//8="}),
            ]
        );
        assert_eq!(retry_delay(&status), None);
        assert!(details_json(&tonic::Status::not_found("plain"), None).is_empty());
        let garbage = tonic::Status::with_details(Code::Internal, "x", vec![0xff].into());
        assert_eq!(
            details_json(&garbage, None)[0]["@type"],
            "type.googleapis.com/google.rpc.Status"
        );
    }

    #[test]
    fn a_type_the_pool_knows_is_decoded_and_a_well_known_one_wrapped() {
        let status: tonic::Status = unavailable("later")
            .any(prost_types::Any {
                type_url: format!("{TYPE_URL_PREFIX}google.protobuf.Duration"),
                value: prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }
                .encode_to_vec(),
            })
            .into();
        let details = details_json(&status, Some(&DescriptorPool::global()));
        assert_eq!(
            details,
            vec![
                serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Duration", "value": "3s"})
            ]
        );
    }
}
