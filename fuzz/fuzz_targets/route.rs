//! The gateway's path parser (`api-gateway/src/route.rs`): how a request path becomes a route, and a call's names a method
//! (`micro_core::dynamic::find_method`, loose names, "did you mean").
//!
//! Input: the raw path (UTF-8; hyper hands the gateway a `&str`). Invariants: an accepted path
//! is at most `MAX_PATH` bytes, starts with `/`, and is exactly `/` + its names and fixed
//! segments joined by `/` (nothing skipped, decoded or invented); every name is non-empty,
//! not a dot segment, and made of letters, digits, `.`, `-` and `_`. A refused path is a 400
//! or 414 (`INVALID_ARGUMENT`) or a 404 (`NOT_FOUND`), with a message. A method lookup answers a method whose normalized name is the one
//! asked for, or an error with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_core::dynamic;
use micro_fuzz::gateway::{MAX_PATH, route};
use tonic::Code;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = match route(path) {
        Ok(parsed) => parsed,
        Err(refused) => {
            let code = match refused.status.as_u16() {
                400 | 414 => Code::InvalidArgument,
                404 => Code::NotFound,
                other => panic!("{path:?} refused with {other}"),
            };
            assert_eq!(
                refused.code, code,
                "{path:?} refused with {}",
                refused.status
            );
            assert!(
                !refused.message.is_empty(),
                "{path:?} refused without a message"
            );
            return;
        }
    };
    assert!(path.len() <= MAX_PATH, "accepted {} bytes", path.len());
    for name in &parsed.names {
        assert!(
            !name.is_empty()
                && *name != "."
                && *name != ".."
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
            "{path:?} gave the name {name:?}"
        );
    }
    let names = &parsed.names;
    let rebuilt = match parsed.kind {
        "index" => "/".to_string(),
        "health" | "metrics" | "rpc" | "mcp" => format!("/{}", parsed.kind),
        "ready" => "/health/ready".to_string(),
        "openapi" => "/openapi.json".to_string(),
        "service-openapi" => format!("/{}/openapi.json", names[0]),
        "docs" => ["/docs".to_string()]
            .into_iter()
            .chain(names.iter().map(|n| format!("/{n}")))
            .collect(),
        "describe" | "call" => names.iter().map(|n| format!("/{n}")).collect(),
        other => panic!("unknown route kind {other}"),
    };
    assert_eq!(rebuilt, path, "{parsed:?}");
    if parsed.kind == "call" {
        let (service, grpc_service, method) = match names.as_slice() {
            [service, method] => (*service, None, *method),
            [service, grpc_service, method] => (*service, Some(*grpc_service), *method),
            other => panic!("a call with {} names", other.len()),
        };
        match dynamic::find_method(service, micro_fuzz::services(), grpc_service, method) {
            Ok(found) => assert_eq!(
                dynamic::normalize(found.name()),
                dynamic::normalize(method),
                "{path:?}"
            ),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
