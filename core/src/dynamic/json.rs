//! JSON ↔ protobuf with the service's own descriptors (proto3 JSON mapping): lowerCamelCase out,
//! either name in, 64-bit integers as strings, enums by name, default values emitted. The
//! gateway and the `micro` command transcode with these same functions.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

/// JSON that does not fit the message: what is wrong, naming the field or the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JsonError {
    /// For a person: ``field `user.age`: invalid type...``.
    pub message: String,
}

impl JsonError {
    fn new(message: impl Into<String>) -> Self {
        JsonError {
            message: message.into(),
        }
    }
}

/// Deepest JSON nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Decodes a JSON body into `descriptor`'s message. An empty body is the empty message.
/// Errors name the field (`user.age`) or the JSON position. A key given twice (or a field by
/// both its names) is an error: a body has one meaning.
pub fn from_json(
    descriptor: &MessageDescriptor,
    body: &[u8],
    allow_unknown_fields: bool,
) -> Result<DynamicMessage, JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(descriptor.clone()));
    }
    check_depth(body)?;
    let options = DeserializeOptions::new().deny_unknown_fields(!allow_unknown_fields);
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let message = DynamicMessage::deserialize_with_options(
        descriptor.clone(),
        serde_path_to_error::Deserializer::new(&mut json, &mut track),
        &options,
    )
    .and_then(|m| json.end().map(|()| m))
    .map_err(|e| {
        let path = track.path().to_string();
        if e.is_syntax() || e.is_eof() {
            JsonError::new(format!("malformed JSON: {e}"))
        } else if path == "." || path.is_empty() {
            // A top-level data error, such as an unknown field (`unrecognized field name 'x'`).
            JsonError::new(e.to_string())
        } else {
            JsonError::new(format!("field `{path}`: {e}"))
        }
    })?;
    super::unique::check(Some(descriptor), body).map_err(JsonError::new)?;
    Ok(message)
}

/// Refuses JSON (of no particular message) that gives a key twice in one object, naming it: for
/// envelopes such as the gateway's `POST /rpc` body, whose parts are read separately.
pub fn check_unique_keys(body: &[u8]) -> Result<(), JsonError> {
    super::unique::check(None, body).map_err(JsonError::new)
}

/// Encodes a response message as JSON, with every field (default values too); NaN and the
/// infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, in `FloatValue` and
/// `DoubleValue` too.
pub fn to_json(message: &DynamicMessage) -> Result<Vec<u8>, JsonError> {
    let options = SerializeOptions::new()
        .skip_default_fields(false)
        .stringify_64_bit_integers(true);
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, &options)
        .map_err(|e| {
            JsonError::new(format!(
                "cannot encode {} as JSON: {e}",
                prost_reflect::ReflectMessage::descriptor(message).full_name()
            ))
        })?;
    if let Some(text) = non_finite_wrapper(message) {
        out = Value::from(text).to_string().into_bytes();
    } else if has_non_finite_wrapper(message) {
        out = restore_non_finite(message, &options)?;
    }
    Ok(out)
}

/// Whether `message` holds a `FloatValue` or `DoubleValue` that is NaN or infinite, anywhere.
/// prost-reflect writes those wrappers with `serialize_f32`/`serialize_f64`, which serde_json
/// turns into `null` for non-finite values, where the proto3 JSON mapping says `"NaN"`,
/// `"Infinity"`, `"-Infinity"` (as it does for plain float and double fields).
fn has_non_finite_wrapper(message: &DynamicMessage) -> bool {
    message
        .fields()
        .any(|(_, value)| value_has_non_finite_wrapper(value))
}

fn value_has_non_finite_wrapper(value: &prost_reflect::Value) -> bool {
    match value {
        prost_reflect::Value::Message(message) => {
            non_finite_wrapper(message).is_some() || has_non_finite_wrapper(message)
        }
        prost_reflect::Value::List(items) => items.iter().any(value_has_non_finite_wrapper),
        prost_reflect::Value::Map(entries) => entries.values().any(value_has_non_finite_wrapper),
        _ => false,
    }
}

/// The JSON string of a `FloatValue` or `DoubleValue` holding NaN or an infinity.
fn non_finite_wrapper(message: &DynamicMessage) -> Option<&'static str> {
    let value = match prost_reflect::ReflectMessage::descriptor(message).full_name() {
        "google.protobuf.FloatValue" => message.get_field_by_number(1)?.as_f32().map(f64::from),
        "google.protobuf.DoubleValue" => message.get_field_by_number(1)?.as_f64(),
        _ => None,
    }?;
    if value.is_nan() {
        Some("NaN")
    } else if value == f64::INFINITY {
        Some("Infinity")
    } else if value == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// Encodes `message` through a JSON tree and puts the non-finite wrappers' strings where
/// serde_json wrote `null` (rare: only when [`has_non_finite_wrapper`]).
fn restore_non_finite(
    message: &DynamicMessage,
    options: &SerializeOptions,
) -> Result<Vec<u8>, JsonError> {
    let failed = |e: serde_json::Error| {
        JsonError::new(format!(
            "cannot encode {} as JSON: {e}",
            prost_reflect::ReflectMessage::descriptor(message).full_name()
        ))
    };
    let mut tree = message
        .serialize_with_options(serde_json::value::Serializer, options)
        .map_err(failed)?;
    restore_message(message, &mut tree);
    serde_json::to_vec(&tree).map_err(failed)
}

fn restore_message(message: &DynamicMessage, json: &mut Value) {
    let Value::Object(object) = json else {
        return;
    };
    for (field, value) in message.fields() {
        if let Some(slot) = object.get_mut(field.json_name()) {
            restore_value(value, slot);
        }
    }
}

fn restore_value(value: &prost_reflect::Value, json: &mut Value) {
    match value {
        prost_reflect::Value::Message(message) => match non_finite_wrapper(message) {
            Some(text) => *json = Value::String(text.into()),
            None => restore_message(message, json),
        },
        prost_reflect::Value::List(items) => {
            if let Value::Array(slots) = json {
                for (item, slot) in items.iter().zip(slots.iter_mut()) {
                    restore_value(item, slot);
                }
            }
        }
        prost_reflect::Value::Map(entries) => {
            if let Value::Object(slots) = json {
                for (key, item) in entries {
                    let key = match key {
                        prost_reflect::MapKey::Bool(b) => b.to_string(),
                        prost_reflect::MapKey::I32(n) => n.to_string(),
                        prost_reflect::MapKey::I64(n) => n.to_string(),
                        prost_reflect::MapKey::U32(n) => n.to_string(),
                        prost_reflect::MapKey::U64(n) => n.to_string(),
                        prost_reflect::MapKey::String(s) => s.clone(),
                    };
                    if let Some(slot) = slots.get_mut(&key) {
                        restore_value(item, slot);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Maps query parameters onto the fields of `descriptor` (`?name=Alice&tags=a&tags=b&page.size=2`),
/// typed by the field so numbers and booleans arrive as JSON numbers and booleans.
pub fn query_to_json(descriptor: &MessageDescriptor, query: &str) -> Result<Vec<u8>, JsonError> {
    let mut root = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key)?;
        let value = decode(raw_value)?;
        let segments: Vec<&str> = key.split('.').collect();
        // One JSON object per segment: a path deeper than the transcoder accepts is refused
        // before the recursive walk and the JSON tree. (Thousands of segments through a
        // recursive message, or `Struct`, built a tree whose drop overflowed the stack.)
        if segments.len() > MAX_DEPTH {
            return Err(JsonError::new(format!(
                "a query parameter nests {} fields deep, more than {MAX_DEPTH}",
                segments.len()
            )));
        }
        let field_kind = field_kind(descriptor, &segments).ok_or_else(|| {
            JsonError::new(format!(
                "query parameter `{key}`: no such field in {}",
                descriptor.full_name()
            ))
        })?;
        let (kind, repeated) = field_kind;
        let typed = match kind {
            Kind::Bool => match value.as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => {
                    return Err(JsonError::new(format!(
                        "query parameter `{key}`: `{value}` is not a boolean"
                    )));
                }
            },
            Kind::Double
            | Kind::Float
            | Kind::Int32
            | Kind::Sint32
            | Kind::Sfixed32
            | Kind::Uint32
            | Kind::Fixed32 => serde_json::from_str::<serde_json::Number>(&value)
                .map(Value::Number)
                .unwrap_or(Value::String(value)),
            _ => Value::String(value),
        };
        insert(&mut root, &segments, typed, repeated);
    }
    Ok(Value::Object(root).to_string().into_bytes())
}

fn field_kind(descriptor: &MessageDescriptor, segments: &[&str]) -> Option<(Kind, bool)> {
    let (first, rest) = segments.split_first()?;
    let field = descriptor
        .get_field_by_json_name(first)
        .or_else(|| descriptor.get_field_by_name(first))?;
    match (rest.is_empty(), field.kind()) {
        (true, kind) => Some((kind, field.is_list())),
        (false, Kind::Message(inner)) => field_kind(&inner, rest),
        _ => None,
    }
}

fn insert(object: &mut Map<String, Value>, segments: &[&str], value: Value, repeated: bool) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        if repeated {
            match object
                .entry(first.to_string())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(value),
                other => *other = Value::Array(vec![value]),
            }
        } else {
            object.insert(first.to_string(), value);
        }
        return;
    }
    let child = object
        .entry(first.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(child) = child {
        insert(child, rest, value, repeated);
    }
}

fn decode(raw: &str) -> Result<String, JsonError> {
    let plus_as_space = raw.replace('+', " ");
    let bytes = plus_as_space.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let byte = hex
                .ok_or_else(|| JsonError::new(format!("query `{raw}` has a bad percent-escape")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| JsonError::new(format!("query `{raw}` is not UTF-8")))
}

/// Refuses JSON nested deeper than [`MAX_DEPTH`] before any parsing work.
fn check_depth(body: &[u8]) -> Result<(), JsonError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JsonError::new(format!(
                        "the JSON nests deeper than {MAX_DEPTH} levels"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_outside_strings_only() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check_depth(deep.as_bytes()).is_err());
        let shallow = format!("{{\"a\": \"{}\"}}", "[".repeat(100));
        assert!(check_depth(shallow.as_bytes()).is_ok());
    }

    #[test]
    fn non_finite_wrappers_are_strings_like_plain_floats() {
        let pool = prost_reflect::DescriptorPool::global();
        let float = pool
            .get_message_by_name("google.protobuf.FloatValue")
            .unwrap();
        let double = pool
            .get_message_by_name("google.protobuf.DoubleValue")
            .unwrap();
        for (text, expected) in [
            ("\"NaN\"", "\"NaN\""),
            ("\"Infinity\"", "\"Infinity\""),
            ("\"-Infinity\"", "\"-Infinity\""),
            ("1.5", "1.5"),
        ] {
            for descriptor in [&float, &double] {
                let message = from_json(descriptor, text.as_bytes(), false).unwrap();
                assert_eq!(
                    String::from_utf8(to_json(&message).unwrap()).unwrap(),
                    expected,
                    "{}",
                    descriptor.full_name()
                );
            }
        }
        // Nested in a message, a list and a map.
        let nested = nested_wrappers();
        let message = from_json(
            &nested,
            br#"{"one":"NaN","list":[1,"Infinity"],"map":{"k":"-Infinity","j":2}}"#,
            false,
        )
        .unwrap();
        let json: Value = serde_json::from_slice(&to_json(&message).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"one":"NaN","list":[1.0,"Infinity"],"map":{"k":"-Infinity","j":2.0}})
        );
    }

    #[test]
    fn doubles_round_trip_exactly() {
        let double = prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.DoubleValue")
            .unwrap();
        for text in [
            "-3.324975646697492e82",
            "0.1",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let message = from_json(&double, text.as_bytes(), false).unwrap();
            let out = String::from_utf8(to_json(&message).unwrap()).unwrap();
            // Rust's own parser is exact: the same bits in and out.
            let (sent, got) = (text.parse::<f64>().unwrap(), out.parse::<f64>().unwrap());
            assert_eq!(sent.to_bits(), got.to_bits(), "{text} came back as {out}");
        }
    }

    /// `message M { DoubleValue one = 1; repeated DoubleValue list = 2;
    /// map<string, FloatValue> map = 3; }`, built by hand.
    fn nested_wrappers() -> MessageDescriptor {
        use prost_types::field_descriptor_proto::{Label, Type};
        use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
        let field = |name: &str, number: i32, label: Label, type_name: &str| FieldDescriptorProto {
            name: Some(name.into()),
            json_name: Some(name.into()),
            number: Some(number),
            label: Some(label as i32),
            r#type: Some(Type::Message as i32),
            type_name: Some(type_name.into()),
            ..Default::default()
        };
        let entry = DescriptorProto {
            name: Some("MapEntry".into()),
            field: vec![
                FieldDescriptorProto {
                    name: Some("key".into()),
                    json_name: Some("key".into()),
                    number: Some(1),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::String as i32),
                    ..Default::default()
                },
                field("value", 2, Label::Optional, ".google.protobuf.FloatValue"),
            ],
            options: Some(prost_types::MessageOptions {
                map_entry: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("m.proto".into()),
            package: Some("m".into()),
            dependency: vec!["google/protobuf/wrappers.proto".into()],
            message_type: vec![DescriptorProto {
                name: Some("M".into()),
                field: vec![
                    field("one", 1, Label::Optional, ".google.protobuf.DoubleValue"),
                    field("list", 2, Label::Repeated, ".google.protobuf.DoubleValue"),
                    field("map", 3, Label::Repeated, ".m.M.MapEntry"),
                ],
                nested_type: vec![entry],
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        };
        let mut pool = prost_reflect::DescriptorPool::global();
        pool.add_file_descriptor_proto(file).unwrap();
        pool.get_message_by_name("m.M").unwrap()
    }

    #[test]
    fn refuses_query_keys_nested_deeper_than_max_depth() {
        let descriptor = prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.Struct")
            .unwrap();
        // `Struct` nests itself: three segments a level.
        let key = |levels: usize| {
            format!(
                "{}fields.value.stringValue=x",
                "fields.value.structValue.".repeat(levels)
            )
        };
        assert!(query_to_json(&descriptor, &key(20)).is_ok());
        // A 50 kB query aborted the process on a 2 MiB stack (reproduced with fuzz/, target
        // `query`); the thread here has less.
        let deep = key(30_000);
        let refused = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || query_to_json(&descriptor, &deep))
            .unwrap()
            .join()
            .unwrap();
        assert!(refused.unwrap_err().message.contains("more than 64"));
    }

    #[test]
    fn decodes_query_escapes() {
        assert_eq!(decode("a%20b+c").unwrap(), "a b c");
        assert!(decode("%zz").is_err());
        assert!(decode("%ff").is_err());
    }
}
