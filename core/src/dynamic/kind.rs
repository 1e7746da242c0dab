//! What the one-pass transcoders (`transcode.rs`: JSON → wire, `reply.rs`: wire → JSON) share
//! about reading descriptors: a field's kind, and the messages a plan reaches, numbered in the
//! order they are met. One reading, so the two cannot disagree on what a field is.

use std::collections::HashMap;

use prost::encoding::WireType;
use prost_reflect::{EnumDescriptor, Kind, MessageDescriptor};

/// A field's kind: a scalar, an enum (referred to as the transcoder keeps enums: `E`), or a
/// message (its index among the plan's [`Messages`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum K<E> {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum(E),
    Message(usize),
}

impl<E> K<E> {
    /// How a value of this kind is written on the wire (packed lists aside).
    pub(super) fn wire_type(&self) -> WireType {
        match self {
            K::Double | K::Fixed64 | K::Sfixed64 => WireType::SixtyFourBit,
            K::Float | K::Fixed32 | K::Sfixed32 => WireType::ThirtyTwoBit,
            K::String | K::Bytes | K::Message(_) => WireType::LengthDelimited,
            _ => WireType::Varint,
        }
    }

    /// Whether a map's keys may be of this kind (integers, booleans and strings).
    pub(super) fn is_map_key(&self) -> bool {
        !matches!(
            self,
            K::Message(_) | K::Enum(_) | K::Double | K::Float | K::Bytes
        )
    }
}

/// The messages a plan covers: the root (index 0) and every message its fields reach, each
/// numbered once, in the order they are met (breadth first).
pub(super) struct Messages {
    index: HashMap<String, usize>,
    queue: Vec<MessageDescriptor>,
}

impl Messages {
    /// `root` alone, to be planned first.
    pub(super) fn new(root: &MessageDescriptor) -> Self {
        Messages {
            index: HashMap::from([(root.full_name().to_string(), 0)]),
            queue: vec![root.clone()],
        }
    }

    /// The message numbered `i`, if there is one (planning ends when there is none).
    pub(super) fn get(&self, i: usize) -> Option<MessageDescriptor> {
        self.queue.get(i).cloned()
    }

    /// The kind of `kind`; an enum as `enumeration` says (`None` when it refuses the enum), a
    /// message by its number, numbered when first met.
    pub(super) fn kind<E>(
        &mut self,
        kind: Kind,
        enumeration: impl FnOnce(EnumDescriptor) -> Option<E>,
    ) -> Option<K<E>> {
        Some(match kind {
            Kind::Double => K::Double,
            Kind::Float => K::Float,
            Kind::Int32 => K::Int32,
            Kind::Int64 => K::Int64,
            Kind::Uint32 => K::Uint32,
            Kind::Uint64 => K::Uint64,
            Kind::Sint32 => K::Sint32,
            Kind::Sint64 => K::Sint64,
            Kind::Fixed32 => K::Fixed32,
            Kind::Fixed64 => K::Fixed64,
            Kind::Sfixed32 => K::Sfixed32,
            Kind::Sfixed64 => K::Sfixed64,
            Kind::Bool => K::Bool,
            Kind::String => K::String,
            Kind::Bytes => K::Bytes,
            Kind::Enum(e) => K::Enum(enumeration(e)?),
            Kind::Message(m) => {
                let next = self.queue.len();
                let i = *self.index.entry(m.full_name().to_string()).or_insert(next);
                if i == next {
                    self.queue.push(m);
                }
                K::Message(i)
            }
        })
    }
}

/// Types of the `google.protobuf` package: the well-known types, with JSON forms of their own
/// that the one-pass transcoders leave to prost-reflect.
pub(super) fn special(full_name: &str) -> bool {
    full_name.starts_with("google.protobuf.")
}
