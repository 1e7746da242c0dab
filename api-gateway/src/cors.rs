//! CORS: the origins allowed by `--cors-origins`, preflight answers, and the headers added to
//! every answer to an allowed origin.

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::error::ApiError;

/// The allowed origins (`*` allows any).
#[derive(Debug, Default)]
pub(crate) struct Cors {
    origins: Vec<String>,
}

impl Cors {
    /// From the option's comma-separated list; empty: CORS off.
    pub(crate) fn new(origins: &str) -> Self {
        Cors {
            origins: origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    /// Whether `origin` may call the gateway from a browser.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o == origin)
    }

    /// The answer to an `OPTIONS` preflight: 204 with the allowed methods for an allowed origin,
    /// else 405 as for any other method the gateway does not serve.
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Result<Response, ApiError> {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if origin.is_none_or(|o| !self.allows(o)) {
            return Err(ApiError::method_not_allowed(&Method::OPTIONS, "GET, POST"));
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        Ok(response)
    }

    /// Adds `Access-Control-Allow-Origin` (and `Vary`) when `origin` is allowed.
    pub(crate) fn add_headers(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if origin.to_str().is_ok_and(|o| self.allows(o)) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}
