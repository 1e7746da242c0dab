//! What a message looks like in JSON, from its descriptor: a template a user can paste (every
//! field by its proto3 JSON name with a zero value) and the list of fields with their types.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

/// A JSON value of a message, its fields in declaration order (a `serde_json::Map` would sort
/// them, and a person reads a template top to bottom as the proto declares it).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Template {
    /// A zero value.
    Leaf(Value),
    /// A message: its fields by JSON name.
    Object(Vec<(String, Template)>),
    /// A repeated field: one element.
    Array(Box<Template>),
}

impl Template {
    /// As a JSON value (for `-o json`, where order is the reader's business).
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Template::Leaf(value) => value.clone(),
            Template::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<_, _>>(),
            ),
            Template::Array(item) => Value::Array(vec![item.to_value()]),
        }
    }
}

impl std::fmt::Display for Template {
    /// Compact JSON, fields in declaration order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Template::Leaf(value) => write!(f, "{value}"),
            Template::Object(fields) => {
                f.write_str("{")?;
                for (i, (name, value)) in fields.iter().enumerate() {
                    let separator = if i == 0 { "" } else { "," };
                    write!(f, "{separator}{}:{value}", Value::String(name.clone()))?;
                }
                f.write_str("}")
            }
            Template::Array(item) => write!(f, "[{item}]"),
        }
    }
}

/// `message` with every field set to a zero value of its type, as the proto3 JSON mapping
/// writes it (64-bit integers as strings, enums by name, well-known types in their JSON forms).
pub(crate) fn template(message: &MessageDescriptor) -> Template {
    message_template(message, &mut Vec::new())
}

fn message_template(message: &MessageDescriptor, visiting: &mut Vec<String>) -> Template {
    if let Some(value) = well_known(message.full_name()) {
        return Template::Leaf(value);
    }
    if visiting.iter().any(|v| v == message.full_name()) {
        // A recursive message: one level is enough to show its shape.
        return Template::Object(Vec::new());
    }
    visiting.push(message.full_name().to_string());
    let fields = message
        .fields()
        .map(|field| {
            (
                field.json_name().to_string(),
                field_template(&field, visiting),
            )
        })
        .collect();
    visiting.pop();
    Template::Object(fields)
}

fn field_template(field: &FieldDescriptor, visiting: &mut Vec<String>) -> Template {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Template::Object(Vec::new());
        };
        let key = match entry.map_entry_key_field().kind() {
            Kind::String => "key".to_string(),
            Kind::Bool => "false".to_string(),
            _ => "0".to_string(),
        };
        let value = kind_template(&entry.map_entry_value_field().kind(), visiting);
        return Template::Object(vec![(key, value)]);
    }
    let single = kind_template(&field.kind(), visiting);
    if field.is_list() {
        Template::Array(Box::new(single))
    } else {
        single
    }
}

fn kind_template(kind: &Kind, visiting: &mut Vec<String>) -> Template {
    Template::Leaf(match kind {
        Kind::Double | Kind::Float => json!(0.0),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => json!(0),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => json!("0"),
        Kind::Bool => json!(false),
        Kind::String | Kind::Bytes => json!(""),
        Kind::Enum(e) => e.values().next().map_or(Value::Null, |v| json!(v.name())),
        Kind::Message(m) => return message_template(m, visiting),
    })
}

fn well_known(full_name: &str) -> Option<Value> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!("1970-01-01T00:00:00Z"),
        "google.protobuf.Duration" => json!("0s"),
        "google.protobuf.Struct" | "google.protobuf.Empty" => json!({}),
        "google.protobuf.Value" => Value::Null,
        "google.protobuf.ListValue" => json!([]),
        "google.protobuf.FieldMask"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => json!(""),
        "google.protobuf.Any" => json!({ "@type": "" }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!(0.0),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!(0),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!("0"),
        "google.protobuf.BoolValue" => json!(false),
        _ => return None,
    })
}

/// Every field of `message`, nested ones by path (`address.street`), with its type as the JSON
/// reader takes it (`string`, `int64 (JSON string)`, `repeated string`, `enum greeter.v1.Mood:
/// HAPPY | SAD`).
pub(crate) fn fields(message: &MessageDescriptor) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect(message, "", &mut Vec::new(), &mut out);
    out
}

fn collect(
    message: &MessageDescriptor,
    prefix: &str,
    visiting: &mut Vec<String>,
    out: &mut Vec<(String, String)>,
) {
    if visiting.iter().any(|v| v == message.full_name()) {
        return;
    }
    visiting.push(message.full_name().to_string());
    for field in message.fields() {
        let path = format!("{prefix}{}", field.json_name());
        let (kind, label) = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let key = type_name(&entry.map_entry_key_field().kind());
            let value = entry.map_entry_value_field().kind();
            (value.clone(), format!("map<{key}, {}>", type_name(&value)))
        } else if field.is_list() {
            (
                field.kind(),
                format!("repeated {}", type_name(&field.kind())),
            )
        } else {
            (field.kind(), type_name(&field.kind()))
        };
        let label = match field.containing_oneof() {
            Some(oneof) if !field.field_descriptor_proto().proto3_optional() => {
                format!("{label} (oneof {})", oneof.name())
            }
            _ => label,
        };
        out.push((path.clone(), label));
        if let Kind::Message(inner) = kind
            && well_known(inner.full_name()).is_none()
        {
            collect(&inner, &format!("{path}."), visiting, out);
        }
    }
    visiting.pop();
}

fn type_name(kind: &Kind) -> String {
    match kind {
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64 (JSON string)".into(),
        Kind::Uint64 | Kind::Fixed64 => "uint64 (JSON string)".into(),
        Kind::Bytes => "bytes (base64)".into(),
        Kind::Enum(e) => {
            let values: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
            format!("enum {}: {}", e.full_name(), values.join(" | "))
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => "Timestamp (RFC 3339 string)".into(),
            "google.protobuf.Duration" => "Duration (string like \"1.5s\")".into(),
            name => name.to_string(),
        },
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_follow_the_json_mapping() {
        let pool = prost_reflect::DescriptorPool::global();
        let timestamp = pool
            .get_message_by_name("google.protobuf.Timestamp")
            .unwrap();
        assert_eq!(
            template(&timestamp).to_value(),
            json!("1970-01-01T00:00:00Z")
        );
        // A descriptor with nested, repeated, map, enum, 64-bit and recursive fields.
        let file = pool
            .get_message_by_name("google.protobuf.FileDescriptorProto")
            .unwrap();
        let ordered = template(&file);
        assert!(
            ordered
                .to_string()
                .starts_with(r#"{"name":"","package":"","dependency":[""],"#),
            "{ordered}"
        );
        let value = ordered.to_value();
        assert_eq!(value["messageType"][0]["field"][0]["number"], json!(0));
        assert_eq!(
            value["messageType"][0]["field"][0]["label"],
            json!("LABEL_OPTIONAL")
        );
        assert_eq!(value["messageType"][0]["nestedType"][0], json!({}));
        let listed = fields(&file);
        assert!(
            listed.contains(&("dependency".into(), "repeated string".into())),
            "{listed:?}"
        );
        assert!(
            listed
                .iter()
                .any(|(path, ty)| path == "messageType.field.label"
                    && ty.starts_with(
                        "enum google.protobuf.FieldDescriptorProto.Label: LABEL_OPTIONAL"
                    )),
            "{listed:?}"
        );
    }
}
