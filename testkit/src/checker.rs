//! A Jepsen-style queue checker: ids confirmed to the publisher against what the members of a
//! consumer group handled, plus the publishers that feed it.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Counts like Jepsen's queue checker: ids confirmed to the publisher against what consumers
/// handled, by member. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Checker {
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
    /// Per id, the members that handled it (one entry per handling).
    consumed: Arc<Mutex<HashMap<u64, Vec<usize>>>>,
}

/// What the checker found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Confirmed ids.
    pub confirmed: usize,
    /// Distinct ids consumed.
    pub consumed: usize,
    /// Confirmed, never consumed: must be empty.
    pub lost: Vec<u64>,
    /// Consumed, never published: must be empty.
    pub unexpected: Vec<u64>,
    /// Ids consumed more than once, with the members that handled them.
    pub duplicates: Vec<(u64, Vec<usize>)>,
}

impl Checker {
    /// Records that the publisher was told `id` is stored.
    pub fn confirmed(&self, id: u64) {
        self.confirmed.lock().expect("lock").insert(id);
    }

    /// Records that `member` handled `id` (once more).
    pub fn consumed(&self, id: u64, member: usize) {
        self.consumed
            .lock()
            .expect("lock")
            .entry(id)
            .or_default()
            .push(member);
    }

    /// How many ids were confirmed.
    pub fn confirmed_count(&self) -> usize {
        self.confirmed.lock().expect("lock").len()
    }

    /// How many confirmed ids have been handled at least once.
    pub fn settled(&self) -> usize {
        let consumed = self.consumed.lock().expect("lock");
        self.confirmed
            .lock()
            .expect("lock")
            .iter()
            .filter(|id| consumed.contains_key(id))
            .count()
    }

    /// How many handlings `member` did.
    pub fn per_member(&self, member: usize) -> usize {
        self.consumed
            .lock()
            .expect("lock")
            .values()
            .flatten()
            .filter(|&&m| m == member)
            .count()
    }

    /// The members that handled `id`, one entry per handling.
    pub fn members_of(&self, id: u64) -> Vec<usize> {
        self.consumed
            .lock()
            .expect("lock")
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Ids `member` handled.
    pub fn handled_by(&self, member: usize) -> BTreeSet<u64> {
        let consumed = self.consumed.lock().expect("lock");
        consumed
            .iter()
            .filter(|(_, members)| members.contains(&member))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Confirmed ids never handled.
    pub fn lost(&self) -> Vec<u64> {
        self.report(&BTreeSet::new()).lost
    }

    /// Handled ids that are not in `published`, in order.
    pub fn unexpected(&self, published: &BTreeSet<u64>) -> Vec<u64> {
        self.report(published).unexpected
    }

    /// Ids handled more than once, with who handled them, in order.
    pub fn duplicates(&self) -> Vec<(u64, Vec<usize>)> {
        self.report(&BTreeSet::new()).duplicates
    }

    /// Everything at once, against the ids that were `published`.
    pub fn report(&self, published: &BTreeSet<u64>) -> Report {
        let confirmed = self.confirmed.lock().expect("lock");
        let consumed = self.consumed.lock().expect("lock");
        let mut duplicates: Vec<_> = consumed
            .iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        duplicates.sort();
        let mut unexpected: Vec<u64> = consumed
            .keys()
            .filter(|id| !published.contains(id))
            .copied()
            .collect();
        unexpected.sort();
        Report {
            confirmed: confirmed.len(),
            consumed: consumed.len(),
            lost: confirmed
                .iter()
                .filter(|id| !consumed.contains_key(id))
                .copied()
                .collect(),
            unexpected,
            duplicates,
        }
    }
}

/// The id a test message or event carries in its body (`id:<n>`).
pub fn id_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix("id:")?
        .parse()
        .ok()
}

/// The body that carries `id` (`id:<n>`), as [`id_of`] reads it.
pub fn body_of(id: u64) -> String {
    format!("id:{id}")
}

/// Publishes ids `0..total` from `publishers` tasks (task `p` takes `p`, `p + publishers`, ...),
/// each id with `publish` (which panics when the publish fails), recording each one confirmed
/// in `checker` once `publish` returned. Await [`Publishers::join`] for them to finish.
pub fn publish_ids<F, Fut>(publishers: u64, total: u64, checker: &Checker, publish: F) -> Publishers
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let tasks = (0..publishers)
        .map(|p| {
            let (publish, checker) = (publish.clone(), checker.clone());
            tokio::spawn(async move {
                for id in (p..total).step_by(publishers as usize) {
                    publish(id).await;
                    checker.confirmed(id);
                }
            })
        })
        .collect();
    Publishers { tasks }
}

/// The publishing tasks of [`publish_ids`].
#[derive(Debug)]
pub struct Publishers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publishers {
    /// Waits for every publisher to finish, panicking when one did.
    pub async fn join(self) {
        for task in self.tasks {
            task.await.expect("publisher task");
        }
    }
}

/// Prints one line about a group run: the report's counts and how many handlings each of
/// `members` members did.
pub fn print_summary(what: &str, checker: &Checker, report: &Report, members: usize, extra: &str) {
    let per_member: Vec<String> = (0..members)
        .map(|m| checker.per_member(m).to_string())
        .collect();
    println!(
        "{what}: confirmed {}, consumed {}, lost {}, unexpected {}, duplicates {}{extra}; \
         handled by members: {}",
        report.confirmed,
        report.consumed,
        report.lost.len(),
        report.unexpected.len(),
        report.duplicates.len(),
        per_member.join(" / "),
    );
}

/// Asserts the checks every group run shares: `expected` ids confirmed, none lost, none
/// unexpected, and the members `survivors` each handled some.
pub fn assert_none_lost(report: &Report, expected: u64, checker: &Checker, survivors: &[usize]) {
    assert_eq!(report.confirmed as u64, expected);
    assert!(report.lost.is_empty(), "lost: {:?}", report.lost);
    assert!(
        report.unexpected.is_empty(),
        "unexpected: {:?}",
        report.unexpected
    );
    assert!(
        survivors.iter().all(|&m| checker.per_member(m) > 0),
        "the survivors share the rest"
    );
}
