//! Path rules: `/{service}/{Service}/{Method}`, `/{service}/{Method}`, `/{service}`, `/rpc`.
//! Names match case-insensitively with `-` and `_` ignored (`/greeter/greeter/say-hello`).

use prost_reflect::{MethodDescriptor, ServiceDescriptor};

use crate::error::ApiError;

/// Longest path accepted; longer is 414.
pub(crate) const MAX_PATH: usize = 2048;

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// `/`: the list of services.
    Index,
    /// `/health`.
    Health,
    /// `/metrics`.
    Metrics,
    /// `/rpc`: service and endpoint in the body.
    Rpc,
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
    let segments: Vec<&str> = rest.split('/').collect();
    for segment in &segments {
        if segment.is_empty() {
            return Err(ApiError::bad_request(format!(
                "the path `{path}` has an empty segment"
            )));
        }
        if *segment == "." || *segment == ".." {
            return Err(ApiError::bad_request(format!(
                "the path `{path}` has a dot segment"
            )));
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            let what = if segment.to_ascii_lowercase().contains("%2f")
                || segment.to_ascii_lowercase().contains("%5c")
            {
                "an encoded slash".to_string()
            } else {
                format!("the character `{bad}`")
            };
            return Err(ApiError::bad_request(format!(
                "the path segment `{segment}` has {what}; names are letters, digits, `.`, `-` and `_`"
            )));
        }
    }
    Ok(match segments.as_slice() {
        ["health"] => Target::Health,
        ["metrics"] => Target::Metrics,
        ["rpc"] => Target::Rpc,
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
        _ => {
            return Err(ApiError::not_found(format!(
                "no route for `{path}`: use /{{service}}/{{Service}}/{{Method}}"
            )));
        }
    })
}

/// A name without case, `-` or `_`.
pub(crate) fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Finds `method` (of `grpc_service`, when given) among the routable `services`.
pub(crate) fn find_method(
    service: &str,
    services: &[ServiceDescriptor],
    grpc_service: Option<&str>,
    method: &str,
) -> Result<MethodDescriptor, ApiError> {
    // The common case, names as declared, without normalizing (allocating) anything.
    let mut exact = services
        .iter()
        .filter(|s| grpc_service.is_none_or(|g| g == s.name() || g == s.full_name()))
        .flat_map(|s| s.methods())
        .filter(|m| m.name() == method);
    if let (Some(found), None) = (exact.next(), exact.next()) {
        return Ok(found);
    }
    let candidates: Vec<&ServiceDescriptor> = match grpc_service {
        Some(wanted) => {
            let wanted = normalize(wanted);
            let found: Vec<&ServiceDescriptor> = services
                .iter()
                .filter(|s| normalize(s.name()) == wanted || normalize(s.full_name()) == wanted)
                .collect();
            if found.is_empty() {
                let known: Vec<&str> = services.iter().map(|s| s.full_name()).collect();
                return Err(ApiError::not_found(format!(
                    "`{service}` has no gRPC service `{}`; it has: {}",
                    grpc_service.unwrap_or_default(),
                    known.join(", ")
                )));
            }
            if found.len() > 1 {
                let names: Vec<&str> = found.iter().map(|s| s.full_name()).collect();
                return Err(ApiError::bad_request(format!(
                    "`{}` is ambiguous in `{service}`; use one of: {}",
                    grpc_service.unwrap_or_default(),
                    names.join(", ")
                )));
            }
            found
        }
        None => services.iter().collect(),
    };
    let wanted = normalize(method);
    let matches: Vec<MethodDescriptor> = candidates
        .iter()
        .flat_map(|s| s.methods())
        .filter(|m| normalize(m.name()) == wanted)
        .collect();
    match matches.len() {
        1 => Ok(matches.into_iter().next().expect("one match")),
        0 => {
            let known: Vec<String> = candidates
                .iter()
                .flat_map(|s| {
                    s.methods()
                        .map(move |m| format!("{}/{}", s.name(), m.name()))
                })
                .collect();
            Err(ApiError::not_found(format!(
                "`{service}` has no method `{method}`; it has: {}",
                known.join(", ")
            )))
        }
        _ => {
            let names: Vec<String> = matches
                .iter()
                .map(|m| format!("{}/{}", m.parent_service().full_name(), m.name()))
                .collect();
            Err(ApiError::bad_request(format!(
                "`{method}` is ambiguous in `{service}`; use /{service}/{{Service}}/{{Method}} with one of: {}",
                names.join(", ")
            )))
        }
    }
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
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("Say_Hello"), normalize("say-hello"));
        assert_eq!(normalize("greeter.v1.Greeter"), "greeter.v1.greeter");
    }
}
