//! The one JSON error shape of the gateway, `{"code", "message", "details"}`, and the standard
//! gRPC → HTTP status mapping. A service's `google.rpc.Status` details become `details`, each
//! as proto3 JSON with its `@type` (see [`micro_core::status::details_json`]); a `RetryInfo`
//! among them becomes `Retry-After`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::Code;

/// An error answered to an HTTP client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The gRPC code number carried in the body.
    pub code: Code,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds to wait, sent as `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// Methods allowed, sent as `Allow` (405).
    pub allow: Option<&'static str>,
    /// The service's error details, as proto3 JSON objects with `@type`.
    pub details: Vec<serde_json::Value>,
}

impl ApiError {
    /// An error with an explicit HTTP status and gRPC code.
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
            details: Vec::new(),
        }
    }

    /// 400: malformed request (bad JSON, wrong field type, bad path).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    /// 404: unknown service or method.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Code::NotFound, message)
    }

    /// 405 with the allowed methods.
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("method {method} is not allowed here; use {allow}"),
            )
        }
    }

    /// An error from a called service: its status mapped onto HTTP, with its standard
    /// (`google.rpc`) details.
    pub fn from_status(status: &tonic::Status) -> Self {
        Self::from_service_status(status, None)
    }

    /// An error from a called service whose descriptors are `pool`: details of the service's own
    /// types are decoded too. A `RetryInfo` sets `Retry-After` (whole seconds, rounded up).
    pub fn from_service_status(
        status: &tonic::Status,
        pool: Option<&prost_reflect::DescriptorPool>,
    ) -> Self {
        let mut error = Self::new(http_status(status.code()), status.code(), status.message());
        error.details = micro_core::status::details_json(status, pool);
        error.retry_after = micro_core::status::retry_delay(status)
            .map(|delay| delay.as_secs() + u64::from(delay.subsec_nanos() > 0));
        error
    }
}

impl From<micro_core::dynamic::JsonError> for ApiError {
    fn from(error: micro_core::dynamic::JsonError) -> Self {
        ApiError::bad_request(error.message)
    }
}

impl From<micro_core::dynamic::MethodError> for ApiError {
    fn from(error: micro_core::dynamic::MethodError) -> Self {
        match error {
            micro_core::dynamic::MethodError::NotFound(message) => ApiError::not_found(message),
            micro_core::dynamic::MethodError::Ambiguous(message) => ApiError::bad_request(message),
        }
    }
}

/// The standard gRPC → HTTP mapping (as grpc-gateway's).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request (nginx), as grpc-gateway.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code as i32, "message": self.message, "details": self.details });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_code() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn details_go_to_the_body_and_retry_info_to_retry_after() {
        let status: tonic::Status = micro_core::status::resource_exhausted("slow down")
            .retry_after(std::time::Duration::from_millis(2100))
            .field_violation("name", "too long")
            .into();
        let error = ApiError::from_status(&status);
        assert_eq!(error.retry_after, Some(3), "rounded up");
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let plain = ApiError::from_status(&tonic::Status::not_found("gone"));
        assert!(plain.details.is_empty() && plain.retry_after.is_none());
        let exact: tonic::Status = micro_core::status::unavailable("later")
            .retry_after(std::time::Duration::from_secs(2))
            .into();
        assert_eq!(ApiError::from_status(&exact).retry_after, Some(2));
    }
}
