//! Protobuf wire bytes straight to JSON, in one pass, from a per-message [`ReplyPlan`] computed
//! once from the descriptor: the reverse of [`Plan`](super::Plan), for replies. No
//! `DynamicMessage` is built: the JSON is written as the wire bytes are read.
//!
//! The JSON is byte for byte what `DynamicMessage::decode` followed by
//! [`to_json`](super::to_json) writes (fields in number order, default values of fields without
//! presence emitted, 64-bit integers as strings, enums by name), except for the order of map
//! entries, which prost-reflect writes in `HashMap` order (not deterministic): here they come in
//! wire order.
//!
//! Only the common shape is handled: proto3 messages without well-known types (any type of the
//! `google.protobuf` package), fields in number order, each singular field at most once, no
//! unknown fields, nesting up to [`MAX_NESTING`]. For anything else [`ReplyPlan::write`]
//! answers `None` and the caller takes the existing path, which produces the JSON (or the
//! decoding error) it always did.

use base64::Engine as _;
use prost_reflect::{Kind, MessageDescriptor, Syntax};
use serde::Serializer as _;
use std::collections::HashMap;

use prost::encoding::WireType;

use super::kind::{Messages, special};

/// Deepest nesting of messages written here (prost refuses past 100; deeper replies take the
/// existing path, which answers what it always did).
pub(crate) const MAX_NESTING: usize = 64;

/// How to write one reply message type (and every message it reaches) from wire format to JSON.
#[derive(Debug)]
pub struct ReplyPlan {
    descriptor: MessageDescriptor,
    /// `None` when the message is not of the shape handled here (see the module).
    tables: Option<Tables>,
}

#[derive(Debug)]
struct Tables {
    messages: Vec<MessageJson>,
    enums: Vec<EnumJson>,
}

#[derive(Debug)]
struct MessageJson {
    /// In field number order, as prost-reflect writes them.
    fields: Vec<FieldJson>,
}

#[derive(Debug)]
struct FieldJson {
    number: u32,
    /// `"jsonName":`, escaped as serde_json escapes it.
    key: Box<[u8]>,
    kind: K,
    shape: Shape,
    /// The index of the (real or synthetic) oneof the field belongs to (at most 64 per message).
    oneof: Option<u8>,
    /// The JSON of the field when it is not on the wire (fields without presence only).
    default: Box<[u8]>,
}

#[derive(Debug)]
enum Shape {
    Single { presence: bool },
    List,
    Map { key: K, value: K },
}

/// A field's kind; enums by their index in [`Tables`].
type K = super::kind::K<usize>;

/// An enum's names by number, each already a JSON string; the name prost-reflect picks for a
/// number (aliases included).
#[derive(Debug)]
struct EnumJson {
    names: Vec<(i32, Box<[u8]>)>,
    /// The number of its default (first) value.
    default: i32,
}

/// The wire type of `kind`'s values, as it is read off a field's key.
fn wire_of(kind: K) -> u8 {
    kind.wire_type() as u8
}

/// The wire type of length-delimited values (strings, bytes, messages, packed lists).
const LEN: u8 = WireType::LengthDelimited as u8;

impl ReplyPlan {
    /// The plan of `descriptor`'s message. A message of a shape not handled here (see the
    /// module) gets a plan that always answers `None`.
    pub fn new(descriptor: &MessageDescriptor) -> ReplyPlan {
        ReplyPlan {
            descriptor: descriptor.clone(),
            tables: build(descriptor),
        }
    }

    /// The message this plan writes.
    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.descriptor
    }

    /// Whether every reply takes the existing path (the message is of a shape not handled).
    pub fn is_fallback(&self) -> bool {
        self.tables.is_none()
    }

    /// The JSON of the message in `wire`, or `None` for what the one pass does not handle
    /// (then decode it with prost-reflect and write it with [`to_json`](super::to_json)).
    pub fn write(&self, wire: &[u8]) -> Option<Vec<u8>> {
        let tables = self.tables.as_ref()?;
        let mut writer = Writer {
            tables,
            out: Vec::with_capacity(wire.len() * 2 + 16),
        };
        writer.message(0, wire, 1)?;
        Some(writer.out)
    }
}

fn build(root: &MessageDescriptor) -> Option<Tables> {
    let mut reached = Messages::new(root);
    let mut enum_index: HashMap<String, usize> = HashMap::new();
    let mut enums = Vec::new();
    let mut messages = Vec::new();
    while let Some(message) = reached.get(messages.len()) {
        if special(message.full_name()) || message.parent_file().syntax() != Syntax::Proto3 {
            return None;
        }
        let oneofs: Vec<_> = message.oneofs().collect();
        if oneofs.len() > 64 {
            return None;
        }
        let mut kind_of = |kind: Kind| -> Option<K> {
            reached.kind(kind, |e| {
                if special(e.full_name()) {
                    return None;
                }
                let next = enums.len();
                let i = *enum_index.entry(e.full_name().to_string()).or_insert(next);
                if i == next {
                    let mut names: Vec<(i32, Box<[u8]>)> = Vec::new();
                    for value in e.values() {
                        let number = value.number();
                        if names.iter().any(|(n, _)| *n == number) {
                            continue;
                        }
                        // The value prost-reflect finds for the number (aliases share one).
                        let name = e.get_value(number)?;
                        names.push((number, json_string(name.name())?));
                    }
                    names.sort_unstable_by_key(|(n, _)| *n);
                    enums.push(EnumJson {
                        names,
                        default: e.default_value().number(),
                    });
                }
                Some(i)
            })
        };
        let mut fields = Vec::new();
        for field in message.fields() {
            if field.is_group() {
                return None;
            }
            let (kind, shape) = if field.is_map() {
                let Kind::Message(entry) = field.kind() else {
                    return None;
                };
                let key = kind_of(entry.map_entry_key_field().kind())?;
                let value = kind_of(entry.map_entry_value_field().kind())?;
                if !key.is_map_key() {
                    return None;
                }
                (value, Shape::Map { key, value })
            } else if field.is_list() {
                (kind_of(field.kind())?, Shape::List)
            } else {
                let presence = field.supports_presence();
                if !presence && field.default_value() != field.kind().default_value() {
                    return None;
                }
                (kind_of(field.kind())?, Shape::Single { presence })
            };
            let oneof = match field.containing_oneof() {
                Some(o) => Some(u8::try_from(oneofs.iter().position(|x| *x == o)?).ok()?),
                None => None,
            };
            let mut key = json_string(field.json_name())?.into_vec();
            key.push(b':');
            fields.push(FieldJson {
                number: field.number(),
                key: key.into(),
                kind,
                shape,
                oneof,
                default: Box::default(),
            });
        }
        messages.push(MessageJson { fields });
    }
    let mut tables = Tables { messages, enums };
    // Defaults last: a message field's default needs every message's table (only map values
    // of message type have one, and those are written from the empty message at run time).
    let mut defaults = Vec::new();
    for message in &tables.messages {
        for field in &message.fields {
            let mut writer = Writer {
                tables: &tables,
                out: Vec::new(),
            };
            match field.shape {
                Shape::List => writer.out.extend_from_slice(b"[]"),
                Shape::Map { .. } => writer.out.extend_from_slice(b"{}"),
                Shape::Single { presence: true } => {}
                Shape::Single { presence: false } => writer.default(field.kind, 1)?,
            }
            defaults.push(writer.out.into_boxed_slice());
        }
    }
    let mut defaults = defaults.into_iter();
    for message in &mut tables.messages {
        for field in &mut message.fields {
            field.default = defaults.next()?;
        }
    }
    Some(tables)
}

/// `text` as a JSON string, escaped as serde_json escapes it.
fn json_string(text: &str) -> Option<Box<[u8]>> {
    serde_json::to_vec(text).ok().map(Vec::into_boxed_slice)
}

/// The wire bytes of one message, read record by record.
struct Wire<'a> {
    buf: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        prost::encoding::decode_varint(&mut self.buf).ok()
    }

    /// The next record's field number and wire type; `Some(None)` at the end.
    fn key(&mut self) -> Option<Option<(u32, u8)>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok().filter(|n| *n >= 1)?;
        Some(Some((number, (key & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(head)
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    fn fixed32(&mut self) -> Option<[u8; 4]> {
        self.take(4)?.try_into().ok()
    }

    fn fixed64(&mut self) -> Option<[u8; 8]> {
        self.take(8)?.try_into().ok()
    }
}

/// The JSON written so far.
struct Writer<'p> {
    tables: &'p Tables,
    out: Vec<u8>,
}

impl Writer<'_> {
    /// serde_json's own writing of scalars, so that numbers come out exactly as
    /// prost-reflect's serializer has them written.
    fn json(&mut self) -> serde_json::Serializer<&mut Vec<u8>> {
        serde_json::Serializer::new(&mut self.out)
    }

    fn message(&mut self, index: usize, wire: &[u8], depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        let tables = self.tables;
        let plan = &tables.messages[index];
        let mut wire = Wire { buf: wire };
        let mut next = wire.key()?;
        let mut oneofs = 0u64;
        self.out.push(b'{');
        let mut first = true;
        for field in &plan.fields {
            let present = match next {
                // A field out of number order, or not in the descriptor.
                Some((number, _)) if number < field.number => return None,
                Some((number, _)) => number == field.number,
                None => false,
            };
            if !present && matches!(field.shape, Shape::Single { presence: true }) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            self.out.extend_from_slice(&field.key);
            if !present {
                self.out.extend_from_slice(&field.default);
                continue;
            }
            if let Some(o) = field.oneof {
                // Another member already set: prost-reflect keeps the last one only.
                let bit = 1u64 << o;
                if oneofs & bit != 0 {
                    return None;
                }
                oneofs |= bit;
            }
            next = match field.shape {
                Shape::Single { .. } => {
                    let (_, wire_type) = next?;
                    self.value(field.kind, wire_type, &mut wire, depth)?;
                    let after = wire.key()?;
                    // Given twice: the last wins (or messages merge) in prost-reflect.
                    if after.is_some_and(|(n, _)| n == field.number) {
                        return None;
                    }
                    after
                }
                Shape::List => self.list(field, next, &mut wire, depth)?,
                Shape::Map { key, value } => {
                    self.map(field.number, key, value, next, &mut wire, depth)?
                }
            };
        }
        if next.is_some() {
            // Past the last field: not in the descriptor, or out of order.
            return None;
        }
        self.out.push(b'}');
        Some(())
    }

    /// The run of records of a repeated field starting at `next`, packed or not; answers the
    /// record after it.
    fn list(
        &mut self,
        field: &FieldJson,
        mut next: Option<(u32, u8)>,
        wire: &mut Wire<'_>,
        depth: usize,
    ) -> Option<Option<(u32, u8)>> {
        let kind = field.kind;
        let packable = !matches!(wire_of(kind), LEN);
        self.out.push(b'[');
        let mut first = true;
        while let Some((number, wire_type)) = next
            && number == field.number
        {
            if packable && wire_type == LEN {
                let mut packed = Wire {
                    buf: wire.len_delimited()?,
                };
                while !packed.buf.is_empty() {
                    if !first {
                        self.out.push(b',');
                    }
                    first = false;
                    self.value(kind, wire_of(kind), &mut packed, depth)?;
                }
            } else {
                if !first {
                    self.out.push(b',');
                }
                first = false;
                self.value(kind, wire_type, wire, depth)?;
            }
            next = wire.key()?;
        }
        self.out.push(b']');
        Some(next)
    }

    /// The run of entries of a map field starting at `next`; answers the record after it.
    fn map(
        &mut self,
        number: u32,
        key: K,
        value: K,
        mut next: Option<(u32, u8)>,
        wire: &mut Wire<'_>,
        depth: usize,
    ) -> Option<Option<(u32, u8)>> {
        self.out.push(b'{');
        // Where each key's JSON is in `out`: a key given twice is one entry to prost-reflect.
        let mut keys: Vec<(usize, usize)> = Vec::new();
        while let Some((n, wire_type)) = next
            && n == number
        {
            if wire_type != LEN {
                return None;
            }
            let mut entry = Wire {
                buf: wire.len_delimited()?,
            };
            if !keys.is_empty() {
                self.out.push(b',');
            }
            let mut record = entry.key()?;
            let start = self.out.len();
            match record {
                Some((1, wire_type)) => {
                    self.map_key(key, wire_type, &mut entry)?;
                    record = entry.key()?;
                }
                _ => self.default_map_key(key),
            }
            keys.push((start, self.out.len()));
            self.out.push(b':');
            match record {
                Some((2, wire_type)) => {
                    self.value(value, wire_type, &mut entry, depth)?;
                    record = entry.key()?;
                }
                _ => self.default(value, depth)?,
            }
            if record.is_some() {
                return None;
            }
            next = wire.key()?;
        }
        if keys.len() > 1 {
            let out = &self.out;
            let mut texts: Vec<&[u8]> = keys.iter().map(|&(a, b)| &out[a..b]).collect();
            texts.sort_unstable();
            if texts.windows(2).any(|w| w[0] == w[1]) {
                return None;
            }
        }
        self.out.push(b'}');
        Some(next)
    }

    /// A map key: always a JSON string (64-bit integers are strings already).
    fn map_key(&mut self, kind: K, wire_type: u8, wire: &mut Wire<'_>) -> Option<()> {
        let quoted = matches!(
            kind,
            K::String | K::Int64 | K::Uint64 | K::Sint64 | K::Fixed64 | K::Sfixed64
        );
        if !quoted {
            self.out.push(b'"');
        }
        self.value(kind, wire_type, wire, 0)?;
        if !quoted {
            self.out.push(b'"');
        }
        Some(())
    }

    fn default_map_key(&mut self, kind: K) {
        self.out.extend_from_slice(match kind {
            K::String => b"\"\"",
            K::Bool => b"\"false\"",
            _ => b"\"0\"",
        });
    }

    /// The JSON of a field of `kind` that is not on the wire.
    fn default(&mut self, kind: K, depth: usize) -> Option<()> {
        match kind {
            K::Message(index) => self.message(index, &[], depth + 1),
            K::Enum(index) => self.enum_value(index, self.tables.enums[index].default),
            _ => self.value(kind, wire_of(kind), &mut Wire { buf: &ZEROS }, depth),
        }
    }

    /// One value of `kind`, read from `wire` (which must have the kind's wire type).
    fn value(&mut self, kind: K, wire_type: u8, wire: &mut Wire<'_>, depth: usize) -> Option<()> {
        if wire_type != wire_of(kind) {
            return None;
        }
        match kind {
            K::Bool => {
                let v = wire.varint()? != 0;
                self.out
                    .extend_from_slice(if v { b"true" } else { b"false" });
            }
            K::Int32 => self.json().serialize_i32(wire.varint()? as i32).ok()?,
            K::Uint32 => self.json().serialize_u32(wire.varint()? as u32).ok()?,
            K::Sint32 => {
                let v = wire.varint()? as u32;
                let v = ((v >> 1) as i32) ^ (-((v & 1) as i32));
                self.json().serialize_i32(v).ok()?;
            }
            K::Fixed32 => self
                .json()
                .serialize_u32(u32::from_le_bytes(wire.fixed32()?))
                .ok()?,
            K::Sfixed32 => self
                .json()
                .serialize_i32(i32::from_le_bytes(wire.fixed32()?))
                .ok()?,
            K::Int64 => self.quoted_i64(wire.varint()? as i64),
            K::Sint64 => {
                let v = wire.varint()?;
                self.quoted_i64(((v >> 1) as i64) ^ (-((v & 1) as i64)));
            }
            K::Sfixed64 => self.quoted_i64(i64::from_le_bytes(wire.fixed64()?)),
            K::Uint64 => self.quoted_u64(wire.varint()?),
            K::Fixed64 => self.quoted_u64(u64::from_le_bytes(wire.fixed64()?)),
            K::Float => {
                let v = f32::from_le_bytes(wire.fixed32()?);
                match non_finite(f64::from(v)) {
                    Some(text) => self.out.extend_from_slice(text),
                    None => self.json().serialize_f32(v).ok()?,
                }
            }
            K::Double => {
                let v = f64::from_le_bytes(wire.fixed64()?);
                match non_finite(v) {
                    Some(text) => self.out.extend_from_slice(text),
                    None => self.json().serialize_f64(v).ok()?,
                }
            }
            K::String => {
                let text = std::str::from_utf8(wire.len_delimited()?).ok()?;
                self.json().serialize_str(text).ok()?;
            }
            K::Bytes => {
                let bytes = wire.len_delimited()?;
                self.out.push(b'"');
                let mut text = String::new();
                base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut text);
                self.out.extend_from_slice(text.as_bytes());
                self.out.push(b'"');
            }
            K::Enum(index) => {
                let number = wire.varint()? as i32;
                self.enum_value(index, number)?;
            }
            K::Message(index) => {
                let body = wire.len_delimited()?;
                self.message(index, body, depth + 1)?;
            }
        }
        Some(())
    }

    fn enum_value(&mut self, index: usize, number: i32) -> Option<()> {
        let names = &self.tables.enums[index].names;
        match names.binary_search_by_key(&number, |(n, _)| *n) {
            Ok(i) => self.out.extend_from_slice(&names[i].1),
            // A number the enum does not name is written as the number.
            Err(_) => self.json().serialize_i32(number).ok()?,
        }
        Some(())
    }

    fn quoted_i64(&mut self, v: i64) {
        self.out.push(b'"');
        let _ = self.json().serialize_i64(v);
        self.out.push(b'"');
    }

    fn quoted_u64(&mut self, v: u64) {
        self.out.push(b'"');
        let _ = self.json().serialize_u64(v);
        self.out.push(b'"');
    }
}

/// Wire bytes that read as the zero value of any scalar kind: a varint 0, or zeroed fixed-width
/// bytes (an empty string or bytes: length 0).
const ZEROS: [u8; 8] = [0; 8];

/// The proto3 JSON strings of non-finite floats, as prost-reflect writes them.
fn non_finite(v: f64) -> Option<&'static [u8]> {
    if v.is_finite() {
        None
    } else if v == f64::INFINITY {
        Some(b"\"Infinity\"")
    } else if v == f64::NEG_INFINITY {
        Some(b"\"-Infinity\"")
    } else {
        Some(b"\"NaN\"")
    }
}

#[cfg(test)]
mod tests;
