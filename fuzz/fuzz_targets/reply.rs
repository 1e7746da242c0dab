//! The one-pass wire → JSON writer the gateway answers unary calls with
//! (`micro_core::dynamic::ReplyPlan`), against prost-reflect's decode + `to_json`, with the
//! greeter's and `testing.v1`'s messages.
//!
//! Input: one selector byte (`0`..`9`: the message, see `micro_fuzz::MESSAGES`), then the
//! protobuf wire bytes of a reply. Invariants:
//! - the writer answers only what prost-reflect decodes (where it fails, the writer must leave
//!   the reply to it, so the caller gets prost-reflect's error);
//! - where it answers, its bytes are JSON equal, as a value, to what `to_json` writes of the
//!   decoded message (map entries may come in another order: prost-reflect's is a `HashMap`'s).

#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_core::dynamic::{ReplyPlan, to_json};
use prost::Message;
use prost_reflect::DynamicMessage;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, wire)) = data.split_first() else {
        return;
    };
    let descriptor = micro_fuzz::pick(selector);
    let plan = ReplyPlan::new(&descriptor);
    let written = plan.write(wire);
    let decoded = match DynamicMessage::decode(descriptor, wire) {
        Ok(decoded) => decoded,
        Err(e) => {
            assert!(
                written.is_none(),
                "the writer answered a reply prost-reflect refuses ({e}): {}",
                lossy(written.as_deref().unwrap_or_default())
            );
            return;
        }
    };
    let Some(written) = written else {
        return;
    };
    let value: Value = serde_json::from_slice(&written)
        .unwrap_or_else(|e| panic!("the writer wrote invalid JSON ({e}): {}", lossy(&written)));
    let json = to_json(&decoded).unwrap_or_else(|e| panic!("to_json of what decoded: {e}"));
    assert_eq!(
        value,
        serde_json::from_slice::<Value>(&json).expect("to_json writes JSON"),
        "the writer's JSON is not prost-reflect's"
    );
    // What was decoded encodes again (the message is whole, not a half-read one).
    let _ = decoded.encode_to_vec();
});

/// Bytes for a panic message.
fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
