//! Naming and escaping: stream, subject and consumer names, metadata headers, event ids and
//! deliver policies.

use async_nats::jetstream::consumer::DeliverPolicy;
use micro_core::events::Offset;

use super::MAX_NAME_LEN;

pub(super) fn deliver_policy(offset: Offset) -> DeliverPolicy {
    match offset {
        Offset::Latest => DeliverPolicy::New,
        Offset::Earliest | Offset::Sequence(0) => DeliverPolicy::All,
        Offset::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        Offset::Time(time) => DeliverPolicy::ByStartTime {
            start_time: time.into(),
        },
    }
}

/// `prefix` and `name` with every byte other than an ASCII letter, digit or `-` as `_XX`;
/// cut, with `_00` and a hash of `name`, past [`MAX_NAME_LEN`].
pub(super) fn escape_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len());
    out.push_str(prefix);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02X}"));
        }
    }
    if out.len() > MAX_NAME_LEN {
        // `_00` never comes out of the escaping above (NUL is not allowed in names).
        let hash = format!("_00{:016x}", fnv1a(name.as_bytes()));
        out.truncate(MAX_NAME_LEN - hash.len());
        out.push_str(&hash);
    }
    out
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A metadata key as a header name: printable ASCII but `:` and `%` as they are, the rest
/// percent-encoded.
pub(super) fn encode_key(key: &str) -> String {
    percent_encode(key, |_, b| {
        (33..=126).contains(&b) && b != b':' && b != b'%'
    })
}

/// A metadata value as a header value: `%`, control characters and spaces at either end
/// (which NATS trims) percent-encoded.
pub(super) fn encode_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let lead = bytes.iter().take_while(|b| **b == b' ').count();
    let trail = bytes.len() - bytes.iter().rev().take_while(|b| **b == b' ').count();
    percent_encode(value, |at, b| {
        b != b'%' && b >= 0x20 && b != 0x7f && !(b == b' ' && (at < lead || at >= trail))
    })
}

/// `text` with the bytes `keep` refuses percent-encoded, and the `N` of every `Nats-` too:
/// the server finds its headers (`Nats-Msg-Id`) by searching the header block for the name, and
/// the name inside another header would hide the real one.
pub(super) fn percent_encode(text: &str, keep: impl Fn(usize, u8) -> bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len());
    for (at, &byte) in bytes.iter().enumerate() {
        if keep(at, byte) && !bytes[at..].starts_with(b"Nats-") {
            out.push(byte);
        } else {
            out.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    // Kept bytes are whole characters (keys keep only ASCII, values every non-ASCII byte).
    String::from_utf8_lossy(&out).into_owned()
}

/// Undoes [`encode_key`] and [`encode_value`]; a `%` not followed by two hex digits stays.
pub(super) fn decode_percent(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn new_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
