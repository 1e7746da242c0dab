//! Which nodes of a service a channel may call: a version, node metadata, or both
//! (`client.channel_with("greeter", Filter::version("v2"))`).
//!
//! A service's version belongs to its registration, so nodes of different versions come from
//! different registrations; the client files each node's version in its metadata under
//! `version`, and a filter is a set of metadata conditions that must all hold.
//! When no node passes, the call fails with `UNAVAILABLE` naming the filter and the versions
//! that are registered: a pinned caller never silently reaches another version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use super::cache::{Resolved, Target, VERSION_METADATA};
use crate::{Error, Result};

/// The longest version [`Filter::try_version`] accepts.
const MAX_VERSION_LEN: usize = 128;

/// A condition on the nodes a channel may call: every condition must hold. The default filter
/// has none and lets every node through.
///
/// ```ignore
/// let canary = client.channel_with("greeter", Filter::version("v2").metadata("zone", "eu"));
/// ```
#[derive(Default)]
pub struct Filter {
    /// Metadata key → the value a node must have (the version under `version`).
    conditions: BTreeMap<String, String>,
    /// The last input and what passed from it, so a call on unchanged nodes does not filter or
    /// allocate again. The input is held weakly (the client's cache owns it); a live `Weak`
    /// keeps its allocation, so a pointer match is the same `Resolved`, never a reused address.
    memo: Mutex<Option<Memo>>,
}

struct Memo {
    input: Weak<Resolved>,
    /// `None` when every node passed: the input itself is answered.
    passed: Option<Arc<Resolved>>,
}

impl Filter {
    /// Only nodes registered with service version `version` (`--server-version`).
    pub fn version(version: impl Into<String>) -> Self {
        Filter::default().metadata(VERSION_METADATA, version)
    }

    /// [`Filter::version`] for a version that comes from outside (a request header, a flag):
    /// refuses an empty version, one longer than 128 bytes, or one with a character other than
    /// ASCII letters, digits and `.`, `_`, `-`, `+` (`v2`, `latest` and `1.2.0-rc.1+build`
    /// pass).
    pub fn try_version(version: &str) -> Result<Self> {
        let invalid = |message: String| Error::Invalid {
            what: "version",
            message,
        };
        if version.is_empty() {
            return Err(invalid(
                "it is empty; give a version such as v2 or 1.2.0".into(),
            ));
        }
        if version.len() > MAX_VERSION_LEN {
            return Err(invalid(format!(
                "it is {} bytes long; at most {MAX_VERSION_LEN} are allowed",
                version.len()
            )));
        }
        if let Some(bad) = version
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
        {
            return Err(invalid(format!(
                "{version:?} has the character {bad:?}; a version has only ASCII letters, \
                 digits and . _ - + (v2, 1.2.0-rc.1)"
            )));
        }
        Ok(Filter::version(version))
    }

    /// Also requires node metadata `key` = `value` (`.metadata("zone", "eu")`). A second
    /// condition on the same key replaces the first.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.conditions.insert(key.into(), value.into());
        self.memo = Mutex::default();
        self
    }

    /// Whether `target`'s node meets every condition.
    fn passes(&self, target: &Target) -> bool {
        self.conditions
            .iter()
            .all(|(key, value)| target.node.metadata.get(key) == Some(value))
    }

    /// The nodes of `resolved` this filter lets through: the same `Arc` for the same input
    /// (no allocation per call), and `resolved` itself when every node passes.
    pub(super) fn apply(&self, resolved: Arc<Resolved>) -> Arc<Resolved> {
        if self.conditions.is_empty() {
            return resolved;
        }
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(memo) = memo.as_ref()
            && std::ptr::eq(memo.input.as_ptr(), Arc::as_ptr(&resolved))
        {
            return memo.passed.clone().unwrap_or(resolved);
        }
        let passed = if resolved.targets.iter().all(|t| self.passes(t)) {
            None
        } else {
            let targets: Vec<Target> = resolved
                .targets
                .iter()
                .filter(|t| self.passes(t))
                .cloned()
                .collect();
            Some(Arc::new(Resolved::new(targets)))
        };
        tracing::debug!(
            filter = %self,
            nodes = resolved.targets.len(),
            passed = passed.as_ref().map_or(resolved.targets.len(), |p| p.targets.len()),
            "nodes filtered"
        );
        *memo = Some(Memo {
            input: Arc::downgrade(&resolved),
            passed: passed.clone(),
        });
        passed.unwrap_or(resolved)
    }

    /// [`Filter::apply`], failing with `UNAVAILABLE` when `resolved` has nodes but none
    /// passes: the status names `service`, this filter and the versions registered, so the
    /// caller can fix the version rather than reach another one. (With no node at all, the
    /// caller's own "no node" error says more: the filter is not the cause.)
    pub(super) fn select(
        &self,
        service: &str,
        resolved: Arc<Resolved>,
    ) -> std::result::Result<Arc<Resolved>, tonic::Status> {
        let passed = self.apply(resolved.clone());
        if passed.targets.is_empty() && !resolved.targets.is_empty() {
            return Err(tonic::Status::unavailable(self.refusal(service, &resolved)));
        }
        Ok(passed)
    }

    /// Why no node of `resolved` passes: `no node of `greeter` has version v3; versions
    /// registered: latest, v2 (...)`.
    fn refusal(&self, service: &str, resolved: &Resolved) -> String {
        let versions: BTreeSet<&str> = resolved
            .targets
            .iter()
            .filter_map(|t| t.node.metadata.get(VERSION_METADATA).map(String::as_str))
            .collect();
        let versions = if versions.is_empty() {
            "none".to_string()
        } else {
            versions.into_iter().collect::<Vec<_>>().join(", ")
        };
        format!(
            "no node of `{service}` has {self}; versions registered: {versions} (call one of \
             those, or start a node of `{service}` that matches)"
        )
    }
}

/// `version v2 and metadata zone=eu` (the version first); `any node` for the empty filter.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conditions.is_empty() {
            return f.write_str("any node");
        }
        let version = self.conditions.get(VERSION_METADATA);
        let others = self
            .conditions
            .iter()
            .filter(|(key, _)| key.as_str() != VERSION_METADATA);
        let mut parts = version
            .map(|v| format!("version {v}"))
            .into_iter()
            .chain(others.map(|(key, value)| format!("metadata {key}={value}")));
        if let Some(first) = parts.next() {
            f.write_str(&first)?;
        }
        for part in parts {
            write!(f, " and {part}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("conditions", &self.conditions)
            .finish_non_exhaustive()
    }
}

/// The same conditions; the copy starts with an empty memo.
impl Clone for Filter {
    fn clone(&self) -> Self {
        Filter {
            conditions: self.conditions.clone(),
            memo: Mutex::default(),
        }
    }
}

/// Filters are equal when their conditions are.
impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.conditions == other.conditions
    }
}

impl Eq for Filter {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::link::Link;
    use crate::registry::Node;

    fn target(id: &str, version: &str, zone: &str) -> Target {
        Target::new(
            Node {
                id: id.into(),
                address: format!("127.0.0.1:{}", 1000 + id.len()),
                metadata: [
                    (VERSION_METADATA.to_string(), version.to_string()),
                    ("zone".to_string(), zone.to_string()),
                ]
                .into(),
            },
            Link::plain("127.0.0.1:1").expect("an address"),
        )
    }

    fn resolved() -> Arc<Resolved> {
        Arc::new(Resolved::new(vec![
            target("a", "v1", "eu"),
            target("bb", "v2", "eu"),
            target("ccc", "v2", "us"),
        ]))
    }

    fn ids(resolved: &Resolved) -> Vec<&str> {
        resolved
            .targets
            .iter()
            .map(|t| t.node.id.as_str())
            .collect()
    }

    #[tokio::test]
    async fn keeps_only_nodes_meeting_every_condition() {
        let all = resolved();
        assert_eq!(
            ids(&Filter::version("v2").apply(all.clone())),
            ["bb", "ccc"]
        );
        let both = Filter::version("v2").metadata("zone", "us");
        assert_eq!(ids(&both.apply(all.clone())), ["ccc"]);
        assert!(Filter::version("v3").apply(all.clone()).targets.is_empty());
        // No condition, or every node passing: the input itself.
        assert!(Arc::ptr_eq(&Filter::default().apply(all.clone()), &all));
        let every = Filter::default().metadata("zone", "eu");
        let two = Arc::new(Resolved::new(vec![target("a", "v1", "eu")]));
        assert!(Arc::ptr_eq(&every.apply(two.clone()), &two));
    }

    #[tokio::test]
    async fn the_same_input_gives_the_same_output_until_it_changes() {
        let filter = Filter::version("v2");
        let all = resolved();
        let first = filter.apply(all.clone());
        assert!(Arc::ptr_eq(&first, &filter.apply(all.clone())));
        let changed = resolved();
        let second = filter.apply(changed);
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(ids(&second), ["bb", "ccc"]);
    }

    #[tokio::test]
    async fn no_node_passing_names_the_filter_and_the_versions() {
        let status = Filter::version("v3")
            .select("greeter", resolved())
            .err()
            .expect("refused");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("no node of `greeter` has version v3; versions registered: v1, v2"),
            "{}",
            status.message()
        );
        let status = Filter::version("v2")
            .metadata("zone", "ap")
            .select("greeter", resolved())
            .err()
            .expect("refused");
        assert!(
            status
                .message()
                .contains("has version v2 and metadata zone=ap;"),
            "{}",
            status.message()
        );
        // No node at all is not the filter's doing: left to the caller's "no node" error.
        let empty = Arc::new(Resolved::new(Vec::new()));
        assert!(Filter::version("v3").select("greeter", empty).is_ok());
    }

    #[test]
    fn versions_from_outside_are_checked() {
        for good in ["v2", "latest", "1.2.0-rc.1+build.5", "release_2"] {
            assert_eq!(Filter::try_version(good).ok(), Some(Filter::version(good)));
        }
        for bad in ["", "v 2", "v2\n", "é", "a/b", &"9".repeat(129)] {
            let error = Filter::try_version(bad).expect_err("refused").to_string();
            assert!(error.starts_with("invalid version: "), "{error}");
        }
    }
}
