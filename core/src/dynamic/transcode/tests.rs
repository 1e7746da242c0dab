//! The one pass against the existing path (`from_json` + `encode_to_vec`) on random bodies of a
//! schema with every kind of field, valid and broken.

use prost::Message as _;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FieldOptions, FileDescriptorProto, MessageOptions, OneofDescriptorProto,
};

use super::Plan;
use crate::dynamic::json::{MAX_DEPTH, from_json};

fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn field(name: &str, number: i32, label: Label, ty: Type, type_name: &str) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        json_name: Some(camel(name)),
        number: Some(number),
        label: Some(label as i32),
        r#type: Some(ty as i32),
        type_name: (!type_name.is_empty()).then(|| type_name.into()),
        ..Default::default()
    }
}

fn entry(name: &str, key: Type, value: Type, value_type: &str) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: vec![
            field("key", 1, Label::Optional, key, ""),
            field("value", 2, Label::Optional, value, value_type),
        ],
        options: Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const SCALARS: [(&str, Type); 15] = [
    ("double", Type::Double),
    ("float", Type::Float),
    ("int32", Type::Int32),
    ("int64", Type::Int64),
    ("uint32", Type::Uint32),
    ("uint64", Type::Uint64),
    ("sint32", Type::Sint32),
    ("sint64", Type::Sint64),
    ("fixed32", Type::Fixed32),
    ("fixed64", Type::Fixed64),
    ("sfixed32", Type::Sfixed32),
    ("sfixed64", Type::Sfixed64),
    ("bool", Type::Bool),
    ("string", Type::String),
    ("bytes", Type::Bytes),
];

/// `t.All` (every scalar, singular and repeated, packed and not, maps with string, integer and
/// bool keys and message values, nested and recursive messages, a oneof, proto3 `optional`,
/// enums, a custom json_name) and `t.WithWkt` (a `Timestamp` one message down). Built by hand:
/// core has no protox dev-dependency.
pub(crate) fn schema() -> DescriptorPool {
    use Label::{Optional, Repeated};
    let mut all = Vec::new();
    // Declared out of number order, so that order matters.
    all.push(field("late", 200, Optional, Type::Int32, ""));
    for (i, (name, ty)) in SCALARS.iter().enumerate() {
        all.push(field(&format!("f_{name}"), 1 + i as i32, Optional, *ty, ""));
        all.push(field(
            &format!("r_{name}"),
            21 + i as i32,
            Repeated,
            *ty,
            "",
        ));
    }
    all.push(field("color", 16, Optional, Type::Enum, ".t.Color"));
    all.push(field("inner", 17, Optional, Type::Message, ".t.Inner"));
    all.push(field("r_color", 36, Repeated, Type::Enum, ".t.Color"));
    all.push(field("r_inner", 37, Repeated, Type::Message, ".t.Inner"));
    let mut unpacked = field("unpacked", 38, Repeated, Type::Sint64, "");
    unpacked.options = Some(FieldOptions {
        packed: Some(false),
        ..Default::default()
    });
    all.push(unpacked);
    let mut unpacked_enum = field("unpacked_color", 39, Repeated, Type::Enum, ".t.Color");
    unpacked_enum.options = Some(FieldOptions {
        packed: Some(false),
        ..Default::default()
    });
    all.push(unpacked_enum);
    all.push(field(
        "m_str",
        40,
        Repeated,
        Type::Message,
        ".t.All.MStrEntry",
    ));
    all.push(field(
        "m_int",
        41,
        Repeated,
        Type::Message,
        ".t.All.MIntEntry",
    ));
    all.push(field(
        "m_bool",
        42,
        Repeated,
        Type::Message,
        ".t.All.MBoolEntry",
    ));
    all.push(field(
        "m_u64",
        43,
        Repeated,
        Type::Message,
        ".t.All.MU64Entry",
    ));
    all.push(field(
        "m_s64",
        44,
        Repeated,
        Type::Message,
        ".t.All.MS64Entry",
    ));
    for (name, number, ty, type_name) in [
        ("o_int", 50, Type::Int32, ""),
        ("o_str", 51, Type::String, ""),
        ("o_msg", 52, Type::Message, ".t.Inner"),
    ] {
        let mut member = field(name, number, Optional, ty, type_name);
        member.oneof_index = Some(0);
        all.push(member);
    }
    for (i, (name, number, ty, type_name)) in [
        ("opt_int", 60, Type::Int32, ""),
        ("opt_str", 61, Type::String, ""),
        ("opt_color", 62, Type::Enum, ".t.Color"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut member = field(name, number, Optional, ty, type_name);
        member.oneof_index = Some(1 + i as i32);
        member.proto3_optional = Some(true);
        all.push(member);
    }
    let mut renamed = field("custom", 70, Optional, Type::Int32, "");
    renamed.json_name = Some("renamed".into());
    all.push(renamed);
    let oneof = |name: &str| OneofDescriptorProto {
        name: Some(name.into()),
        ..Default::default()
    };
    let message = |name: &str, field: Vec<FieldDescriptorProto>| DescriptorProto {
        name: Some(name.into()),
        field,
        ..Default::default()
    };
    let mut all_message = message("All", all);
    all_message.nested_type = vec![
        entry("MStrEntry", Type::String, Type::Int32, ""),
        entry("MIntEntry", Type::Int32, Type::String, ""),
        entry("MBoolEntry", Type::Bool, Type::Message, ".t.Inner"),
        entry("MU64Entry", Type::Uint64, Type::Enum, ".t.Color"),
        entry("MS64Entry", Type::Sint64, Type::Bytes, ""),
    ];
    all_message.oneof_decl = vec![
        oneof("choice"),
        oneof("_opt_int"),
        oneof("_opt_str"),
        oneof("_opt_color"),
    ];
    let inner = message(
        "Inner",
        vec![
            field("a", 1, Optional, Type::Int32, ""),
            field("s", 2, Optional, Type::String, ""),
            field("children", 3, Repeated, Type::Message, ".t.Inner"),
            field("c", 4, Optional, Type::Enum, ".t.Color"),
        ],
    );
    let with_wkt = message(
        "WithWkt",
        vec![
            field("a", 1, Optional, Type::Int32, ""),
            field("h", 2, Optional, Type::Message, ".t.Holder"),
        ],
    );
    let holder = message(
        "Holder",
        vec![
            field(
                "t",
                1,
                Optional,
                Type::Message,
                ".google.protobuf.Timestamp",
            ),
            field("b", 2, Optional, Type::Int32, ""),
        ],
    );
    let color = EnumDescriptorProto {
        name: Some("Color".into()),
        value: ["COLOR_UNSPECIFIED", "RED", "GREEN"]
            .iter()
            .enumerate()
            .map(|(i, name)| EnumValueDescriptorProto {
                name: Some(name.to_string()),
                number: Some(i as i32),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("t.proto".into()),
        package: Some("t".into()),
        dependency: vec!["google/protobuf/timestamp.proto".into()],
        message_type: vec![all_message, inner, with_wkt, holder],
        enum_type: vec![color],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(file).unwrap();
    pool
}

/// What the generator may break in a body.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Break {
    None,
    UnknownField,
    WrongType,
    DuplicateKey,
    BothNames,
    TwoOneofMembers,
}

pub(crate) struct Gen {
    pub(crate) rng: fastrand::Rng,
    pub(crate) broken: Break,
    /// Whether the break was placed.
    pub(crate) placed: bool,
    /// Whether a map got two entries or more (prost-reflect orders them at random).
    pub(crate) multi_entry_map: bool,
}

impl Gen {
    fn maybe_break(&mut self) -> bool {
        !self.placed && self.broken != Break::None && self.rng.u8(..8) == 0 && {
            self.placed = true;
            true
        }
    }

    fn string(&mut self) -> String {
        let n = self.rng.usize(..8);
        let mut out = String::from("\"");
        for _ in 0..n {
            match self.rng.u8(..12) {
                0 => out.push_str("\\\""),
                1 => out.push_str("\\\\"),
                2 => out.push_str("\\n"),
                3 => out.push('é'),
                4 => out.push('😀'),
                5 => out.push_str("\\u00e9"),
                6 => out.push_str("\\ud83d\\ude00"),
                _ => out.push(self.rng.alphanumeric()),
            }
        }
        out.push('"');
        out
    }

    pub(crate) fn message(&mut self, message: &MessageDescriptor, depth: usize) -> String {
        if message.full_name() == "google.protobuf.Timestamp" {
            return format!("\"2024-01-0{}T03:04:05.5Z\"", 1 + self.rng.u8(..9));
        }
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut oneofs_set = std::collections::HashSet::new();
        for field in message.fields() {
            if self.rng.u8(..10) < 4 {
                continue;
            }
            let name = if self.rng.bool() {
                field.json_name().to_string()
            } else {
                field.name().to_string()
            };
            let real_oneof = field.containing_oneof().filter(|o| !o.is_synthetic());
            let value = if self.rng.u8(..20) == 0 {
                "null".to_string()
            } else if let Some(o) = &real_oneof
                && !oneofs_set.insert(o.name().to_string())
            {
                if self.broken == Break::TwoOneofMembers && !self.placed {
                    self.placed = true;
                    self.value(&field, depth)
                } else {
                    "null".to_string()
                }
            } else {
                self.value(&field, depth)
            };
            if self.maybe_break() {
                match self.broken {
                    Break::DuplicateKey => entries.push((name.clone(), value.clone())),
                    Break::BothNames if field.name() != field.json_name() => {
                        let other = if name == field.name() {
                            field.json_name()
                        } else {
                            field.name()
                        };
                        entries.push((other.to_string(), value.clone()));
                    }
                    Break::UnknownField => {
                        entries.push(("zz_unknown".into(), "{\"x\":[1]}".into()))
                    }
                    Break::WrongType => {
                        let wrong = ["\"text\"", "{}", "[1]", "true", "1.5", "-1", "\"\""];
                        entries.push((name, wrong[self.rng.usize(..wrong.len())].to_string()));
                        continue;
                    }
                    _ => self.placed = false,
                }
            }
            entries.push((name, value));
        }
        self.rng.shuffle(&mut entries);
        let sep = if self.rng.bool() { "," } else { " ,\n " };
        let body: Vec<String> = entries
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(sep))
    }

    fn value(&mut self, field: &prost_reflect::FieldDescriptor, depth: usize) -> String {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!()
            };
            let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let n = [0, 1, 1, 2, 3][self.rng.usize(..5)];
            let mut keys = std::collections::HashSet::new();
            let mut items = Vec::new();
            for _ in 0..n {
                let k = match key.kind() {
                    Kind::String => self.string(),
                    Kind::Bool => format!("\"{}\"", self.rng.bool()),
                    Kind::Int32 => format!("\"{}\"", self.small_or(|r| r.i32(..) as i64)),
                    Kind::Uint64 => format!("\"{}\"", self.rng.u64(..) >> self.rng.u32(..64)),
                    _ => format!("\"{}\"", self.small_or(|r| r.i64(..))),
                };
                let canonical: String = serde_json::from_str(&k).unwrap();
                if keys.insert(canonical) {
                    items.push(format!("{k}:{}", self.single(&value, depth + 1)));
                }
            }
            if items.len() > 1 {
                self.multi_entry_map = true;
            }
            return format!("{{{}}}", items.join(","));
        }
        if field.is_list() {
            let n = self.rng.usize(..4);
            let items: Vec<String> = (0..n).map(|_| self.single(field, depth + 1)).collect();
            return format!("[{}]", items.join(","));
        }
        self.single(field, depth)
    }

    fn small_or(&mut self, big: impl Fn(&mut fastrand::Rng) -> i64) -> i64 {
        match self.rng.u8(..4) {
            0 => 0,
            1 => self.rng.i64(-3..3),
            _ => big(&mut self.rng),
        }
    }

    fn single(&mut self, field: &prost_reflect::FieldDescriptor, depth: usize) -> String {
        let rng = &mut self.rng;
        let quoted = |rng: &mut fastrand::Rng, text: String| {
            if rng.bool() {
                format!("\"{text}\"")
            } else {
                text
            }
        };
        match field.kind() {
            Kind::Double => match rng.u8(..8) {
                0 => "0".into(),
                1 => "-0.0".into(),
                2 => ["\"NaN\"", "\"Infinity\"", "\"-Infinity\""][rng.usize(..3)].into(),
                3 => "\"1.25\"".into(),
                4 => "5".into(),
                _ => {
                    let v = f64::from_bits(rng.u64(..));
                    if v.is_finite() {
                        serde_json::to_string(&v).unwrap()
                    } else {
                        "1e300".into()
                    }
                }
            },
            Kind::Float => match rng.u8(..6) {
                0 => "0".into(),
                1 => ["\"NaN\"", "\"Infinity\"", "\"-Infinity\""][rng.usize(..3)].into(),
                2 => "-7".into(),
                _ => {
                    let v = f32::from_bits(rng.u32(..));
                    if v.is_finite() {
                        serde_json::to_string(&v).unwrap()
                    } else {
                        "2.5".into()
                    }
                }
            },
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                let v = self.small_or(|r| r.i32(..) as i64);
                match self.rng.u8(..6) {
                    0 => format!("\"{v}\""),
                    1 => format!("{v}.0"),
                    _ => v.to_string(),
                }
            }
            Kind::Uint32 | Kind::Fixed32 => {
                let v = self.small_or(|r| r.u32(..) as i64).unsigned_abs();
                quoted(&mut self.rng, v.to_string())
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                let v = self.small_or(|r| r.i64(..));
                quoted(&mut self.rng, v.to_string())
            }
            Kind::Uint64 | Kind::Fixed64 => {
                let v = self.rng.u64(..) >> self.rng.u32(..64);
                quoted(&mut self.rng, v.to_string())
            }
            Kind::Bool => rng.bool().to_string(),
            Kind::String => self.string(),
            Kind::Bytes => {
                use base64::Engine;
                use base64::engine::general_purpose::{
                    STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
                };
                let bytes: Vec<u8> = (0..rng.usize(..12)).map(|_| rng.u8(..)).collect();
                let text = match rng.u8(..4) {
                    0 => STANDARD.encode(&bytes),
                    1 => STANDARD_NO_PAD.encode(&bytes),
                    2 => URL_SAFE.encode(&bytes),
                    _ => URL_SAFE_NO_PAD.encode(&bytes),
                };
                format!("\"{text}\"")
            }
            Kind::Enum(e) => match rng.u8(..5) {
                0 => ["7", "-3", "0", "2"][rng.usize(..4)].into(),
                _ => {
                    let values: Vec<_> = e.values().collect();
                    format!("\"{}\"", values[rng.usize(..values.len())].name())
                }
            },
            Kind::Message(m) => {
                if depth > 3 {
                    "{}".into()
                } else {
                    self.message(&m, depth + 1)
                }
            }
        }
    }
}

/// Wire bytes with map entries sorted (prost-reflect writes them in `HashMap` order); checks
/// that fields come in number order on the way.
fn canon(message: &MessageDescriptor, mut buf: &[u8]) -> Vec<u8> {
    let mut records: Vec<(u32, bool, Vec<u8>)> = Vec::new();
    while !buf.is_empty() {
        let (number, wire_type) = decode_key(&mut buf).unwrap();
        let mut record = Vec::new();
        encode_key(number, wire_type, &mut record);
        match wire_type {
            WireType::Varint => encode_varint(decode_varint(&mut buf).unwrap(), &mut record),
            WireType::SixtyFourBit => {
                record.extend_from_slice(&buf[..8]);
                buf = &buf[8..];
            }
            WireType::ThirtyTwoBit => {
                record.extend_from_slice(&buf[..4]);
                buf = &buf[4..];
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).unwrap() as usize;
                let body = &buf[..len];
                buf = &buf[len..];
                let inner = match message.get_field(number).map(|f| f.kind()) {
                    Some(Kind::Message(m)) => canon(&m, body),
                    _ => body.to_vec(),
                };
                encode_varint(inner.len() as u64, &mut record);
                record.extend_from_slice(&inner);
            }
            _ => panic!("unexpected wire type"),
        }
        let is_map = message.get_field(number).is_some_and(|f| f.is_map());
        if let Some(last) = records.last() {
            assert!(last.0 <= number, "field {number} after field {}", last.0);
        }
        records.push((number, is_map, record));
    }
    records.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            if a.1 {
                a.2.cmp(&b.2)
            } else {
                std::cmp::Ordering::Equal
            }
        })
    });
    records.into_iter().flat_map(|r| r.2).collect()
}

#[derive(Default, Debug)]
struct Tally {
    fast: usize,
    fallback_ok: usize,
    both_failed: usize,
    exact_bytes: usize,
}

/// One body through both paths: the one pass never accepts what `from_json` refuses, writes the
/// same bytes (map entries aside), and `Plan::encode` answers exactly what the old path does.
fn compare(plan: &Plan, body: &[u8], allow: bool, multi_entry_map: bool, tally: &mut Tally) {
    let descriptor = plan.descriptor();
    let (bytes, body) = (body, String::from_utf8_lossy(body));
    let old = from_json(descriptor, bytes, allow).map(|m| m.encode_to_vec());
    let fast = plan.fast(bytes, allow);
    match (&old, &fast) {
        (Err(e), Some(_)) => panic!("the one pass accepted what from_json refuses ({e}): {body}"),
        (Ok(o), Some(f)) => {
            assert_eq!(canon(descriptor, o), canon(descriptor, f), "{body}");
            if !multi_entry_map {
                assert_eq!(o, f, "{body}");
                tally.exact_bytes += 1;
            }
            tally.fast += 1;
        }
        (Ok(_), None) => tally.fallback_ok += 1,
        (Err(_), None) => tally.both_failed += 1,
    }
    let public = plan.encode(bytes, allow);
    match (old, public) {
        (Ok(o), Ok(p)) => assert_eq!(canon(descriptor, &o), canon(descriptor, &p), "{body}"),
        (Err(o), Err(p)) => assert_eq!(o.message, p.message, "{body}"),
        (o, p) => panic!("{body}: old {o:?}, new {p:?}"),
    }
}

#[test]
fn json_to_wire_matches_from_json_and_encode() {
    let pool = schema();
    let all = Plan::new(&pool.get_message_by_name("t.All").unwrap());
    let inner = Plan::new(&pool.get_message_by_name("t.Inner").unwrap());
    let wkt = Plan::new(&pool.get_message_by_name("t.WithWkt").unwrap());
    assert!(!all.is_fallback() && !inner.is_fallback());
    assert!(wkt.is_fallback(), "a Timestamp one message down falls back");
    let mut rng = fastrand::Rng::with_seed(17);
    let (mut valid, mut broken, mut wkt_tally) =
        (Tally::default(), Tally::default(), Tally::default());
    for case in 0..700 {
        let allow = case % 3 == 0;
        // Valid bodies: the one pass takes every one of them.
        let mut g = Gen {
            rng: fastrand::Rng::with_seed(rng.u64(..)),
            broken: Break::None,
            placed: false,
            multi_entry_map: false,
        };
        let body = g.message(all.descriptor(), 0);
        compare(&all, body.as_bytes(), allow, g.multi_entry_map, &mut valid);
        // Broken ones: unknown field, wrong type, key twice, a field by both names, two oneof
        // members, nesting too deep, truncated.
        let kinds = [
            Break::UnknownField,
            Break::WrongType,
            Break::DuplicateKey,
            Break::BothNames,
            Break::TwoOneofMembers,
        ];
        let mut g = Gen {
            rng: fastrand::Rng::with_seed(rng.u64(..)),
            broken: kinds[case % kinds.len()],
            placed: false,
            multi_entry_map: false,
        };
        let body = g.message(all.descriptor(), 0);
        compare(&all, body.as_bytes(), allow, g.multi_entry_map, &mut broken);
        let cut = rng.usize(..body.len());
        compare(
            &all,
            &body.as_bytes()[..cut],
            allow,
            g.multi_entry_map,
            &mut broken,
        );
        let levels = rng.usize(MAX_DEPTH / 2 - 4..MAX_DEPTH / 2 + 4);
        let deep = format!(
            "{{\"inner\":{}{{}}{}}}",
            "{\"children\":[".repeat(levels),
            "]}".repeat(levels)
        );
        compare(&all, deep.as_bytes(), allow, false, &mut broken);
        if case % 5 == 0 {
            let mut g = Gen {
                rng: fastrand::Rng::with_seed(rng.u64(..)),
                broken: Break::None,
                placed: false,
                multi_entry_map: false,
            };
            let body = g.message(wkt.descriptor(), 0);
            compare(&wkt, body.as_bytes(), allow, false, &mut wkt_tally);
        }
    }
    println!("valid: {valid:?}\nbroken: {broken:?}\nwith a well-known type: {wkt_tally:?}");
    assert_eq!(valid.fallback_ok + valid.both_failed, 0, "{valid:?}");
    assert!(broken.both_failed > 1500, "{broken:?}");
    assert_eq!(wkt_tally.fast, 0);
    assert!(wkt_tally.fallback_ok > 100, "{wkt_tally:?}");
}

#[test]
fn an_empty_body_is_the_empty_message_and_errors_are_from_json_s() {
    let pool = schema();
    let all = pool.get_message_by_name("t.All").unwrap();
    assert_eq!(
        super::json_to_wire(&all, b"  ", false).unwrap(),
        Vec::<u8>::new()
    );
    assert_eq!(
        super::json_to_wire(&all, br#"{"nope":1}"#, false)
            .unwrap_err()
            .message,
        "unrecognized field name 'nope' at line 1 column 7"
    );
}
