//! The gateway's `ApiError` as far as `api-gateway/src/route.rs` uses it (the constructors it
//! calls, the fields a target reads), at the path route.rs imports it from
//! (`crate::error::ApiError`). Keep in step with `api-gateway/src/error.rs`: a constructor
//! route.rs starts using must be added here, with the same status and code.

use http::StatusCode;
use tonic::Code;

/// An error the path parser answers with.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The gRPC code carried in the body.
    pub code: Code,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub(crate) fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: a malformed request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    /// 404: unknown service or method.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, message)
    }
}
