//! The one pass against the existing path (`DynamicMessage::decode` + `to_json`) on random
//! messages of a schema with every kind of field, their wire bytes as prost-reflect writes them
//! and broken in every way the decoder has a rule for.

use prost::Message as _;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

use super::ReplyPlan;
use crate::dynamic::json::{from_json, to_json};
use crate::dynamic::transcode::tests::{Break, Gen, schema};

/// Whether `message` has a map with two entries or more, anywhere (prost-reflect writes their
/// entries in `HashMap` order: only the JSON values can be compared).
fn has_multi_entry_map(message: &DynamicMessage) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::Message(m) => has_multi_entry_map(m),
            Value::List(items) => items.iter().any(value),
            Value::Map(entries) => entries.len() > 1 || entries.values().any(value),
            _ => false,
        }
    }
    message.fields().any(|(_, v)| value(v))
}

#[derive(Default, Debug)]
struct Tally {
    fast: usize,
    exact_bytes: usize,
    fallback_ok: usize,
    both_failed: usize,
}

/// One reply through both paths: the one pass never answers for bytes prost-reflect refuses,
/// and what it answers is the existing JSON (as bytes; as a value when a map has two entries).
fn compare(plan: &ReplyPlan, wire: &[u8], tally: &mut Tally) {
    let old = DynamicMessage::decode(plan.descriptor().clone(), wire);
    let fast = plan.write(wire);
    match (old, fast) {
        (Err(e), Some(json)) => panic!(
            "the one pass wrote {} for bytes prost-reflect refuses ({e}): {wire:?}",
            String::from_utf8_lossy(&json)
        ),
        (Ok(message), Some(json)) => {
            let expected = to_json(&message).expect("the existing path writes it");
            if has_multi_entry_map(&message) {
                let (a, b): (serde_json::Value, serde_json::Value) = (
                    serde_json::from_slice(&expected).expect("JSON"),
                    serde_json::from_slice(&json).expect("the one pass writes JSON"),
                );
                assert_eq!(a, b, "{wire:?}");
            } else {
                assert_eq!(
                    String::from_utf8_lossy(&expected),
                    String::from_utf8_lossy(&json),
                    "{wire:?}"
                );
                tally.exact_bytes += 1;
            }
            tally.fast += 1;
        }
        (Ok(_), None) => tally.fallback_ok += 1,
        (Err(_), None) => tally.both_failed += 1,
    }
}

/// The top-level records of `wire` (key and payload), to be rearranged.
fn records(mut wire: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let before = wire;
        let (_, wire_type) = decode_key(&mut wire).expect("a key");
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut wire).expect("a varint");
            }
            WireType::SixtyFourBit => wire = &wire[8..],
            WireType::ThirtyTwoBit => wire = &wire[4..],
            WireType::LengthDelimited => {
                let len = decode_varint(&mut wire).expect("a length") as usize;
                wire = &wire[len..];
            }
            _ => panic!("prost-reflect wrote a group"),
        }
        out.push(before[..before.len() - wire.len()].to_vec());
    }
    out
}

/// A random message of `descriptor`, in wire format as prost-reflect writes it.
fn random_wire(descriptor: &MessageDescriptor, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(rng.u64(..)),
        broken: Break::None,
        placed: false,
        multi_entry_map: false,
    };
    let body = g.message(descriptor, 0);
    from_json(descriptor, body.as_bytes(), false)
        .expect("the generator writes valid bodies")
        .encode_to_vec()
}

/// `wire` broken (or merely rearranged) in one of the ways the decoder has a rule for.
fn mutate(descriptor: &MessageDescriptor, wire: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut parts = records(wire);
    match rng.u8(..9) {
        // Out of number order.
        0 => rng.shuffle(&mut parts),
        // A record given twice (the last wins, messages merge, lists grow).
        1 if !parts.is_empty() => {
            let i = rng.usize(..parts.len());
            let copy = parts[i].clone();
            parts.insert(rng.usize(..=parts.len()), copy);
        }
        // Another message after it: the two merge.
        2 => parts.extend(records(&random_wire(descriptor, rng))),
        // A field the descriptor does not have.
        3 => {
            let mut unknown = Vec::new();
            encode_key(rng.u32(1000..2000), WireType::Varint, &mut unknown);
            encode_varint(rng.u64(..), &mut unknown);
            parts.insert(rng.usize(..=parts.len()), unknown);
        }
        // Cut short.
        4 => {
            let mut bytes = parts.concat();
            bytes.truncate(rng.usize(..=bytes.len()));
            return bytes;
        }
        // A byte changed.
        5 if !wire.is_empty() => {
            let mut bytes = wire.to_vec();
            let i = rng.usize(..bytes.len());
            bytes[i] = rng.u8(..);
            return bytes;
        }
        // A record's wire type changed.
        6 if !parts.is_empty() => {
            let i = rng.usize(..parts.len());
            parts[i][0] = (parts[i][0] & !7) | [0, 1, 2, 5][rng.usize(..4)];
        }
        // A record dropped.
        7 if !parts.is_empty() => {
            parts.remove(rng.usize(..parts.len()));
        }
        _ => {}
    }
    parts.concat()
}

#[test]
fn wire_to_json_matches_decode_and_to_json() {
    let pool = schema();
    let all = ReplyPlan::new(&pool.get_message_by_name("t.All").unwrap());
    let inner = ReplyPlan::new(&pool.get_message_by_name("t.Inner").unwrap());
    let wkt = ReplyPlan::new(&pool.get_message_by_name("t.WithWkt").unwrap());
    assert!(!all.is_fallback() && !inner.is_fallback());
    assert!(wkt.is_fallback(), "a Timestamp one message down falls back");
    let mut rng = fastrand::Rng::with_seed(29);
    let (mut valid, mut mutated) = (Tally::default(), Tally::default());
    for _ in 0..1500 {
        let wire = random_wire(all.descriptor(), &mut rng);
        compare(&all, &wire, &mut valid);
        for _ in 0..3 {
            let broken = mutate(all.descriptor(), &wire, &mut rng);
            compare(&all, &broken, &mut mutated);
        }
        let wire = random_wire(inner.descriptor(), &mut rng);
        compare(&inner, &wire, &mut valid);
    }
    println!("valid: {valid:?}\nmutated: {mutated:?}");
    assert_eq!(valid.fallback_ok + valid.both_failed, 0, "{valid:?}");
    assert!(valid.exact_bytes > 1500, "{valid:?}");
    assert!(mutated.fast > 500, "{mutated:?}");
    assert!(mutated.fallback_ok > 500, "{mutated:?}");
    assert!(mutated.both_failed > 500, "{mutated:?}");
    for _ in 0..50 {
        let wire = random_wire(wkt.descriptor(), &mut rng);
        assert_eq!(wkt.write(&wire), None);
    }
}

#[test]
fn unpacked_lists_unknown_enum_numbers_and_defaults() {
    let pool = schema();
    let all = ReplyPlan::new(&pool.get_message_by_name("t.All").unwrap());
    // `r_int32` (23) unpacked, then packed, then unpacked again: one list.
    let mut wire = Vec::new();
    encode_key(23, WireType::Varint, &mut wire);
    encode_varint(1, &mut wire);
    encode_key(23, WireType::LengthDelimited, &mut wire);
    encode_varint(2, &mut wire);
    wire.extend_from_slice(&[2, 3]);
    encode_key(23, WireType::Varint, &mut wire);
    encode_varint(4, &mut wire);
    // `r_color` (36) with a number the enum does not name; `unpacked_color` (39) packed.
    encode_key(36, WireType::LengthDelimited, &mut wire);
    encode_varint(2, &mut wire);
    wire.extend_from_slice(&[1, 9]);
    encode_key(39, WireType::LengthDelimited, &mut wire);
    encode_varint(1, &mut wire);
    wire.push(2);
    let mut tally = Tally::default();
    compare(&all, &wire, &mut tally);
    compare(&all, &[], &mut tally);
    assert_eq!(tally.exact_bytes, 2, "{tally:?}");
    let json: serde_json::Value = serde_json::from_slice(&all.write(&wire).unwrap()).unwrap();
    assert_eq!(json["rInt32"], serde_json::json!([1, 2, 3, 4]));
    assert_eq!(json["rColor"], serde_json::json!(["RED", 9]));
    assert_eq!(json["unpackedColor"], serde_json::json!(["GREEN"]));
    assert_eq!(json["fInt64"], serde_json::json!("0"));
    assert_eq!(json["color"], serde_json::json!("COLOR_UNSPECIFIED"));
    assert!(
        json.get("optInt").is_none(),
        "presence: left out when absent"
    );
}
