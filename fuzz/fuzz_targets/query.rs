//! Query-string mapping (`micro_core::dynamic::query_to_json`: `GET /greeter/SayHello?name=x`
//! becomes a JSON body), then the transcoder on what it wrote, as the gateway does.
//!
//! Input: one selector byte (`0`..`9`: the message, see `micro_fuzz::MESSAGES`), then the query
//! (after the `?`, still percent-encoded). Invariants: a mapped query is one JSON object without
//! a repeated key, nested no deeper than the transcoder accepts (`MAX_DEPTH`, plus the array of
//! a repeated field); the transcoder answers it (a message or an error, never a panic), and
//! what decodes encodes back to JSON.
//!
//! A dotted key of thousands of segments (`left.left...`, through a recursive message or
//! `Struct`) once built a JSON tree whose drop overflowed a tokio worker's 2 MiB stack and
//! aborted the gateway; `query_to_json` now refuses keys deeper than `MAX_DEPTH`. Such a query
//! (50 kB) is longer than the inputs the fuzzer makes (4 kB), so the regression test is core's
//! `refuses_query_keys_nested_deeper_than_max_depth`; the seed `too-deep` covers the refusal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_core::dynamic::{MAX_DEPTH, check_unique_keys, from_json, query_to_json, to_json};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, query)) = data.split_first() else {
        return;
    };
    // The gateway hands it `Uri::query()`, a `&str`.
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let descriptor = micro_fuzz::pick(selector);
    let body = match query_to_json(&descriptor, query) {
        Ok(body) => body,
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            return;
        }
    };
    let text = String::from_utf8_lossy(&body);
    assert!(
        depth(&body) <= MAX_DEPTH + 1,
        "{query:?} mapped to JSON nested deeper than {MAX_DEPTH}"
    );
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(_)) => {}
        other => panic!("{query:?} mapped to {text} ({other:?}), not a JSON object"),
    }
    check_unique_keys(&body).unwrap_or_else(|e| panic!("{query:?} mapped to {text}: {e}"));
    if let Ok(message) = from_json(&descriptor, &body, false) {
        to_json(&message).unwrap_or_else(|e| panic!("to_json of what decoded: {e}"));
    }
});

/// How deep `json` (valid JSON) nests objects and arrays.
fn depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &byte in json {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
            (false, _, b'{' | b'[') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}
