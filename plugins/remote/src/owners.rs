//! Who registered which node: the registry server's record that lets a client refresh and
//! deregister only the nodes it registered.
//!
//! The first registration of a node id records the caller's owner key beside it (here, in the
//! server, never in the backing registry, so list, get and watch never show it). A register or
//! deregister of that node id with another key is refused while the node's registration is live;
//! once it lapses (its TTL passed without a refresh) or its owner deregistered it, the id is
//! free again. A node id is owned as a whole: the same id under another service or version
//! belongs to the same owner, whatever the backing registry keys nodes by.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::security::constant_time_eq;

/// How often lapsed records are swept out (lazily, on a registration).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A refusal: the node id owned by someone else.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The node id.
    pub(crate) node: String,
}

/// One registration of a node: service name and version.
type Entry = (String, String);

/// The owner of one node id and when each of its registrations lapses.
#[derive(Debug)]
struct Owned {
    owner: String,
    entries: HashMap<Entry, Instant>,
}

impl Owned {
    fn live(&self, now: Instant) -> bool {
        self.entries.values().any(|&lapses| lapses > now)
    }

    fn owned_by(&self, owner: &str) -> bool {
        constant_time_eq(owner.as_bytes(), self.owner.as_bytes())
    }
}

#[derive(Debug)]
struct Inner {
    nodes: HashMap<String, Owned>,
    next_prune: Instant,
}

/// The owners of the nodes registered through one registry server.
#[derive(Debug)]
pub(crate) struct Owners {
    inner: Mutex<Inner>,
}

impl Default for Owners {
    fn default() -> Self {
        Owners {
            inner: Mutex::new(Inner {
                nodes: HashMap::new(),
                next_prune: Instant::now() + PRUNE_EVERY,
            }),
        }
    }
}

impl Owners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The data stays consistent at every step, so a panic elsewhere leaves nothing torn.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims (or refreshes) `nodes` of `service`/`version` for `owner` until `lapses`: all of
    /// them or, when one is live under another owner, none (that one is named). Returns the ids
    /// whose registration of this service and version is new, for [`Owners::unclaim`].
    pub(crate) fn claim(
        &self,
        owner: &str,
        service: &str,
        version: &str,
        nodes: &[&str],
        now: Instant,
        lapses: Instant,
    ) -> Result<Vec<String>, Refused> {
        let mut inner = self.lock();
        if now >= inner.next_prune {
            inner.nodes.retain(|_, owned| owned.live(now));
            inner.next_prune = now + PRUNE_EVERY;
        }
        if let Some(node) = nodes.iter().find(|id| {
            inner
                .nodes
                .get(**id)
                .is_some_and(|owned| owned.live(now) && !owned.owned_by(owner))
        }) {
            return Err(Refused {
                node: node.to_string(),
            });
        }
        let entry = (service.to_string(), version.to_string());
        let mut new = Vec::new();
        for id in nodes {
            let owned = inner.nodes.entry(id.to_string()).or_insert_with(|| Owned {
                owner: owner.to_string(),
                entries: HashMap::new(),
            });
            if !owned.live(now) {
                // Lapsed (or just made): whoever claims it now owns it.
                owned.owner = owner.to_string();
                owned.entries.clear();
            }
            if owned.entries.insert(entry.clone(), lapses).is_none() {
                new.push(id.to_string());
            }
        }
        Ok(new)
    }

    /// Takes back the registrations `claim` made new (the backing registry refused them).
    pub(crate) fn unclaim(&self, owner: &str, service: &str, version: &str, nodes: &[String]) {
        self.release(owner, service, version, nodes.iter().map(String::as_str));
    }

    /// Which of `nodes` `owner` may deregister: those live under it. One live under another
    /// owner refuses the whole call; one nobody owns (never registered here, or lapsed) is left
    /// out, so nothing registered by someone else is ever removed.
    pub(crate) fn deregistrable<'a>(
        &self,
        owner: &str,
        nodes: &[&'a str],
        now: Instant,
    ) -> Result<Vec<&'a str>, Refused> {
        let inner = self.lock();
        let mut mine = Vec::new();
        for id in nodes {
            match inner.nodes.get(*id) {
                Some(owned) if owned.live(now) => {
                    if !owned.owned_by(owner) {
                        return Err(Refused {
                            node: id.to_string(),
                        });
                    }
                    mine.push(*id);
                }
                _ => {}
            }
        }
        Ok(mine)
    }

    /// Forgets `owner`'s registrations of `nodes` under `service`/`version` (deregistered); a
    /// node id with none left is free.
    pub(crate) fn release<'a>(
        &self,
        owner: &str,
        service: &str,
        version: &str,
        nodes: impl IntoIterator<Item = &'a str>,
    ) {
        let mut inner = self.lock();
        let entry = (service.to_string(), version.to_string());
        for id in nodes {
            if let Some(owned) = inner.nodes.get_mut(id)
                && owned.owned_by(owner)
            {
                owned.entries.remove(&entry);
                if owned.entries.is_empty() {
                    inner.nodes.remove(id);
                }
            }
        }
    }

    /// How many node ids are recorded (live or not yet swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "owner-a-0123456789";
    const B: &str = "owner-b-0123456789";
    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn first_registration_owns_the_node() {
        let owners = Owners::default();
        let t0 = Instant::now();
        assert_eq!(
            owners.claim(A, "greeter", "1", &["n1"], t0, t0 + TTL),
            Ok(vec!["n1".to_string()])
        );
        // The owner refreshes: nothing new.
        assert_eq!(
            owners.claim(A, "greeter", "1", &["n1"], t0, t0 + TTL),
            Ok(vec![])
        );
        // Another may not overwrite it, under this service or any other.
        for (service, version) in [("greeter", "1"), ("greeter", "2"), ("other", "1")] {
            assert_eq!(
                owners.claim(B, service, version, &["n1"], t0, t0 + TTL),
                Err(Refused { node: "n1".into() }),
                "{service} {version}"
            );
        }
        // Nor deregister it.
        assert_eq!(
            owners.deregistrable(B, &["n1"], t0),
            Err(Refused { node: "n1".into() })
        );
        assert_eq!(owners.deregistrable(A, &["n1"], t0), Ok(vec!["n1"]));
    }

    #[test]
    fn a_claim_is_all_or_nothing() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["n2"], t0, t0 + TTL)
            .expect("claim n2");
        assert_eq!(
            owners.claim(B, "greeter", "1", &["n1", "n2", "n3"], t0, t0 + TTL),
            Err(Refused { node: "n2".into() })
        );
        // Neither n1 nor n3 went to B.
        assert_eq!(
            owners.claim(A, "greeter", "1", &["n1", "n3"], t0, t0 + TTL),
            Ok(vec!["n1".to_string(), "n3".to_string()])
        );
    }

    #[test]
    fn a_lapsed_node_is_free() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["n1"], t0, t0 + TTL)
            .expect("claim");
        let before = t0 + TTL - Duration::from_millis(1);
        assert!(
            owners
                .claim(B, "greeter", "1", &["n1"], before, before + TTL)
                .is_err()
        );
        let after = t0 + TTL;
        assert_eq!(owners.deregistrable(B, &["n1"], after), Ok(vec![]));
        assert_eq!(
            owners.claim(B, "greeter", "1", &["n1"], after, after + TTL),
            Ok(vec!["n1".to_string()])
        );
        // Now it is B's, and A is the stranger.
        assert!(
            owners
                .claim(A, "greeter", "1", &["n1"], after, after + TTL)
                .is_err()
        );
        assert!(owners.deregistrable(A, &["n1"], after).is_err());
    }

    #[test]
    fn a_node_stays_owned_while_any_registration_of_it_is_live() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["n1"], t0, t0 + TTL)
            .expect("v1");
        owners
            .claim(A, "greeter", "2", &["n1"], t0, t0 + TTL * 3)
            .expect("v2");
        let later = t0 + TTL * 2;
        assert!(
            owners
                .claim(B, "greeter", "1", &["n1"], later, later + TTL)
                .is_err(),
            "v2 is still live"
        );
    }

    #[test]
    fn deregistering_frees_the_node() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["n1"], t0, t0 + TTL)
            .expect("claim");
        // A stranger's release does nothing.
        owners.release(B, "greeter", "1", ["n1"]);
        assert!(owners.deregistrable(B, &["n1"], t0).is_err());
        // Another version's release leaves this one owned.
        owners.release(A, "greeter", "2", ["n1"]);
        assert!(owners.deregistrable(B, &["n1"], t0).is_err());
        owners.release(A, "greeter", "1", ["n1"]);
        assert_eq!(owners.len(), 0);
        assert!(
            owners
                .claim(B, "greeter", "1", &["n1"], t0, t0 + TTL)
                .is_ok()
        );
    }

    #[test]
    fn unknown_nodes_are_left_out_of_a_deregistration() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["mine"], t0, t0 + TTL)
            .expect("claim");
        assert_eq!(
            owners.deregistrable(A, &["mine", "nobodys"], t0),
            Ok(vec!["mine"])
        );
    }

    #[test]
    fn unclaim_takes_back_only_what_was_new() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["old"], t0, t0 + TTL)
            .expect("claim old");
        let new = owners
            .claim(A, "greeter", "1", &["old", "new"], t0, t0 + TTL)
            .expect("claim both");
        assert_eq!(new, ["new"]);
        owners.unclaim(A, "greeter", "1", &new);
        assert!(
            owners
                .claim(B, "greeter", "1", &["new"], t0, t0 + TTL)
                .is_ok(),
            "the refused registration left no claim"
        );
        assert!(
            owners
                .claim(B, "greeter", "1", &["old"], t0, t0 + TTL)
                .is_err(),
            "the earlier one stands"
        );
    }

    #[test]
    fn lapsed_records_are_swept() {
        let owners = Owners::default();
        let t0 = Instant::now();
        owners
            .claim(A, "greeter", "1", &["n1", "n2"], t0, t0 + TTL)
            .expect("claim");
        assert_eq!(owners.len(), 2);
        let much_later = t0 + PRUNE_EVERY * 2;
        owners
            .claim(B, "other", "1", &["n3"], much_later, much_later + TTL)
            .expect("claim");
        assert_eq!(owners.len(), 1, "n1 and n2 lapsed and were swept");
    }
}
