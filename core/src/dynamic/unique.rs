//! One meaning per body: a JSON object that names a key twice, or a field by both its JSON and
//! its proto name (`displayName` and `display_name`), is refused. Parsers differ on which copy
//! wins (serde keeps the last), so such a body could mean one thing to an auth check or a proxy
//! and another to the service; protojson and grpc-gateway refuse it too.

use std::collections::{HashMap, HashSet};
use std::fmt;

use prost_reflect::{Kind, MessageDescriptor};
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

/// Checks `body` (valid JSON) for repeated keys, fields resolved through `descriptor` when
/// given; the error names the key by its path (`user.name`).
pub(super) fn check(descriptor: Option<&MessageDescriptor>, body: &[u8]) -> Result<(), String> {
    let mut json = serde_json::Deserializer::from_slice(body);
    Keys {
        message: descriptor,
        path: "",
    }
    .deserialize(&mut json)
    .map_err(|e| {
        // serde_json appends the position; the path already says where.
        let text = e.to_string();
        match text.rfind(" at line ") {
            Some(cut) => text[..cut].to_string(),
            None => text,
        }
    })
}

/// Visits one JSON value; `message` is the protobuf message an object here stands for (none in
/// maps, well-known types and unknown fields, where only exact repeats are checked).
struct Keys<'a> {
    message: Option<&'a MessageDescriptor>,
    path: &'a str,
}

impl Keys<'_> {
    fn join(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// Well-known types whose JSON is not an object of their fields (`Struct` is a map, `Any`
/// carries another message's fields).
const SPECIAL_JSON: [&str; 6] = [
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
];

/// The message a field's JSON object stands for, where names map to fields.
fn object_message(kind: Kind, is_map: bool) -> Option<MessageDescriptor> {
    match kind {
        Kind::Message(message) if !is_map && !SPECIAL_JSON.contains(&message.full_name()) => {
            Some(message)
        }
        _ => None,
    }
}

impl<'de> DeserializeSeed<'de> for Keys<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keys<'_> {
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

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            let path = format!("{}[{index}]", self.path);
            let item = Keys {
                message: self.message,
                path: &path,
            };
            if items.next_element_seed(item)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let mut keys: HashSet<String> = HashSet::new();
        let mut fields: HashMap<u32, String> = HashMap::new();
        while let Some(key) = entries.next_key::<String>()? {
            let path = self.join(&key);
            let field = self.message.and_then(|m| {
                m.get_field_by_json_name(&key)
                    .or_else(|| m.get_field_by_name(&key))
            });
            if let Some(field) = &field
                && let Some(first) = fields.insert(field.number(), key.clone())
                && first != key
            {
                return Err(A::Error::custom(format!(
                    "field `{path}` is given twice, as `{first}` and as `{key}`"
                )));
            }
            if !keys.insert(key) {
                return Err(A::Error::custom(format!("key `{path}` is given twice")));
            }
            let inner = field.and_then(|f| object_message(f.kind(), f.is_map()));
            entries.next_value_seed(Keys {
                message: inner.as_ref(),
                path: &path,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use prost_reflect::{DescriptorPool, MessageDescriptor};

    fn message(name: &str) -> MessageDescriptor {
        DescriptorPool::global()
            .get_message_by_name(name)
            .expect("descriptor.proto is in the global pool")
    }

    #[test]
    fn a_key_or_a_field_given_twice_is_refused_by_its_path() {
        let field = message("google.protobuf.FieldDescriptorProto");
        assert_eq!(
            check(Some(&field), br#"{"name":"a","name":"b"}"#).unwrap_err(),
            "key `name` is given twice"
        );
        assert_eq!(
            check(Some(&field), br#"{"typeName":"a","type_name":"b"}"#).unwrap_err(),
            "field `type_name` is given twice, as `typeName` and as `type_name`"
        );
        let file = message("google.protobuf.FileDescriptorProto");
        let nested = br#"{"messageType":[{"name":"A"},{"name":"B","field":[{"jsonName":"y","json_name":"z"}]}]}"#;
        assert_eq!(
            check(Some(&file), nested).unwrap_err(),
            "field `messageType[1].field[0].json_name` is given twice, as `jsonName` and as `json_name`"
        );
        // In a map, in a well-known type, in an unknown key's value: exact repeats still count.
        let options = message("google.protobuf.FileOptions");
        assert!(check(Some(&options), br#"{"x":{"k":1,"k":2}}"#).is_err());
    }

    #[test]
    fn distinct_keys_and_repeats_in_sibling_objects_pass() {
        let file = message("google.protobuf.FileDescriptorProto");
        let body = br#"{"name":"f","messageType":[{"name":"A"},{"name":"B"}],"options":{"javaPackage":"p"}}"#;
        assert_eq!(check(Some(&file), body), Ok(()));
    }
}
