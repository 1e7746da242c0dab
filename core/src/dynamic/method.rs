//! Finding a method by the loose names people type: `SayHello`, `say-hello`, `Greeter.SayHello`,
//! `greeter.v1.Greeter/say_hello`. Names match case-insensitively with `-` and `_` ignored.

use prost_reflect::{MethodDescriptor, ServiceDescriptor};

/// A method name that matches none, or more than one, of a service's methods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// Nothing matches; the message lists what there is and the closest name.
    #[error("{0}")]
    NotFound(String),
    /// Several match; the message lists them.
    #[error("{0}")]
    Ambiguous(String),
}

/// A name without case, `-` or `_`.
pub fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The gRPC path of `method`: `/greeter.v1.Greeter/SayHello`.
pub fn path(method: &MethodDescriptor) -> http::uri::PathAndQuery {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    // Descriptor names are identifiers joined by dots, which are always valid in a path.
    http::uri::PathAndQuery::try_from(path)
        .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/"))
}

/// Finds `method` (of `grpc_service`, short or full name, when given) among the `services` of
/// the registered service `service`.
pub fn find_method(
    service: &str,
    services: &[ServiceDescriptor],
    grpc_service: Option<&str>,
    method: &str,
) -> Result<MethodDescriptor, MethodError> {
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
        Some(wanted_name) => {
            let wanted = normalize(wanted_name);
            let found: Vec<&ServiceDescriptor> = services
                .iter()
                .filter(|s| normalize(s.name()) == wanted || normalize(s.full_name()) == wanted)
                .collect();
            if found.is_empty() {
                let known: Vec<&str> = services.iter().map(|s| s.full_name()).collect();
                return Err(MethodError::NotFound(format!(
                    "`{service}` has no gRPC service `{wanted_name}`; it has: {}",
                    known.join(", ")
                )));
            }
            if found.len() > 1 {
                let names: Vec<&str> = found.iter().map(|s| s.full_name()).collect();
                return Err(MethodError::Ambiguous(format!(
                    "`{wanted_name}` is ambiguous in `{service}`; use one of: {}",
                    names.join(", ")
                )));
            }
            found
        }
        None => services.iter().collect(),
    };
    let wanted = normalize(method);
    let mut matches = candidates
        .iter()
        .flat_map(|s| s.methods())
        .filter(|m| normalize(m.name()) == wanted);
    match (matches.next(), matches.next()) {
        (Some(found), None) => Ok(found),
        (None, _) => {
            let known: Vec<String> = candidates
                .iter()
                .flat_map(|s| {
                    s.methods()
                        .map(move |m| format!("{}.{}", s.name(), m.name()))
                })
                .collect();
            let closest = known
                .iter()
                .map(|k| {
                    (
                        distance(&wanted, &normalize(k.rsplit('.').next().unwrap_or(k))),
                        k,
                    )
                })
                .filter(|(d, _)| *d <= wanted.len().max(3) / 3 + 1)
                .min_by_key(|(d, _)| *d)
                .map(|(_, k)| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            Err(MethodError::NotFound(format!(
                "`{service}` has no method `{method}`{closest}; it has: {}",
                known.join(", ")
            )))
        }
        (Some(first), Some(second)) => {
            let names: Vec<String> = [first, second]
                .into_iter()
                .chain(matches)
                .map(|m| format!("{}.{}", m.parent_service().full_name(), m.name()))
                .collect();
            Err(MethodError::Ambiguous(format!(
                "`{method}` is ambiguous in `{service}`; name the gRPC service, one of: {}",
                names.join(", ")
            )))
        }
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeter() -> Vec<ServiceDescriptor> {
        let pool = prost_reflect::DescriptorPool::decode(
            prost_types::FileDescriptorSet {
                file: vec![prost_types::FileDescriptorProto {
                    name: Some("g.proto".into()),
                    package: Some("greeter.v1".into()),
                    message_type: vec![prost_types::DescriptorProto {
                        name: Some("M".into()),
                        ..Default::default()
                    }],
                    service: vec![prost_types::ServiceDescriptorProto {
                        name: Some("Greeter".into()),
                        method: ["SayHello", "SayGoodbye"]
                            .map(|name| prost_types::MethodDescriptorProto {
                                name: Some(name.into()),
                                input_type: Some(".greeter.v1.M".into()),
                                output_type: Some(".greeter.v1.M".into()),
                                ..Default::default()
                            })
                            .to_vec(),
                        ..Default::default()
                    }],
                    syntax: Some("proto3".into()),
                    ..Default::default()
                }],
            }
            .encode_to_vec()
            .as_slice(),
        )
        .expect("a valid descriptor set");
        pool.services().collect()
    }

    use prost::Message;

    #[test]
    fn finds_loose_names_and_suggests_the_closest() {
        let services = greeter();
        for (grpc, name) in [
            (None, "SayHello"),
            (Some("Greeter"), "say-hello"),
            (Some("greeter.v1.greeter"), "say_hello"),
        ] {
            assert_eq!(
                find_method("greeter", &services, grpc, name)
                    .unwrap()
                    .name(),
                "SayHello"
            );
        }
        let MethodError::NotFound(message) =
            find_method("greeter", &services, None, "SayHelo").unwrap_err()
        else {
            panic!("not found expected");
        };
        assert!(
            message.contains("did you mean `Greeter.SayHello`?"),
            "{message}"
        );
        assert!(
            message.contains("it has: Greeter.SayHello, Greeter.SayGoodbye"),
            "{message}"
        );
        let MethodError::NotFound(message) =
            find_method("greeter", &services, None, "Launch").unwrap_err()
        else {
            panic!("not found expected");
        };
        assert!(!message.contains("did you mean"), "{message}");
        assert!(find_method("greeter", &services, Some("Nope"), "SayHello").is_err());
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("Say_Hello"), normalize("say-hello"));
        assert_eq!(distance("sayhelo", "sayhello"), 1);
    }
}
