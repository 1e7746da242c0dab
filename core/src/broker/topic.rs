//! What a topic may be: the names every broker routes the same way.

use crate::{Error, Result};

/// The longest topic, in bytes: AMQP's routing keys are short strings.
pub const MAX_TOPIC_LEN: usize = 255;

/// Checks that every broker can route `topic` as given, so a topic that works on one backend
/// works on all: an error naming the topic when it is empty, longer than [`MAX_TOPIC_LEN`]
/// bytes, has whitespace or control characters, an empty `.`-separated segment (`a..b`, `.a`),
/// or a wildcard (`*`, `#`, `>`), which RabbitMQ and NATS would match as patterns where the
/// in-memory broker matches the name exactly.
///
/// Brokers call it on `publish` and `subscribe` before touching their backend.
pub fn validate_topic(topic: &str) -> Result<()> {
    let refuse = |why: &str| Err(Error::invalid("topic", format!("topic {topic:?} {why}")));
    if topic.is_empty() {
        return refuse("is empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return refuse(&format!("is longer than {MAX_TOPIC_LEN} bytes"));
    }
    if let Some(c) = topic.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return refuse(&format!("has whitespace or a control character ({c:?})"));
    }
    if let Some(c) = topic.chars().find(|c| matches!(c, '*' | '#' | '>')) {
        return refuse(&format!("has the wildcard `{c}`"));
    }
    if topic.split('.').any(str::is_empty) {
        return refuse("has an empty `.`-separated segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_topics() {
        for topic in ["jobs", "jobs.email", "conf.group-1a2b_c", "Ünïcode.ok"] {
            assert!(validate_topic(topic).is_ok(), "{topic}");
        }
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn refuses_what_a_broker_cannot_route_naming_the_topic() {
        for (topic, why) in [
            ("", "empty"),
            (" ", "whitespace"),
            ("jobs email", "whitespace"),
            ("jobs\n", "whitespace"),
            ("jobs\u{0}", "control"),
            ("jobs.*", "wildcard `*`"),
            ("jobs.#", "wildcard `#`"),
            ("jobs.>", "wildcard `>`"),
            ("jobs..email", "empty"),
            (".jobs", "empty"),
            ("jobs.", "empty"),
        ] {
            let err = validate_topic(topic).expect_err(topic).to_string();
            assert!(
                err.contains(&format!("{topic:?}")),
                "names {topic:?}: {err}"
            );
            assert!(err.contains(why), "says {why}: {err}");
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(
            validate_topic(&long)
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
    }
}
