//! Unit tests of the naming, header encoding and deliver policies.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::DeliverPolicy;
use micro_core::events::Offset;

use super::names::{decode_percent, deliver_policy, encode_key, encode_value};
use super::{MAX_NAME_LEN, NatsEvents, STREAM_PREFIX};

#[test]
fn names_escape_one_to_one() {
    assert_eq!(
        NatsEvents::stream_name("orders.created"),
        "MICRO_EVENTS_orders_2Ecreated"
    );
    assert_eq!(NatsEvents::durable_name("email-workers"), "email-workers");
    assert_ne!(
        NatsEvents::stream_name("a.b"),
        NatsEvents::stream_name("a_b")
    );
    assert_ne!(
        NatsEvents::stream_name("a_2Eb"),
        NatsEvents::stream_name("a.b")
    );
    assert_eq!(NatsEvents::durable_name("a b"), "a_20b");
}

#[test]
fn long_names_are_cut_and_hashed() {
    let long = "ü".repeat(120);
    let name = NatsEvents::stream_name(&long);
    assert_eq!(name.len(), MAX_NAME_LEN);
    assert!(name.starts_with(STREAM_PREFIX));
    let other = NatsEvents::stream_name(&format!("{}a", "ü".repeat(120)));
    assert_ne!(name, other);
    assert_eq!(NatsEvents::stream_name(&"a".repeat(242)).len(), 255);
}

#[test]
fn metadata_round_trips_through_headers() {
    for (key, value) in [
        ("plain", "value"),
        ("with:colon", " padded  "),
        ("ключ", "line\r\nbreak"),
        ("100%", "50% off"),
        ("", ""),
        ("tab\tkey", "\tx\t"),
    ] {
        let (k, v) = (encode_key(key), encode_value(value));
        assert!(
            k.parse::<async_nats::HeaderName>().is_ok() || k.is_empty(),
            "{k:?}"
        );
        assert!(!v.contains(['\r', '\n']), "{v:?}");
        assert_eq!(v.trim(), v, "NATS trims values: {v:?}");
        assert_eq!(decode_percent(&k), key);
        assert_eq!(decode_percent(&v), value);
    }
    assert_eq!(encode_value("a b"), "a b");
    assert_eq!(encode_key("Nats-Msg-Id"), "%4Eats-Msg-Id");
    assert_eq!(encode_value("x Nats-Msg-Id: y"), "x %4Eats-Msg-Id: y");
    assert_eq!(decode_percent("%4Eats-Msg-Id"), "Nats-Msg-Id");
    assert_eq!(decode_percent("%zz%4"), "%zz%4");
}

#[test]
fn offsets_map_to_deliver_policies() {
    assert_eq!(deliver_policy(Offset::Latest), DeliverPolicy::New);
    assert_eq!(deliver_policy(Offset::Earliest), DeliverPolicy::All);
    assert_eq!(deliver_policy(Offset::Sequence(0)), DeliverPolicy::All);
    assert_eq!(
        deliver_policy(Offset::Sequence(7)),
        DeliverPolicy::ByStartSequence { start_sequence: 7 }
    );
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(matches!(
        deliver_policy(Offset::Time(at)),
        DeliverPolicy::ByStartTime { start_time } if SystemTime::from(start_time) == at
    ));
}
