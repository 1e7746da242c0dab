//! JSON straight to protobuf wire bytes, in one pass, from a per-message [`Plan`] computed once
//! from the descriptor (the way Envoy's transcoder works): no `DynamicMessage`, no path
//! tracking, no second scan for repeated keys.
//!
//! The bytes are exactly those of [`from_json`](super::from_json) followed by
//! `DynamicMessage::encode_to_vec` (fields in number order, packed repeated scalars, defaults of
//! fields without presence left out), except for the order of map entries, which prost-reflect
//! writes in `HashMap` order (not deterministic): here they come in the order of the JSON.
//!
//! Only the happy path is fast. Anything the one pass does not accept (malformed JSON, a wrong
//! type, an unknown field, a key given twice, nesting deeper than [`MAX_DEPTH`], an integer map
//! key not in its canonical form...) is handed to the existing path, which either produces the
//! error, word for word the one it always produced, or (rarely: a body the pass is too strict
//! for) the message. A body is therefore accepted exactly when `from_json` accepts it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::json::{JsonError, MAX_DEPTH, from_json};
use super::kind::{Messages, special};

/// Encodes the JSON `body` as `descriptor`'s message in wire format: the bytes
/// [`from_json`](super::from_json) and `encode_to_vec` produce, and the same errors. Builds the
/// plan each time: callers that transcode the same message again keep a [`Plan`].
pub fn json_to_wire(
    descriptor: &MessageDescriptor,
    body: &[u8],
    allow_unknown_fields: bool,
) -> Result<Vec<u8>, JsonError> {
    Plan::new(descriptor).encode(body, allow_unknown_fields)
}

/// How to write one message type (and every message it reaches) from JSON to wire format.
#[derive(Debug)]
pub struct Plan {
    descriptor: MessageDescriptor,
    /// `None` when the message reaches a type with a special JSON form: see [`Plan::new`].
    messages: Option<Vec<MessagePlan>>,
}

#[derive(Debug)]
struct MessagePlan {
    /// JSON names first, proto names where no JSON name is the same (prost-reflect's lookup),
    /// sorted by name: a binary search costs less than hashing the key with SipHash.
    by_name: Vec<(Box<str>, usize)>,
    fields: Vec<FieldPlan>,
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    kind: K,
    shape: Shape,
    /// The index of the oneof the field belongs to (at most 64 per message).
    oneof: Option<u8>,
}

#[derive(Debug)]
enum Shape {
    Single {
        presence: bool,
    },
    Packed,
    Unpacked,
    Map {
        key: K,
        key_presence: bool,
        value: K,
        value_presence: bool,
    },
}

/// A field's kind, its enums by descriptor.
type K = super::kind::K<EnumDescriptor>;

impl Plan {
    /// The plan of `descriptor`'s message. A message that reaches a well-known type with a
    /// special JSON form (`google.protobuf.Timestamp`, `Duration`, `FieldMask`, `Struct`,
    /// `Value`, `ListValue`, the wrappers, `Any`, `Empty`, `NullValue`: any type of the
    /// `google.protobuf` package), directly or nested, or that has extensions or groups, is
    /// transcoded by the existing path ([`from_json`](super::from_json) and an encode):
    /// correctness first, and the common request has none of them.
    pub fn new(descriptor: &MessageDescriptor) -> Plan {
        Plan {
            descriptor: descriptor.clone(),
            messages: build(descriptor),
        }
    }

    /// The message this plan writes.
    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.descriptor
    }

    /// Whether bodies go through the existing path (the message reaches a special type).
    pub fn is_fallback(&self) -> bool {
        self.messages.is_none()
    }

    /// Encodes `body` (see [`json_to_wire`]).
    pub fn encode(&self, body: &[u8], allow_unknown_fields: bool) -> Result<Vec<u8>, JsonError> {
        if let Some(bytes) = self.fast(body, allow_unknown_fields) {
            return Ok(bytes);
        }
        from_json(&self.descriptor, body, allow_unknown_fields).map(|m| m.encode_to_vec())
    }

    /// The one pass; `None` for whatever it does not accept.
    fn fast(&self, body: &[u8], allow_unknown_fields: bool) -> Option<Vec<u8>> {
        let messages = self.messages.as_deref()?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Some(Vec::new());
        }
        let mut enc = Enc {
            messages,
            allow_unknown: allow_unknown_fields,
            out: Vec::with_capacity(body.len()),
            spans: Vec::new(),
        };
        let mut json = serde_json::Deserializer::from_slice(body);
        MessageSeed {
            enc: &mut enc,
            message: 0,
            depth: 1,
        }
        .deserialize(&mut json)
        .ok()?;
        json.end().ok()?;
        Some(enc.out)
    }
}

fn build(root: &MessageDescriptor) -> Option<Vec<MessagePlan>> {
    let mut messages = Messages::new(root);
    let mut plans = Vec::new();
    while let Some(message) = messages.get(plans.len()) {
        if special(message.full_name()) || message.extensions().len() > 0 {
            return None;
        }
        let mut fields = Vec::new();
        let mut by_name = HashMap::new();
        let oneofs: Vec<_> = message.oneofs().collect();
        if oneofs.len() > 64 {
            return None;
        }
        for field in message.fields() {
            let mut kind_of = |field: &FieldDescriptor| -> Option<K> {
                if field.is_group() {
                    return None;
                }
                if !field.supports_presence()
                    && !field.is_list()
                    && !field.is_map()
                    && field.default_value() != field.kind().default_value()
                {
                    return None;
                }
                messages.kind(field.kind(), |e| (!special(e.full_name())).then_some(e))
            };
            let (kind, shape) = if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    return None;
                };
                let key = entry.map_entry_key_field();
                let value = entry.map_entry_value_field();
                let shape = Shape::Map {
                    key: kind_of(&key)?,
                    key_presence: key.supports_presence(),
                    value: kind_of(&value)?,
                    value_presence: value.supports_presence(),
                };
                (K::Bool, shape)
            } else if field.is_list() {
                let kind = kind_of(&field)?;
                let shape = if field.is_packed() {
                    Shape::Packed
                } else {
                    Shape::Unpacked
                };
                (kind, shape)
            } else {
                let presence = field.supports_presence();
                (kind_of(&field)?, Shape::Single { presence })
            };
            if let Shape::Map { key, .. } = &shape
                && !key.is_map_key()
            {
                return None;
            }
            let oneof = match field.containing_oneof() {
                Some(o) => Some(u8::try_from(oneofs.iter().position(|x| *x == o)?).ok()?),
                None => None,
            };
            let i = fields.len();
            fields.push(FieldPlan {
                number: field.number(),
                kind,
                shape,
                oneof,
            });
            by_name.insert(field.json_name().into(), i);
        }
        for (i, field) in message.fields().enumerate() {
            by_name.entry(field.name().into()).or_insert(i);
        }
        let mut by_name: Vec<(Box<str>, usize)> = by_name.into_iter().collect();
        by_name.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        plans.push(MessagePlan { by_name, fields });
    }
    Some(plans)
}

/// The encoder's state: the bytes written so far and the field spans of the messages open.
struct Enc<'p> {
    messages: &'p [MessagePlan],
    allow_unknown: bool,
    out: Vec<u8>,
    /// (field number, start, end) of each field written, per open message (a stack).
    spans: Vec<(u32, usize, usize)>,
}

impl Enc<'_> {
    /// Inserts the length of the bytes from `start` before them.
    fn prefix_len(&mut self, start: usize) {
        let len = (self.out.len() - start) as u64;
        let mut varint = [0u8; 10];
        let mut slice = &mut varint[..];
        encode_varint(len, &mut slice);
        let n = 10 - slice.len();
        self.out.splice(start..start, varint[..n].iter().copied());
    }
}

/// Any error: the body goes through the existing path, which words it.
fn reject<E: serde::de::Error>() -> E {
    E::custom("")
}

struct MessageSeed<'a, 'p> {
    enc: &'a mut Enc<'p>,
    message: usize,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(reject());
        }
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let enc = self.enc;
        let plan = &enc.messages[self.message];
        let start = enc.out.len();
        let span_base = enc.spans.len();
        let mut seen_small = 0u64;
        let mut seen_big = if plan.fields.len() > 64 {
            vec![false; plan.fields.len()]
        } else {
            Vec::new()
        };
        let mut oneofs = 0u64;
        let mut unknown: HashSet<String> = HashSet::new();
        let mut sorted = true;
        let mut last = 0u32;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let found = plan
                .by_name
                .binary_search_by(|(name, _)| (**name).cmp(key.as_str()));
            let Ok(i) = found.map(|at| plan.by_name[at].1) else {
                if !enc.allow_unknown || !unknown.insert(key.0.into_owned()) {
                    return Err(reject());
                }
                map.next_value_seed(Skip {
                    depth: self.depth + 1,
                })?;
                continue;
            };
            let seen = if seen_big.is_empty() {
                let bit = 1u64 << i;
                let was = seen_small & bit != 0;
                seen_small |= bit;
                was
            } else {
                std::mem::replace(&mut seen_big[i], true)
            };
            if seen {
                return Err(reject());
            }
            let field = &plan.fields[i];
            let field_start = enc.out.len();
            let set = map.next_value_seed(FieldSeed {
                enc: &mut *enc,
                field,
                depth: self.depth + 1,
            })?;
            if set && let Some(o) = field.oneof {
                let bit = 1u64 << o;
                if oneofs & bit != 0 {
                    return Err(reject());
                }
                oneofs |= bit;
            }
            if enc.out.len() > field_start {
                if sorted && field.number < last {
                    // The first field out of order: the spans of those before it, from their
                    // bytes (in order, the common case, no span is ever recorded).
                    sorted = false;
                    spans_of(&enc.out[..field_start], start, span_base, &mut enc.spans)
                        .ok_or_else(reject)?;
                }
                last = field.number;
                if !sorted {
                    enc.spans.push((field.number, field_start, enc.out.len()));
                }
            }
        }
        if !sorted {
            let spans = &mut enc.spans[span_base..];
            spans.sort_unstable_by_key(|s| s.0);
            let mut ordered = Vec::with_capacity(enc.out.len() - start);
            for &(_, a, b) in spans.iter() {
                ordered.extend_from_slice(&enc.out[a..b]);
            }
            enc.out.truncate(start);
            enc.out.extend_from_slice(&ordered);
        }
        enc.spans.truncate(span_base);
        Ok(())
    }
}

/// Pushes onto `spans` (above `base`, the spans of enclosing messages) the spans of the fields
/// written in `out` from `start`: the records of one field are adjacent, so adjacent records of
/// one number are one span. `None` if the bytes do not parse (they are this pass's own).
fn spans_of(
    out: &[u8],
    start: usize,
    base: usize,
    spans: &mut Vec<(u32, usize, usize)>,
) -> Option<()> {
    let mut rest = out.get(start..)?;
    while !rest.is_empty() {
        let at = out.len() - rest.len();
        let (number, wire_type) = prost::encoding::decode_key(&mut rest).ok()?;
        match wire_type {
            WireType::Varint => {
                prost::encoding::decode_varint(&mut rest).ok()?;
            }
            WireType::SixtyFourBit => rest = rest.get(8..)?,
            WireType::ThirtyTwoBit => rest = rest.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
                rest = rest.get(len..)?;
            }
            _ => return None,
        }
        let end = out.len() - rest.len();
        let mine = spans.len() > base;
        match spans.last_mut() {
            Some(last) if mine && last.0 == number && last.2 == at => last.2 = end,
            _ => spans.push((number, at, end)),
        }
    }
    Some(())
}

/// A key as a string (borrowed from the body when it has no escapes).
struct Key<'de>(Cow<'de, str>);

impl Key<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
}

/// One field's value; answers whether the field was set (not `null`, not an unknown enum
/// name skipped).
struct FieldSeed<'a, 'p> {
    enc: &'a mut Enc<'p>,
    field: &'a FieldPlan,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("option")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let FieldSeed { enc, field, depth } = self;
        match &field.shape {
            Shape::Single { presence } => ValueSeed {
                enc,
                kind: &field.kind,
                number: field.number,
                presence: *presence,
                depth,
            }
            .deserialize(deserializer),
            Shape::Packed | Shape::Unpacked => {
                if depth > MAX_DEPTH {
                    return Err(reject());
                }
                deserializer.deserialize_any(ListSeed { enc, field, depth })?;
                Ok(true)
            }
            Shape::Map {
                key,
                key_presence,
                value,
                value_presence,
            } => {
                if depth > MAX_DEPTH {
                    return Err(reject());
                }
                deserializer.deserialize_any(MapSeed {
                    enc,
                    number: field.number,
                    key,
                    key_presence: *key_presence,
                    value,
                    value_presence: *value_presence,
                    depth,
                })?;
                Ok(true)
            }
        }
    }
}

/// One value of a kind, written with its tag unless it is a default without presence;
/// `number` 0 writes no tag (packed elements). Answers whether a value was given.
struct ValueSeed<'a, 'p> {
    enc: &'a mut Enc<'p>,
    kind: &'a K,
    number: u32,
    presence: bool,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let ValueSeed {
            enc,
            kind,
            number,
            presence,
            depth,
        } = self;
        let scalar = match kind {
            K::Message(m) => {
                encode_key(number, WireType::LengthDelimited, &mut enc.out);
                let body = enc.out.len();
                MessageSeed {
                    enc: &mut *enc,
                    message: *m,
                    depth,
                }
                .deserialize(deserializer)?;
                enc.prefix_len(body);
                return Ok(true);
            }
            K::String => {
                let text = deserializer.deserialize_any(StrVisitor)?;
                write_len(enc, number, presence, text.as_bytes());
                return Ok(true);
            }
            K::Bytes => {
                let bytes = deserializer.deserialize_any(BytesVisitor)?;
                write_len(enc, number, presence, &bytes);
                return Ok(true);
            }
            K::Enum(e) => match deserializer.deserialize_any(EnumVisitor(e, enc.allow_unknown))? {
                Some(n) => Scalar::I32(n),
                None => return Ok(false),
            },
            other => deserializer.deserialize_any(ScalarVisitor(other))?,
        };
        if presence || !scalar.is_default() {
            if number != 0 {
                encode_key(number, kind.wire_type(), &mut enc.out);
            }
            scalar.write(kind, &mut enc.out);
        }
        Ok(true)
    }
}

fn write_len(enc: &mut Enc<'_>, number: u32, presence: bool, bytes: &[u8]) {
    if presence || !bytes.is_empty() {
        encode_key(number, WireType::LengthDelimited, &mut enc.out);
        encode_varint(bytes.len() as u64, &mut enc.out);
        enc.out.extend_from_slice(bytes);
    }
}

#[derive(Clone, Copy)]
enum Scalar {
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
}

impl Scalar {
    fn is_default(self) -> bool {
        match self {
            Scalar::I32(v) => v == 0,
            Scalar::I64(v) => v == 0,
            Scalar::U32(v) => v == 0,
            Scalar::U64(v) => v == 0,
            Scalar::F32(v) => v == 0.0,
            Scalar::F64(v) => v == 0.0,
            Scalar::Bool(v) => !v,
        }
    }

    fn write(self, kind: &K, out: &mut Vec<u8>) {
        match (self, kind) {
            (Scalar::I32(v), K::Sint32) => encode_varint(((v << 1) ^ (v >> 31)) as u32 as u64, out),
            (Scalar::I32(v), K::Sfixed32) => out.extend_from_slice(&v.to_le_bytes()),
            (Scalar::I32(v), _) => encode_varint(v as u64, out),
            (Scalar::I64(v), K::Sint64) => encode_varint(((v << 1) ^ (v >> 63)) as u64, out),
            (Scalar::I64(v), K::Sfixed64) => out.extend_from_slice(&v.to_le_bytes()),
            (Scalar::I64(v), _) => encode_varint(v as u64, out),
            (Scalar::U32(v), K::Fixed32) => out.extend_from_slice(&v.to_le_bytes()),
            (Scalar::U32(v), _) => encode_varint(u64::from(v), out),
            (Scalar::U64(v), K::Fixed64) => out.extend_from_slice(&v.to_le_bytes()),
            (Scalar::U64(v), _) => encode_varint(v, out),
            (Scalar::F32(v), _) => out.extend_from_slice(&v.to_le_bytes()),
            (Scalar::F64(v), _) => out.extend_from_slice(&v.to_le_bytes()),
            (Scalar::Bool(v), _) => encode_varint(u64::from(v), out),
        }
    }
}

/// The scalar kinds, accepting what prost-reflect's visitors accept and converting the same way.
struct ScalarVisitor<'a>(&'a K);

impl Visitor<'_> for ScalarVisitor<'_> {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
        match self.0 {
            K::Bool => Ok(Scalar::Bool(v)),
            _ => Err(reject()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
        match self.0 {
            K::Double => Ok(Scalar::F64(v as f64)),
            K::Float => Ok(Scalar::F32(v as f32)),
            K::Int32 | K::Sint32 | K::Sfixed32 => {
                v.try_into().map(Scalar::I32).map_err(|_| reject())
            }
            K::Int64 | K::Sint64 | K::Sfixed64 => Ok(Scalar::I64(v)),
            K::Uint32 | K::Fixed32 => v.try_into().map(Scalar::U32).map_err(|_| reject()),
            K::Uint64 | K::Fixed64 => v.try_into().map(Scalar::U64).map_err(|_| reject()),
            _ => Err(reject()),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
        match self.0 {
            K::Double => Ok(Scalar::F64(v as f64)),
            K::Float => Ok(Scalar::F32(v as f32)),
            K::Int32 | K::Sint32 | K::Sfixed32 => {
                v.try_into().map(Scalar::I32).map_err(|_| reject())
            }
            K::Int64 | K::Sint64 | K::Sfixed64 => {
                v.try_into().map(Scalar::I64).map_err(|_| reject())
            }
            K::Uint32 | K::Fixed32 => v.try_into().map(Scalar::U32).map_err(|_| reject()),
            K::Uint64 | K::Fixed64 => Ok(Scalar::U64(v)),
            _ => Err(reject()),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
        let integer = |min: f64, max: f64| {
            if v.fract() != 0.0 || v < min || v > max {
                Err(reject())
            } else {
                Ok(())
            }
        };
        match self.0 {
            K::Double => Ok(Scalar::F64(v)),
            K::Float => {
                if v < (f32::MIN as f64) || v > (f32::MAX as f64) {
                    Err(reject())
                } else {
                    Ok(Scalar::F32(v as f32))
                }
            }
            K::Int32 | K::Sint32 | K::Sfixed32 => {
                integer(i32::MIN as f64, i32::MAX as f64).map(|()| Scalar::I32(v as i32))
            }
            K::Int64 | K::Sint64 | K::Sfixed64 => {
                integer(i64::MIN as f64, i64::MAX as f64).map(|()| Scalar::I64(v as i64))
            }
            K::Uint32 | K::Fixed32 => {
                integer(u32::MIN as f64, u32::MAX as f64).map(|()| Scalar::U32(v as u32))
            }
            K::Uint64 | K::Fixed64 => {
                integer(u64::MIN as f64, u64::MAX as f64).map(|()| Scalar::U64(v as u64))
            }
            _ => Err(reject()),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
        let parsed = match self.0 {
            K::Double => v
                .parse()
                .ok()
                .or(match v {
                    "Infinity" => Some(f64::INFINITY),
                    "-Infinity" => Some(f64::NEG_INFINITY),
                    "NaN" => Some(f64::NAN),
                    _ => None,
                })
                .map(Scalar::F64),
            K::Float => v
                .parse()
                .ok()
                .or(match v {
                    "Infinity" => Some(f32::INFINITY),
                    "-Infinity" => Some(f32::NEG_INFINITY),
                    "NaN" => Some(f32::NAN),
                    _ => None,
                })
                .map(Scalar::F32),
            K::Int32 | K::Sint32 | K::Sfixed32 => v.parse().ok().map(Scalar::I32),
            K::Int64 | K::Sint64 | K::Sfixed64 => v.parse().ok().map(Scalar::I64),
            K::Uint32 | K::Fixed32 => v.parse().ok().map(Scalar::U32),
            K::Uint64 | K::Fixed64 => v.parse().ok().map(Scalar::U64),
            _ => None,
        };
        parsed.ok_or_else(reject)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// prost-reflect's base64: standard alphabet, URL-safe when the text has `-` or `_`, padding
/// optional, trailing bits allowed.
struct BytesVisitor;

impl Visitor<'_> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a base64-encoded string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        use base64::{DecodeError, Engine, alphabet};
        const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent);
        const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
        const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
        let mut buf = Vec::new();
        match STANDARD.decode_vec(v, &mut buf) {
            Ok(()) => Ok(buf),
            Err(DecodeError::InvalidByte(_, b'-')) | Err(DecodeError::InvalidByte(_, b'_')) => {
                buf.clear();
                URL_SAFE.decode_vec(v, &mut buf).map_err(|_| reject())?;
                Ok(buf)
            }
            Err(_) => Err(reject()),
        }
    }
}

/// An enum by name or number; an unknown name is `None` when unknown fields are allowed.
struct EnumVisitor<'a>(&'a EnumDescriptor, bool);

impl Visitor<'_> for EnumVisitor<'_> {
    type Value = Option<i32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or integer")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<i32>, E> {
        match self.0.get_value_by_name(v) {
            Some(value) => Ok(Some(value.number())),
            None if self.1 => Ok(None),
            None => Err(reject()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<i32>, E> {
        v.try_into().map(Some).map_err(|_| reject())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<i32>, E> {
        v.try_into().map(Some).map_err(|_| reject())
    }
}

struct ListSeed<'a, 'p> {
    enc: &'a mut Enc<'p>,
    field: &'a FieldPlan,
    depth: usize,
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ListSeed { enc, field, depth } = self;
        let packed = matches!(field.shape, Shape::Packed);
        let start = enc.out.len();
        if packed {
            encode_key(field.number, WireType::LengthDelimited, &mut enc.out);
        }
        let body = enc.out.len();
        loop {
            let element = ValueSeed {
                enc: &mut *enc,
                kind: &field.kind,
                number: if packed { 0 } else { field.number },
                presence: true,
                depth: depth + 1,
            };
            if seq.next_element_seed(element)?.is_none() {
                break;
            }
        }
        if packed {
            if enc.out.len() == body {
                enc.out.truncate(start);
            } else {
                enc.prefix_len(body);
            }
        }
        Ok(())
    }
}

struct MapSeed<'a, 'p> {
    enc: &'a mut Enc<'p>,
    number: u32,
    key: &'a K,
    key_presence: bool,
    value: &'a K,
    value_presence: bool,
    depth: usize,
}

impl<'de> Visitor<'de> for MapSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let MapSeed {
            enc,
            number,
            key,
            key_presence,
            value,
            value_presence,
            depth,
        } = self;
        let mut keys: HashSet<String> = HashSet::new();
        while let Some(text) = map.next_key_seed(KeySeed)? {
            let text = text.0.into_owned();
            // Only canonical keys: `1` and `01` are one key to prost-reflect (the last wins).
            let canonical = match key {
                K::String => true,
                K::Bool => text == "true" || text == "false",
                K::Int32 | K::Sint32 | K::Sfixed32 => {
                    text.parse::<i32>().is_ok_and(|n| n.to_string() == text)
                }
                K::Int64 | K::Sint64 | K::Sfixed64 => {
                    text.parse::<i64>().is_ok_and(|n| n.to_string() == text)
                }
                K::Uint32 | K::Fixed32 => text.parse::<u32>().is_ok_and(|n| n.to_string() == text),
                K::Uint64 | K::Fixed64 => text.parse::<u64>().is_ok_and(|n| n.to_string() == text),
                _ => false,
            };
            if !canonical {
                return Err(reject());
            }
            let entry_start = enc.out.len();
            encode_key(number, WireType::LengthDelimited, &mut enc.out);
            let body = enc.out.len();
            // The key, as its kind, left out when it is the default.
            let written_key = ScalarOrText::parse(key, &text).ok_or_else(reject)?;
            written_key.write(key, key_presence, &mut enc.out);
            let given = map.next_value_seed(NotNull(ValueSeed {
                enc: &mut *enc,
                kind: value,
                number: 2,
                presence: value_presence,
                depth: depth + 1,
            }))?;
            if !keys.insert(text) {
                return Err(reject());
            }
            if given {
                enc.prefix_len(body);
            } else {
                // An unknown enum name, skipped: no entry.
                enc.out.truncate(entry_start);
            }
        }
        Ok(())
    }
}

/// A map key written as field 1 of the entry.
enum ScalarOrText<'a> {
    Scalar(Scalar),
    Text(&'a str),
}

impl<'a> ScalarOrText<'a> {
    fn parse(kind: &K, text: &'a str) -> Option<Self> {
        Some(match kind {
            K::String => ScalarOrText::Text(text),
            K::Bool => ScalarOrText::Scalar(Scalar::Bool(text == "true")),
            K::Int32 | K::Sint32 | K::Sfixed32 => {
                ScalarOrText::Scalar(Scalar::I32(text.parse().ok()?))
            }
            K::Int64 | K::Sint64 | K::Sfixed64 => {
                ScalarOrText::Scalar(Scalar::I64(text.parse().ok()?))
            }
            K::Uint32 | K::Fixed32 => ScalarOrText::Scalar(Scalar::U32(text.parse().ok()?)),
            K::Uint64 | K::Fixed64 => ScalarOrText::Scalar(Scalar::U64(text.parse().ok()?)),
            _ => return None,
        })
    }

    fn write(&self, kind: &K, presence: bool, out: &mut Vec<u8>) {
        match self {
            ScalarOrText::Text(text) => {
                if presence || !text.is_empty() {
                    encode_key(1, WireType::LengthDelimited, out);
                    encode_varint(text.len() as u64, out);
                    out.extend_from_slice(text.as_bytes());
                }
            }
            ScalarOrText::Scalar(scalar) => {
                if presence || !scalar.is_default() {
                    encode_key(1, kind.wire_type(), out);
                    scalar.write(kind, out);
                }
            }
        }
    }
}

/// A map value: `null` is refused (prost-reflect reads map values without the option layer).
struct NotNull<'a, 'p>(ValueSeed<'a, 'p>);

impl<'de> DeserializeSeed<'de> for NotNull<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        // Every kind's visitor refuses `null` (unit), so the value seed refuses it as well.
        self.0.deserialize(deserializer)
    }
}

/// An unknown field's value, skipped: nesting and repeated keys are checked as the existing
/// path checks them.
struct Skip {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(reject());
        }
        while seq
            .next_element_seed(Skip {
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(reject());
        }
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if !keys.insert(key.0.into_owned()) {
                return Err(reject());
            }
            map.next_value_seed(Skip {
                depth: self.depth + 1,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests;
