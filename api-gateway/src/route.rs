//! Path rules: `/{service}/{Service}/{Method}`, `/{service}/{Method}`, `/{service}`, `/rpc`,
//! and the gateway's own pages (`/health`, `/health/ready`, `/metrics`, ...).
//! Names match case-insensitively with `-` and `_` ignored (`/greeter/greeter/say-hello`).

use crate::error::ApiError;

/// Longest path accepted; longer is 414.
pub(crate) const MAX_PATH: usize = 2048;

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// `/`: the list of services.
    Index,
    /// `/health`: liveness.
    Health,
    /// `/health/ready`: readiness (the registry answers, required services have nodes).
    Ready,
    /// `/metrics`.
    Metrics,
    /// `/rpc`: service and endpoint in the body.
    Rpc,
    /// `/openapi.json`: every routable endpoint of every registered service.
    OpenApi,
    /// `/{service}/openapi.json`: one service's endpoints.
    ServiceOpenApi(&'a str),
    /// `/docs` (the page) or `/docs/{asset}` (its scripts and styles).
    Docs(Option<&'a str>),
    /// `/mcp`: the Model Context Protocol endpoint.
    Mcp,
    /// `/{service}`: describe it.
    Describe(&'a str),
    /// `/{service}/[{Service}/]{Method}`: call it.
    Call {
        /// The registered service.
        service: &'a str,
        /// The gRPC service, when given.
        grpc_service: Option<&'a str>,
        /// The method.
        method: &'a str,
    },
}

/// Parses a raw (still percent-encoded) path. Empty and dot segments, encoded slashes and
/// characters outside names are refused: a path names things, it never walks.
pub(crate) fn parse(path: &str) -> Result<Target<'_>, ApiError> {
    if path.len() > MAX_PATH {
        return Err(ApiError::new(
            http::StatusCode::URI_TOO_LONG,
            tonic::Code::InvalidArgument,
            format!("the path is {} bytes, more than {MAX_PATH}", path.len()),
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::bad_request("the path must start with /"));
    };
    if rest.is_empty() {
        return Ok(Target::Index);
    }
    // The first segments, without collecting them all: routes have at most three, and a longer
    // path is refused once every segment is checked (a bad segment is named first).
    let mut first = [""; 3];
    let mut count = 0;
    for segment in rest.split('/') {
        check_segment(path, segment)?;
        if let Some(slot) = first.get_mut(count) {
            *slot = segment;
        }
        count += 1;
    }
    let Some(segments) = first.get(..count) else {
        return Err(no_route(path));
    };
    Ok(match segments {
        ["health"] => Target::Health,
        ["health", "ready"] => Target::Ready,
        ["metrics"] => Target::Metrics,
        ["rpc"] => Target::Rpc,
        ["openapi.json"] => Target::OpenApi,
        ["docs"] => Target::Docs(None),
        ["docs", asset] => Target::Docs(Some(asset)),
        ["mcp"] => Target::Mcp,
        [service, "openapi.json"] => Target::ServiceOpenApi(service),
        [service] => Target::Describe(service),
        [service, method] => Target::Call {
            service,
            grpc_service: None,
            method,
        },
        [service, grpc_service, method] => Target::Call {
            service,
            grpc_service: Some(grpc_service),
            method,
        },
        _ => return Err(no_route(path)),
    })
}

fn no_route(path: &str) -> ApiError {
    ApiError::not_found(format!(
        "no route for `{path}`: use /{{service}}/{{Service}}/{{Method}}"
    ))
}

/// Refuses an empty or dot segment, and characters outside names (naming the first one).
fn check_segment(path: &str, segment: &str) -> Result<(), ApiError> {
    if segment.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the path `{path}` has an empty segment"
        )));
    }
    if segment == "." || segment == ".." {
        return Err(ApiError::bad_request(format!(
            "the path `{path}` has a dot segment"
        )));
    }
    let name_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    // Bytes first (no UTF-8 decoding on every request); the character only to name it.
    if segment.bytes().all(|b| name_byte(&b)) {
        return Ok(());
    }
    let bad = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        .unwrap_or('?');
    let what = if segment.to_ascii_lowercase().contains("%2f")
        || segment.to_ascii_lowercase().contains("%5c")
    {
        "an encoded slash".to_string()
    } else {
        format!("the character `{bad}`")
    };
    Err(ApiError::bad_request(format!(
        "the path segment `{segment}` has {what}; names are letters, digits, `.`, `-` and `_`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes() {
        assert_eq!(parse("/").unwrap(), Target::Index);
        assert_eq!(parse("/greeter").unwrap(), Target::Describe("greeter"));
        assert_eq!(
            parse("/greeter/SayHello").unwrap(),
            Target::Call {
                service: "greeter",
                grpc_service: None,
                method: "SayHello"
            }
        );
        assert_eq!(
            parse("/greeter/greeter.v1.Greeter/say-hello").unwrap(),
            Target::Call {
                service: "greeter",
                grpc_service: Some("greeter.v1.Greeter"),
                method: "say-hello"
            }
        );
        assert_eq!(parse("/rpc").unwrap(), Target::Rpc);
        assert_eq!(parse("/health").unwrap(), Target::Health);
        assert_eq!(parse("/health/ready").unwrap(), Target::Ready);
    }

    #[test]
    fn refuses_walking_paths() {
        for bad in [
            "//x", "/a//b", "/a/./b", "/a/../b", "/a/b%2Fc", "/a/b%2fc", "/a/b c", "/a/", "/a/%00",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().status,
                http::StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(
            parse(&format!("/{}", "a".repeat(3000))).unwrap_err().status,
            http::StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            parse("/a/b/c/d").unwrap_err().status,
            http::StatusCode::NOT_FOUND
        );
        // Every segment is checked before the route: a bad fifth segment is named.
        let past_three = parse("/a/b/c/d/e%2Ff").unwrap_err();
        assert_eq!(past_three.status, http::StatusCode::BAD_REQUEST);
        assert!(past_three.message.contains("an encoded slash"));
        assert!(
            parse("/gré/x")
                .unwrap_err()
                .message
                .contains("the character `é`")
        );
    }
}
