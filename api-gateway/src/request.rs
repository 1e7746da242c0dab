//! HTTP helpers of the call path: reading a JSON body within the limit, the content types
//! read as JSON, the headers forwarded as gRPC metadata, and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;

use crate::auth;
use crate::error::ApiError;

/// Checks the content type and reads the body within `limit` bytes.
pub(crate) async fn read_body(
    request: Request,
    limit: u64,
) -> Result<(HeaderMap, Vec<u8>), ApiError> {
    let (parts, body) = request.into_parts();
    check_content_type(&parts.headers)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::InvalidArgument,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok((parts.headers, collected.to_bytes().to_vec())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => match crate::serve::body_timeout(e.as_ref()) {
            // Answered 408, and counted as such in the metrics and the access log.
            Some(late) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                tonic::Code::DeadlineExceeded,
                late.to_string(),
            )),
            None => Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
        },
    }
}

/// JSON, `application/*+json`, none, or curl's default form type are read as JSON; others 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    if value.as_bytes() == b"application/json" {
        // What nearly every client sends: no parsing.
        return Ok(());
    }
    let text = value
        .to_str()
        .map_err(|_| unsupported("a content type that is not ASCII"))?;
    let essence = text.split(';').next().unwrap_or_default().trim();
    // Compared without case, and without a lowercase copy on every request.
    let is = |expected: &str| essence.eq_ignore_ascii_case(expected);
    let has_prefix = |prefix: &str| {
        essence
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let has_suffix = |suffix: &str| {
        essence
            .len()
            .checked_sub(suffix.len())
            .and_then(|start| essence.get(start..))
            .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
    };
    let json = is("application/json")
        || is("application/x-www-form-urlencoded")
        || (has_prefix("application/") && has_suffix("+json"));
    if json {
        Ok(())
    } else {
        Err(unsupported(&format!(
            "content type `{}`",
            essence.to_ascii_lowercase()
        )))
    }
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        tonic::Code::InvalidArgument,
        format!("{what} is not accepted; send JSON (application/json)"),
    )
}

/// Copies end-to-end headers into gRPC metadata; never hop-by-hop, reserved or binary ones.
pub(crate) fn forward_metadata(headers: &HeaderMap, metadata: &mut tonic::metadata::MetadataMap) {
    const SKIP: [&str; 16] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept-encoding",
        "expect",
        "cookie",
        "user-agent",
    ];
    for (name, value) in headers {
        let name = name.as_str();
        if SKIP.contains(&name)
            || name.starts_with("grpc-")
            || name.starts_with(auth::ACCOUNT_PREFIX)
            || name.ends_with("-bin")
            || name.starts_with(':')
        {
            continue;
        }
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.append(key, value);
        }
    }
}

/// The client a rate limit counts: the peer, or the first `X-Forwarded-For` address when the
/// gateway is told it runs behind a proxy (otherwise anyone could claim any address).
pub(crate) fn client_ip(peer: SocketAddr, headers: &HeaderMap, behind_proxy: bool) -> IpAddr {
    let forwarded = || {
        headers
            .get("x-forwarded-for")?
            .to_str()
            .ok()?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    };
    if behind_proxy {
        forwarded().unwrap_or(peer.ip())
    } else {
        peer.ip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn forwards_end_to_end_headers_only() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer t"),
            ("x-trace", "abc"),
            ("te", "trailers"),
            ("connection", "keep-alive"),
            ("grpc-timeout", "1S"),
            ("grpc-encoding", "gzip"),
            ("x-data-bin", "AAEC"),
            ("cookie", "session=1"),
            ("host", "example"),
            ("x-micro-account-id", "admin"),
            ("x-micro-account-scopes", "everything"),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        forward_metadata(&headers, &mut metadata);
        let mut forwarded: Vec<String> = metadata
            .keys()
            .map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_string(),
                tonic::metadata::KeyRef::Binary(k) => k.as_str().to_string(),
            })
            .collect();
        forwarded.sort();
        assert_eq!(
            forwarded,
            ["authorization", "x-trace"],
            "hop-by-hop, reserved, binary, cookies and spoofed account headers stay behind"
        );
    }

    #[test]
    fn json_content_types_are_read_whatever_their_case() {
        let check = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            check_content_type(&headers).map_err(|e| e.message)
        };
        for accepted in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/x-www-form-urlencoded ",
            "application/problem+json",
            "APPLICATION/VND.API+JSON;x=1",
        ] {
            assert!(check(accepted).is_ok(), "{accepted}");
        }
        for (refused, named) in [
            ("text/plain", "text/plain"),
            ("Text/JSON", "text/json"),
            ("application/+jsonx", "application/+jsonx"),
            ("+json", "+json"),
        ] {
            let message = check(refused).unwrap_err();
            assert!(
                message.contains(&format!("content type `{named}`")),
                "{refused}: {message}"
            );
        }
        assert!(check_content_type(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn client_ip_ignores_forwarded_for_unless_behind_a_proxy() {
        let peer: SocketAddr = "10.0.0.9:1234".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.0.0.1"),
        );
        assert_eq!(client_ip(peer, &headers, false), peer.ip());
        assert_eq!(
            client_ip(peer, &headers, true),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }
}
