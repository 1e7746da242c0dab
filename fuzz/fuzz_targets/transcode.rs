//! The JSON → protobuf transcoder (`micro_core::dynamic::from_json`, what a call's body goes
//! through) and `to_json` of what it decoded, with the greeter's and `testing.v1`'s messages.
//!
//! Input: one selector byte (`0`..`9`: the message, see `micro_fuzz::MESSAGES`), optionally
//! preceded by `+` to allow unknown fields, then the JSON body. Invariants, for a body that
//! decodes:
//! - it decodes with unknown fields allowed too (allowing them only widens what is accepted);
//! - `to_json` encodes it, as JSON without a repeated key;
//! - that JSON decodes again (unknown fields refused) and encodes to the same JSON value: the
//!   reply's JSON is a fixed point of the transcoder;
//! - the protobuf wire form of the message decodes to the same JSON;
//! - the one-pass encoder the gateway sends unary requests with (`json_to_wire`) accepts exactly
//!   what `from_json` accepts, with the same error, and writes wire bytes that decode to the
//!   same message (equal bytes but for the order of map entries).

#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_core::dynamic::{check_unique_keys, from_json, json_to_wire, to_json};
use prost::Message;
use prost_reflect::DynamicMessage;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (allow_unknown, data) = match data.split_first() {
        Some((b'+', rest)) => (true, rest),
        _ => (false, data),
    };
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let descriptor = micro_fuzz::pick(selector);
    let one_pass = json_to_wire(&descriptor, body, allow_unknown);
    let message = match from_json(&descriptor, body, allow_unknown) {
        Ok(message) => message,
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            assert_eq!(
                one_pass.err(),
                Some(e),
                "json_to_wire accepted or worded differently what from_json refused"
            );
            return;
        }
    };
    let one_pass =
        one_pass.unwrap_or_else(|e| panic!("json_to_wire refused what from_json accepted: {e}"));
    let from_one_pass = DynamicMessage::decode(descriptor.clone(), one_pass.as_slice())
        .unwrap_or_else(|e| panic!("json_to_wire wrote bytes that do not decode: {e}"));
    if !allow_unknown {
        assert!(
            from_json(&descriptor, body, true).is_ok(),
            "refused with unknown fields allowed, accepted without"
        );
    }
    let json = to_json(&message).unwrap_or_else(|e| panic!("to_json of what decoded: {e}"));
    let value: Value = serde_json::from_slice(&json)
        .unwrap_or_else(|e| panic!("to_json wrote invalid JSON ({e}): {}", lossy(&json)));
    check_unique_keys(&json)
        .unwrap_or_else(|e| panic!("to_json repeated a key ({e}): {}", lossy(&json)));

    let again = from_json(&descriptor, &json, false)
        .unwrap_or_else(|e| panic!("to_json's output does not decode ({e}): {}", lossy(&json)));
    let json_again = to_json(&again).expect("to_json of a decoded message");
    assert_eq!(
        value,
        serde_json::from_slice::<Value>(&json_again).expect("to_json writes JSON"),
        "the JSON changed on a second pass"
    );

    // Compared as JSON: NaN is not equal to itself in a message, "NaN" is in JSON.
    let json_one_pass = to_json(&from_one_pass).expect("to_json of a decoded message");
    assert_eq!(
        value,
        serde_json::from_slice::<Value>(&json_one_pass).expect("to_json writes JSON"),
        "json_to_wire's bytes are another message than from_json's"
    );

    let wire = message.encode_to_vec();
    let decoded = DynamicMessage::decode(descriptor, wire.as_slice())
        .unwrap_or_else(|e| panic!("the wire form does not decode: {e}"));
    let json_wire = to_json(&decoded).expect("to_json of a decoded message");
    assert_eq!(
        value,
        serde_json::from_slice::<Value>(&json_wire).expect("to_json writes JSON"),
        "the JSON changed through the wire form"
    );
});

/// Bytes for a panic message.
fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
