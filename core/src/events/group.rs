//! What a consumer group may be called: the same names on every events backend.

use super::ConsumeOptions;
use crate::broker::{MAX_TOPIC_LEN, validate_topic};
use crate::{Error, Result};

/// Checks that `group` is a consumer group name every backend takes alike: an error naming the
/// group when it is empty, longer than [`MAX_TOPIC_LEN`] bytes, or has whitespace or control
/// characters. Backends whose names are stricter (NATS durable consumers cannot hold `.`, `*`,
/// `>`) escape the rest.
///
/// Events backends call it in `consume` before touching their backend, beside
/// [`validate_topic`](crate::broker::validate_topic).
pub fn validate_group(group: &str) -> Result<()> {
    let refuse = |why: &str| Err(Error::invalid("group", format!("group {group:?} {why}")));
    if group.is_empty() {
        return refuse("is empty");
    }
    if group.len() > MAX_TOPIC_LEN {
        return refuse(&format!("is longer than {MAX_TOPIC_LEN} bytes"));
    }
    if let Some(c) = group.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return refuse(&format!("has whitespace or a control character ({c:?})"));
    }
    Ok(())
}

/// Checks what `consume` is given: the topic ([`validate_topic`]) and the group, if any
/// ([`validate_group`]). Events backends call it first in `consume`.
pub fn validate_consume(topic: &str, options: &ConsumeOptions) -> Result<()> {
    validate_topic(topic)?;
    options.group.as_deref().map_or(Ok(()), validate_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for group in ["billing", "email-workers", "billing.v2", "g_1*", "Ünïcode"] {
            assert!(validate_group(group).is_ok(), "{group}");
        }
        assert!(validate_group(&"g".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn refuses_empty_blank_and_long_names_naming_the_group() {
        let long = "g".repeat(MAX_TOPIC_LEN + 1);
        for (group, why) in [
            ("", "empty"),
            (" ", "whitespace"),
            ("two words", "whitespace"),
            ("tab\t", "whitespace"),
            ("nul\u{0}", "control"),
            (long.as_str(), "longer"),
        ] {
            let error = validate_group(group).expect_err(group);
            assert!(
                matches!(error, Error::Invalid { what: "group", .. }),
                "{error:?}"
            );
            let error = error.to_string();
            assert!(
                error.contains(&format!("{group:?}")),
                "names {group:?}: {error}"
            );
            assert!(error.contains(why), "says {why}: {error}");
        }
    }
}
