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
/// Errors name the field (`user.age`) or the JSON position.
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
    Ok(message)
}

/// Encodes a response message as JSON, with every field (default values too).
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
    Ok(out)
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
    fn decodes_query_escapes() {
        assert_eq!(decode("a%20b+c").unwrap(), "a b c");
        assert!(decode("%zz").is_err());
        assert!(decode("%ff").is_err());
    }
}
