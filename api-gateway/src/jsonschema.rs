//! JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) of protobuf messages exactly as the
//! gateway transcodes them (`micro_core::dynamic::{from_json, to_json}`, the proto3 JSON
//! mapping). A message has two schemas, one per [`Direction`]: a request schema describes what
//! the gateway accepts, a response schema what it sends. Where the gateway accepts more than one
//! spelling, the request schema describes the canonical one only (a subset: a body valid
//! against it is always accepted) and says what else is accepted in its `description`, so a
//! fuzzer that draws bodies from the schema never draws one the gateway refuses.
//!
//! The rules:
//!
//! - **Messages** are objects whose properties are the fields' JSON names (lowerCamelCase).
//!   The proto names are accepted on input too but not listed; `additionalProperties: false`,
//!   as unknown fields are refused (unless the gateway runs with `--allow-unknown-fields`).
//!   Responses list every field without presence in `required`: the gateway emits default
//!   values. Fields with presence (messages, `oneof` members, proto3 `optional`) appear only
//!   when set. Each message is a definition reached by `$ref`, so recursion is finite.
//! - **32-bit integers**: `integer` with their range (decimal strings accepted too).
//! - **64-bit integers**: strings in responses (`^-?[0-9]+$`); requests take a string of at
//!   most 18 digits (19 unsigned) or an integer in range.
//! - **float, double**: `number` (floats within ±3.4028234e38 on input), or one of the strings
//!   `"NaN"`, `"Infinity"`, `"-Infinity"`.
//! - **bool, string**: `boolean`, `string`. **bytes**: base64 (`contentEncoding: base64`,
//!   padded standard alphabet; URL-safe and unpadded input is accepted too).
//! - **Enums**: their value names. A response may carry a number the descriptor does not name
//!   (proto3 enums are open); requests accept numbers too.
//! - **repeated**: arrays. **map**: objects with `additionalProperties`; integer and bool keys
//!   are strings constrained by `propertyNames`.
//! - **oneof**: its members are ordinary optional properties, and `not: {anyOf: [{required:
//!   [a, b]}, ...]}` forbids any two of them together.
//! - **Well-known types**, inline: `Timestamp` an RFC 3339 `date-time` string (UTC `Z` out);
//!   `Duration` a string of seconds with up to 9 decimals and an `s`; `Struct` an object;
//!   `Value` any JSON value; `ListValue` an array; the wrappers the wrapped type (`null` accepted
//!   on input, meaning unset); `Any` an object with `@type`; `FieldMask` a string of
//!   comma-separated lowerCamelCase paths; `Empty` an object with no properties; `NullValue`
//!   `null`.
//! - **Comments**: a leading proto comment becomes the `description` of its message, field,
//!   enum (with its values'), when the reflected descriptors carry source info.

use std::collections::BTreeMap;

use micro_core::dynamic::{field_comment, leading_comment, message_comment};
use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

/// Which way a message travels: the gateway accepts more spellings than it sends, and sends
/// fields that a client may leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// A request body: what the gateway accepts.
    Request,
    /// A response body: what the gateway sends.
    Response,
}

/// Where OpenAPI keeps definitions.
pub(crate) const OPENAPI_PREFIX: &str = "#/components/schemas/";
/// Where a standalone JSON Schema keeps them.
pub(crate) const DEFS_PREFIX: &str = "#/$defs/";

/// The dialect of [`standalone`] schemas.
const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Decimal strings of 64-bit integers, as the gateway sends them.
const INT64_OUT: &str = "^-?[0-9]+$";
const UINT64_OUT: &str = "^[0-9]+$";
/// Decimal strings always within range, for requests (18 and 19 digits always fit).
const INT64_IN: &str = "^-?[0-9]{1,18}$";
const UINT64_IN: &str = "^[0-9]{1,19}$";
/// Map keys of 32-bit integers within range, for requests.
const INT32_KEY_IN: &str = "^-?[0-9]{1,9}$";
const UINT32_KEY_IN: &str = "^[0-9]{1,9}$";
const BOOL_KEY: &str = "^(true|false)$";
/// Padded standard base64.
const BASE64: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";
/// A duration the gateway sends: seconds, up to 9 decimals, `s`.
const DURATION_OUT: &str = "^-?[0-9]+(?:\\.[0-9]{1,9})?s$";
/// A duration always within range (±315576000000 s): at most 11 digits of seconds.
const DURATION_IN: &str = "^-?[0-9]{1,11}(?:\\.[0-9]{1,9})?s$";
/// A field mask the gateway accepts: paths without `_` (lowerCamelCase), comma-separated.
const FIELD_MASK_IN: &str = "^[^_]*$";
/// The largest float accepted on input, a little under `f32::MAX` so that a JSON parser's
/// rounding never takes it past.
const FLOAT_MAX_IN: f64 = 3.402_823_4e38;

/// The definitions of the messages a document uses, each named after its message (`.out` added
/// for the response schema), referenced under one prefix.
#[derive(Debug)]
pub(crate) struct SchemaSet {
    prefix: String,
    definitions: BTreeMap<String, Value>,
}

impl SchemaSet {
    /// An empty set whose references start with `prefix` ([`OPENAPI_PREFIX`], [`DEFS_PREFIX`]).
    pub(crate) fn new(prefix: &str) -> Self {
        SchemaSet {
            prefix: prefix.to_string(),
            definitions: BTreeMap::new(),
        }
    }

    /// A `$ref` to the schema of `message` going `direction`, registering its definition and
    /// those of the messages it reaches.
    pub(crate) fn message(&mut self, message: &MessageDescriptor, direction: Direction) -> Value {
        let name = definition_name(message.full_name(), message.parent_pool(), direction);
        if !self.definitions.contains_key(&name) {
            // A placeholder first, so a message that reaches itself stops here.
            self.definitions.insert(name.clone(), Value::Null);
            let schema = self.build(message, direction);
            self.definitions.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("{}{name}", self.prefix) })
    }

    /// The definitions registered so far, by name.
    pub(crate) fn into_definitions(self) -> Map<String, Value> {
        self.definitions.into_iter().collect()
    }

    /// The schema of a message, inline (well-known types) or built from its fields.
    fn build(&mut self, message: &MessageDescriptor, direction: Direction) -> Value {
        if let Some(schema) = well_known(message, direction) {
            return schema;
        }
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let mut schema = self.field(&field, direction);
            let mut notes = Vec::new();
            if let Some(comment) = field_comment(&field) {
                notes.push(comment);
            }
            if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
                let members: Vec<String> = oneof
                    .fields()
                    .map(|f| format!("`{}`", f.json_name()))
                    .collect();
                notes.push(format!(
                    "A member of oneof `{}`: at most one of {} is set.",
                    oneof.name(),
                    members.join(", ")
                ));
            }
            if !notes.is_empty() {
                describe(&mut schema, notes.join("\n\n"));
            }
            if direction == Direction::Response && !field.supports_presence() {
                required.push(Value::from(field.json_name()));
            }
            properties.insert(field.json_name().to_string(), schema);
        }
        let mut schema = Map::new();
        schema.insert("type".into(), "object".into());
        if let Some(comment) = message_comment(message) {
            schema.insert("description".into(), comment.into());
        }
        schema.insert("properties".into(), properties.into());
        if !required.is_empty() {
            schema.insert("required".into(), required.into());
        }
        if message.extension_ranges().len() == 0 {
            schema.insert("additionalProperties".into(), false.into());
        }
        let exclusions: Vec<Value> = message
            .oneofs()
            .filter(|o| !o.is_synthetic())
            .flat_map(|oneof| {
                let names: Vec<String> = oneof.fields().map(|f| f.json_name().into()).collect();
                let mut pairs = Vec::new();
                for (i, first) in names.iter().enumerate() {
                    for second in &names[i + 1..] {
                        pairs.push(json!({ "required": [first, second] }));
                    }
                }
                pairs
            })
            .collect();
        if !exclusions.is_empty() {
            schema.insert("not".into(), json!({ "anyOf": exclusions }));
        }
        Value::Object(schema)
    }

    /// The schema of one field: its kind, in an array or a map when it is one.
    fn field(&mut self, field: &FieldDescriptor, direction: Direction) -> Value {
        let kind = field.kind();
        if field.is_map()
            && let Kind::Message(entry) = &kind
        {
            let key = entry.map_entry_key_field().kind();
            let value = self.kind(&entry.map_entry_value_field().kind(), direction);
            let mut schema = json!({ "type": "object", "additionalProperties": value });
            if let Some(pattern) = key_pattern(&key, direction) {
                schema["propertyNames"] = json!({ "pattern": pattern });
            }
            return schema;
        }
        if field.is_list() {
            return json!({ "type": "array", "items": self.kind(&kind, direction) });
        }
        let schema = self.kind(&kind, direction);
        match &kind {
            // `null` is an unset wrapper; elsewhere (lists, maps) it is refused.
            Kind::Message(message) if direction == Direction::Request && is_wrapper(message) => {
                json!({ "anyOf": [schema, { "type": "null" }] })
            }
            _ => schema,
        }
    }

    /// The schema of one value of `kind`.
    fn kind(&mut self, kind: &Kind, direction: Direction) -> Value {
        match kind {
            Kind::Message(message) => {
                well_known(message, direction).unwrap_or_else(|| self.message(message, direction))
            }
            Kind::Enum(enumeration) => self.enumeration(enumeration, direction),
            scalar => scalar_schema(scalar, direction),
        }
    }

    /// A `$ref` to the schema of an enum (`null` inline for `NullValue`).
    fn enumeration(&mut self, enumeration: &EnumDescriptor, direction: Direction) -> Value {
        if enumeration.full_name() == "google.protobuf.NullValue" {
            return json!({ "type": "null" });
        }
        let name = definition_name(
            enumeration.full_name(),
            enumeration.parent_pool(),
            direction,
        );
        if !self.definitions.contains_key(&name) {
            self.definitions
                .insert(name.clone(), enum_schema(enumeration, direction));
        }
        json!({ "$ref": format!("{}{name}", self.prefix) })
    }
}

/// A self-contained JSON Schema of `message` going `direction`: the message's own schema at the
/// top level (`type: object` for every message but the well-known types that are not JSON
/// objects, such as `Timestamp`), with the definitions it reaches in `$defs`. The MCP endpoint's
/// tool `inputSchema`.
pub(crate) fn standalone(message: &MessageDescriptor, direction: Direction) -> Value {
    let mut set = SchemaSet::new(DEFS_PREFIX);
    let top_ref = set.message(message, direction);
    let name = definition_name(message.full_name(), message.parent_pool(), direction);
    let mut definitions = set.into_definitions();
    let top = definitions.get(&name).cloned().unwrap_or_else(|| json!({}));
    // Keep the top message in `$defs` only when something (itself included) refers to it.
    let needle = top_ref.to_string();
    let referenced = top.to_string().contains(&needle)
        || definitions
            .iter()
            .any(|(n, d)| *n != name && d.to_string().contains(&needle));
    if !referenced {
        definitions.remove(&name);
    }
    let mut schema = match top {
        Value::Object(map) => map,
        other => {
            let mut map = Map::new();
            map.insert("allOf".into(), json!([other]));
            map
        }
    };
    let mut out = Map::new();
    out.insert("$schema".into(), DIALECT.into());
    out.append(&mut schema);
    if !definitions.is_empty() {
        out.insert("$defs".into(), definitions.into());
    }
    Value::Object(out)
}

/// The definition name of the message or enum `full_name` going `direction`: its full name,
/// with `.out` for a response (`-out` should a type of the pool really be named so).
fn definition_name(full_name: &str, pool: &DescriptorPool, direction: Direction) -> String {
    match direction {
        Direction::Request => full_name.to_string(),
        Direction::Response => {
            let name = format!("{full_name}.out");
            if pool.get_message_by_name(&name).is_some() || pool.get_enum_by_name(&name).is_some() {
                format!("{full_name}-out")
            } else {
                name
            }
        }
    }
}

/// Adds `text` to the schema's description (a `$ref` may carry one beside it in 2020-12).
fn describe(schema: &mut Value, text: String) {
    if let Value::Object(map) = schema {
        let text = match map.get("description").and_then(Value::as_str) {
            Some(existing) => format!("{text}\n\n{existing}"),
            None => text,
        };
        map.insert("description".into(), text.into());
    }
}

fn scalar_schema(kind: &Kind, direction: Direction) -> Value {
    let request = direction == Direction::Request;
    match kind {
        Kind::Double => float_schema("double", None),
        Kind::Float => float_schema("float", request.then_some(FLOAT_MAX_IN)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({
            "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX
        }),
        Kind::Uint32 | Kind::Fixed32 => json!({
            "type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 if request => json!({
            "type": ["string", "integer"], "format": "int64", "pattern": INT64_IN,
            "minimum": i64::MIN, "maximum": i64::MAX,
            "description": "A decimal string (or a JSON integer) of a signed 64-bit integer."
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "type": "string", "format": "int64", "pattern": INT64_OUT,
            "description": "A decimal string of a signed 64-bit integer."
        }),
        Kind::Uint64 | Kind::Fixed64 if request => json!({
            "type": ["string", "integer"], "format": "uint64", "pattern": UINT64_IN,
            "minimum": 0, "maximum": u64::MAX,
            "description": "A decimal string (or a JSON integer) of an unsigned 64-bit integer."
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({
            "type": "string", "format": "uint64", "pattern": UINT64_OUT,
            "description": "A decimal string of an unsigned 64-bit integer."
        }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::Bytes => json!({
            "type": "string", "contentEncoding": "base64", "pattern": BASE64,
            "description": "Base64 (standard, padded; URL-safe and unpadded accepted too)."
        }),
        // Kind::String; messages and enums never come here.
        _ => json!({ "type": "string" }),
    }
}

/// A float or double: a number, or one of the strings of the non-finite values.
fn float_schema(format: &str, bound: Option<f64>) -> Value {
    let mut number = json!({ "type": "number", "format": format });
    if let Some(bound) = bound {
        number["minimum"] = json!(-bound);
        number["maximum"] = json!(bound);
    }
    json!({ "anyOf": [number, { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] }] })
}

/// An enum's definition: its value names (a number the descriptor does not name may come in a
/// response), its comments and its values' as the description.
fn enum_schema(enumeration: &EnumDescriptor, direction: Direction) -> Value {
    let names: Vec<String> = enumeration.values().map(|v| v.name().to_string()).collect();
    let mut names = json!({ "type": "string", "enum": names });
    let file = enumeration.parent_file_descriptor_proto();
    let mut notes: Vec<String> = leading_comment(file, enumeration.path())
        .into_iter()
        .collect();
    let values: Vec<String> = enumeration
        .values()
        .filter_map(|v| leading_comment(file, v.path()).map(|c| format!("- `{}`: {c}", v.name())))
        .collect();
    if !values.is_empty() {
        notes.push(values.join("\n"));
    }
    match direction {
        Direction::Request => {
            notes.push("The value's number is accepted too.".into());
            names["description"] = notes.join("\n\n").into();
            names
        }
        Direction::Response => {
            if !notes.is_empty() {
                names["description"] = notes.join("\n\n").into();
            }
            json!({ "anyOf": [names, {
                "type": "integer", "format": "int32",
                "description": "A number the descriptor does not name."
            }] })
        }
    }
}

/// The pattern of a map's keys, when they are not any string.
fn key_pattern(key: &Kind, direction: Direction) -> Option<&'static str> {
    let request = direction == Direction::Request;
    Some(match key {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 if request => INT32_KEY_IN,
        Kind::Uint32 | Kind::Fixed32 if request => UINT32_KEY_IN,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 if request => INT64_IN,
        Kind::Uint64 | Kind::Fixed64 if request => UINT64_IN,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Int64 | Kind::Sint64 => INT64_OUT,
        Kind::Sfixed64 => INT64_OUT,
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => UINT64_OUT,
        Kind::Bool => BOOL_KEY,
        _ => return None,
    })
}

fn is_wrapper(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// The schemas of the well-known types with a JSON form of their own; `None` for others.
fn well_known(message: &MessageDescriptor, direction: Direction) -> Option<Value> {
    let request = direction == Direction::Request;
    let wrapped = |kind: Kind| {
        let mut schema = scalar_schema(&kind, direction);
        describe(
            &mut schema,
            format!("`{}`: the wrapped value.", message.full_name()),
        );
        schema
    };
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({
            "type": "string", "format": "date-time",
            "description": "`google.protobuf.Timestamp`: RFC 3339, from 0001-01-01T00:00:00Z to \
                9999-12-31T23:59:59.999999999Z (sent in UTC, `Z`, with 0, 3, 6 or 9 decimals)."
        }),
        "google.protobuf.Duration" => json!({
            "type": "string", "pattern": if request { DURATION_IN } else { DURATION_OUT },
            "description": "`google.protobuf.Duration`: seconds with up to 9 decimals and `s` \
                (`1.5s`, `-0.001s`), at most ±315576000000s."
        }),
        "google.protobuf.Struct" => json!({
            "type": "object",
            "description": "`google.protobuf.Struct`: any JSON object."
        }),
        "google.protobuf.Value" => json!({
            "description": "`google.protobuf.Value`: any JSON value."
        }),
        "google.protobuf.ListValue" => json!({
            "type": "array", "items": {},
            "description": "`google.protobuf.ListValue`: any JSON array."
        }),
        "google.protobuf.Empty" => json!({
            "type": "object", "properties": {}, "additionalProperties": false,
            "description": "`google.protobuf.Empty`: an empty object."
        }),
        "google.protobuf.FieldMask" => {
            let mut schema = json!({
                "type": "string",
                "description": "`google.protobuf.FieldMask`: comma-separated field paths in \
                    lowerCamelCase (`user.displayName,photo`)."
            });
            if request {
                schema["pattern"] = FIELD_MASK_IN.into();
            }
            schema
        }
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": {
                "type": "string",
                "description": "The type URL, `type.googleapis.com/<full message name>`."
            } },
            "required": ["@type"],
            "description": "`google.protobuf.Any`: `@type` names the message, whose fields (or, \
                for a well-known type, `value`) follow. The type must be one the service's \
                descriptors know."
        }),
        "google.protobuf.DoubleValue" => wrapped(Kind::Double),
        "google.protobuf.FloatValue" => wrapped(Kind::Float),
        "google.protobuf.Int64Value" => wrapped(Kind::Int64),
        "google.protobuf.UInt64Value" => wrapped(Kind::Uint64),
        "google.protobuf.Int32Value" => wrapped(Kind::Int32),
        "google.protobuf.UInt32Value" => wrapped(Kind::Uint32),
        "google.protobuf.BoolValue" => wrapped(Kind::Bool),
        "google.protobuf.StringValue" => wrapped(Kind::String),
        "google.protobuf.BytesValue" => wrapped(Kind::Bytes),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    const PROTO: &str = r#"
syntax = "proto3";

package t;

import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// A colour.
enum Color {
  // None given.
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
}

// A node of a tree.
message Node {
  // Its id.
  int64 id = 1;
  uint64 big = 2;
  int32 small = 3;
  uint32 count = 4;
  Color color = 5;
  repeated Node children = 6;
  map<int32, string> names_by_id = 7;
  map<string, Node> named = 8;
  map<bool, int64> flags = 9;
  oneof choice {
    string text = 10;
    int32 number = 11;
    Node picked = 12;
  }
  optional string maybe = 13;
  bytes data = 14;
  float ratio = 15;
  double weight = 16;
  string display_name = 17;
  Node parent = 18;
}

message Known {
  google.protobuf.Timestamp at = 1;
  google.protobuf.Duration took = 2;
  google.protobuf.Struct extra = 3;
  google.protobuf.Value value = 4;
  google.protobuf.ListValue list = 5;
  google.protobuf.Int64Value maybe_id = 6;
  google.protobuf.StringValue maybe_name = 7;
  google.protobuf.Any any = 8;
  google.protobuf.FieldMask mask = 9;
  google.protobuf.Empty empty = 10;
  repeated google.protobuf.Int64Value ids = 11;
  google.protobuf.NullValue nothing = 12;
}

// Has a nested message named `out`.
message Odd {
  message out {}
  out inner = 1;
}
"#;

    fn pool() -> DescriptorPool {
        let dir = std::env::temp_dir().join(format!(
            "micro-jsonschema-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.proto"), PROTO).unwrap();
        let files = protox::compile(["t.proto"], [&dir]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        DescriptorPool::from_file_descriptor_set(files).unwrap()
    }

    fn message(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).unwrap()
    }

    /// The definitions of `name` going `direction`, and the top one.
    fn definitions(name: &str, direction: Direction) -> (Map<String, Value>, Value) {
        let mut set = SchemaSet::new(OPENAPI_PREFIX);
        let reference = set.message(&message(name), direction);
        let definitions = set.into_definitions();
        let key = reference["$ref"]
            .as_str()
            .unwrap()
            .strip_prefix(OPENAPI_PREFIX)
            .unwrap()
            .to_string();
        let top = definitions[&key].clone();
        (definitions, top)
    }

    #[test]
    fn names_are_json_names_and_unknown_fields_are_refused() {
        let (_, node) = definitions("t.Node", Direction::Request);
        assert_eq!(node["type"], "object");
        assert_eq!(node["additionalProperties"], false);
        assert!(node["properties"]["displayName"].is_object());
        assert!(node["properties"].get("display_name").is_none());
        assert_eq!(node["description"], "A node of a tree.");
        let id = node["properties"]["id"]["description"].as_str().unwrap();
        assert!(id.starts_with("Its id.\n\nA decimal string"), "{id}");
        assert!(
            node.get("required").is_none(),
            "a request may leave anything out"
        );
    }

    #[test]
    fn responses_require_the_fields_without_presence() {
        let (_, node) = definitions("t.Node", Direction::Response);
        let required: Vec<&str> = node["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for always in [
            "id",
            "children",
            "namesById",
            "color",
            "displayName",
            "data",
        ] {
            assert!(required.contains(&always), "{always} in {required:?}");
        }
        for sometimes in ["text", "number", "picked", "maybe", "parent"] {
            assert!(
                !required.contains(&sometimes),
                "{sometimes} in {required:?}"
            );
        }
    }

    #[test]
    fn sixty_four_bit_integers_are_strings() {
        let (_, out) = definitions("t.Node", Direction::Response);
        assert_eq!(out["properties"]["id"]["type"], "string");
        assert_eq!(out["properties"]["id"]["pattern"], INT64_OUT);
        assert_eq!(out["properties"]["big"]["pattern"], UINT64_OUT);
        let (_, request) = definitions("t.Node", Direction::Request);
        let id = &request["properties"]["id"];
        assert_eq!(id["type"], json!(["string", "integer"]));
        assert_eq!(id["pattern"], INT64_IN);
        assert_eq!(id["maximum"], json!(i64::MAX));
        assert_eq!(request["properties"]["big"]["maximum"], json!(u64::MAX));
        assert_eq!(
            request["properties"]["small"],
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        );
        assert_eq!(request["properties"]["count"]["maximum"], json!(u32::MAX));
    }

    #[test]
    fn enums_are_names() {
        let (definitions, request) = definitions("t.Node", Direction::Request);
        assert_eq!(
            request["properties"]["color"]["$ref"],
            "#/components/schemas/t.Color"
        );
        let color = &definitions["t.Color"];
        assert_eq!(color["enum"], json!(["COLOR_UNSPECIFIED", "COLOR_RED"]));
        let description = color["description"].as_str().unwrap();
        assert!(description.contains("A colour."), "{description}");
        assert!(
            description.contains("`COLOR_UNSPECIFIED`: None given."),
            "{description}"
        );
        let (definitions, _) = super::tests::definitions("t.Node", Direction::Response);
        let any_of = &definitions["t.Color.out"]["anyOf"];
        assert_eq!(any_of[0]["enum"], json!(["COLOR_UNSPECIFIED", "COLOR_RED"]));
        assert_eq!(
            any_of[1]["type"], "integer",
            "an unnamed number comes as a number"
        );
    }

    #[test]
    fn recursion_goes_through_refs() {
        let (definitions, node) = definitions("t.Node", Direction::Request);
        assert_eq!(
            node["properties"]["parent"]["$ref"],
            "#/components/schemas/t.Node"
        );
        assert_eq!(
            node["properties"]["children"]["items"]["$ref"],
            "#/components/schemas/t.Node"
        );
        assert_eq!(
            definitions.len(),
            2,
            "t.Node, t.Color: {:?}",
            definitions.keys()
        );
        let (definitions, out) = super::tests::definitions("t.Node", Direction::Response);
        assert_eq!(
            out["properties"]["parent"]["$ref"],
            "#/components/schemas/t.Node.out"
        );
        assert!(definitions.contains_key("t.Node.out"));
        assert!(!definitions.contains_key("t.Node"));
    }

    #[test]
    fn maps_are_objects_with_typed_keys() {
        let (_, request) = definitions("t.Node", Direction::Request);
        let by_id = &request["properties"]["namesById"];
        assert_eq!(by_id["type"], "object");
        assert_eq!(by_id["additionalProperties"]["type"], "string");
        assert_eq!(by_id["propertyNames"]["pattern"], INT32_KEY_IN);
        let named = &request["properties"]["named"];
        assert_eq!(
            named["additionalProperties"]["$ref"],
            "#/components/schemas/t.Node"
        );
        assert!(
            named.get("propertyNames").is_none(),
            "string keys are any string"
        );
        assert_eq!(
            request["properties"]["flags"]["propertyNames"]["pattern"],
            BOOL_KEY
        );
        let (_, response) = definitions("t.Node", Direction::Response);
        assert_eq!(
            response["properties"]["namesById"]["propertyNames"]["pattern"],
            INT64_OUT
        );
    }

    #[test]
    fn oneof_members_exclude_each_other() {
        for direction in [Direction::Request, Direction::Response] {
            let (_, node) = definitions("t.Node", direction);
            assert_eq!(
                node["not"],
                json!({"anyOf": [
                    {"required": ["text", "number"]},
                    {"required": ["text", "picked"]},
                    {"required": ["number", "picked"]},
                ]})
            );
            let text = node["properties"]["text"]["description"].as_str().unwrap();
            assert!(text.contains("oneof `choice`"), "{text}");
            // proto3 `optional` is a synthetic oneof: no exclusion, no note.
            assert!(node["properties"]["maybe"].get("description").is_none());
        }
    }

    #[test]
    fn scalars() {
        let (_, request) = definitions("t.Node", Direction::Request);
        let data = &request["properties"]["data"];
        assert_eq!(data["contentEncoding"], "base64");
        assert_eq!(data["pattern"], BASE64);
        let ratio = &request["properties"]["ratio"]["anyOf"];
        assert_eq!(ratio[0]["format"], "float");
        assert_eq!(ratio[0]["maximum"], json!(FLOAT_MAX_IN));
        assert_eq!(ratio[1]["enum"], json!(["NaN", "Infinity", "-Infinity"]));
        let weight = &request["properties"]["weight"]["anyOf"];
        assert!(weight[0].get("maximum").is_none());
        let (_, response) = definitions("t.Node", Direction::Response);
        assert!(
            response["properties"]["ratio"]["anyOf"][0]
                .get("maximum")
                .is_none()
        );
    }

    #[test]
    fn well_known_types() {
        let (definitions, request) = definitions("t.Known", Direction::Request);
        assert_eq!(definitions.len(), 1, "well-known types are inline");
        let p = &request["properties"];
        assert_eq!(p["at"]["format"], "date-time");
        assert_eq!(p["took"]["pattern"], DURATION_IN);
        assert_eq!(p["extra"]["type"], "object");
        assert!(p["value"].get("type").is_none(), "any JSON value");
        assert_eq!(p["list"]["type"], "array");
        assert_eq!(
            p["maybeId"]["anyOf"][0]["type"],
            json!(["string", "integer"])
        );
        assert_eq!(p["maybeId"]["anyOf"][1]["type"], "null");
        assert_eq!(p["maybeName"]["anyOf"][0]["type"], "string");
        assert_eq!(p["any"]["required"], json!(["@type"]));
        assert_eq!(p["mask"]["type"], "string");
        assert_eq!(p["empty"]["additionalProperties"], false);
        assert_eq!(
            p["ids"]["items"]["type"],
            json!(["string", "integer"]),
            "no null in lists"
        );
        assert_eq!(p["nothing"]["type"], "null");
        let (_, response) = super::tests::definitions("t.Known", Direction::Response);
        let p = &response["properties"];
        assert_eq!(p["took"]["pattern"], DURATION_OUT);
        assert_eq!(
            p["maybeId"]["type"], "string",
            "a response never sends null"
        );
        assert!(p["mask"].get("pattern").is_none());
    }

    #[test]
    fn a_nested_message_named_out_does_not_collide() {
        let (definitions, _) = definitions("t.Odd", Direction::Response);
        assert!(
            definitions.contains_key("t.Odd-out"),
            "{:?}",
            definitions.keys()
        );
        assert!(
            definitions.contains_key("t.Odd.out.out"),
            "{:?}",
            definitions.keys()
        );
    }

    #[test]
    fn standalone_schemas_are_objects_with_defs() {
        let schema = standalone(&message("t.Node"), Direction::Request);
        assert_eq!(schema["$schema"], DIALECT);
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"]["parent"]["$ref"], "#/$defs/t.Node");
        assert!(
            schema["$defs"]["t.Node"].is_object(),
            "recursive: kept in $defs"
        );
        let schema = standalone(&message("t.Known"), Direction::Request);
        assert_eq!(schema["type"], "object");
        assert!(schema.get("$defs").is_none(), "{schema}");
        let timestamp = pool()
            .get_message_by_name("google.protobuf.Timestamp")
            .unwrap();
        let schema = standalone(&timestamp, Direction::Request);
        assert_eq!(schema["type"], "string");
    }

    #[test]
    fn comments_describe() {
        let node = message("t.Node");
        let file = node.parent_file_descriptor_proto().clone();
        assert_eq!(
            leading_comment(&file, node.path()).as_deref(),
            Some("A node of a tree.")
        );
        let (_, schema) = definitions("t.Node", Direction::Request);
        assert_eq!(schema["description"], "A node of a tree.");
        assert!(
            schema["properties"]["count"].get("description").is_none(),
            "no comment, no description"
        );
    }
}
