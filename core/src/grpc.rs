//! gRPC's wire conventions, shared by the server, the client, the wrappers and the gateway:
//! the `grpc-timeout` header, and the two names of one method — the HTTP/2 path
//! (`/greeter.v1.Greeter/SayHello`) and the registry's endpoint name (`Greeter.SayHello`).

use std::time::Duration;

use crate::registry::Service;
use crate::{Error, Result};

// gRPC's header names, looked up on every call: as constants, a look-up hashes the name
// without parsing (and validating) a string first.
/// `grpc-status`: a call's final code, in the trailers (or the headers of a trailers-only answer).
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`: the status message.
pub(crate) const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the caller's deadline.
pub(crate) const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
/// `x-request-id`: the id the gateway gives each request.
pub(crate) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The deadline a gRPC client sent (`grpc-timeout: 100m`), if any.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `Service.Method` endpoint of a gRPC path: `/greeter.v1.Greeter/SayHello` →
/// `Greeter.SayHello`. `None` for a path of another shape.
pub fn endpoint_of_path(path: &str) -> Option<String> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let service = service.rsplit('.').next()?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some(format!("{service}.{method}"))
}

/// The gRPC path of `endpoint` of `service`, as the registry records it: `endpoint` is an
/// endpoint name ("Greeter.SayHello") or a path already ("/greeter.v1.Greeter/SayHello").
pub fn grpc_path(service: &Service, endpoint: &str) -> Result<String> {
    let found = service.endpoints.iter().find(|e| {
        e.name == endpoint
            || e.metadata
                .get("grpc_method")
                .is_some_and(|p| p == endpoint || p.trim_start_matches('/') == endpoint)
    });
    match found.and_then(|e| e.metadata.get("grpc_method")) {
        Some(path) => Ok(path.clone()),
        None => {
            let known: Vec<&str> = service.endpoints.iter().map(|e| e.name.as_str()).collect();
            Err(Error::invalid(
                "endpoint",
                format!(
                    "the server has no endpoint `{endpoint}` (known: {}); did you add its descriptors?",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// The `grpc-status` in `headers` (response headers or trailers).
pub(crate) fn status_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get(&GRPC_STATUS)?;
    // Most calls end OK: one byte to compare rather than a parse.
    if value.as_bytes() == b"0" {
        return Some(tonic::Code::Ok);
    }
    let value = value.to_str().ok()?;
    value.trim().parse::<i32>().ok().map(tonic::Code::from)
}

/// The gRPC code of an HTTP status without `grpc-status` (gRPC's HTTP to gRPC status mapping,
/// as gRPC clients apply it).
pub fn http_code(status: http::StatusCode) -> tonic::Code {
    use tonic::Code;
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The canonical upper-case name of a gRPC code (`INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        let mut headers = http::HeaderMap::new();
        for (value, want) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5x", None),
            ("", None),
            ("m", None),
        ] {
            headers.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(grpc_timeout(&headers), want, "{value}");
        }
    }

    #[test]
    fn endpoints_of_grpc_paths() {
        assert_eq!(
            endpoint_of_path("/greeter.v1.Greeter/SayHello").as_deref(),
            Some("Greeter.SayHello")
        );
        assert_eq!(
            endpoint_of_path("/Greeter/SayHello").as_deref(),
            Some("Greeter.SayHello")
        );
        for bad in ["", "/", "//", "/a/", "/a/b/c", "a/b", "/a.b./c"] {
            assert_eq!(endpoint_of_path(bad), None, "{bad}");
        }
    }
}
