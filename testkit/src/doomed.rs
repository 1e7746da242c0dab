//! A consumer in a child process, killed with SIGKILL: no goodbye to the server, no last
//! acknowledgements, its TCP connection torn down by the kernel — a consumer dying for real,
//! with work in hand.
//!
//! The parent describes the consumer in [`Orders`] and [`Orders::spawn`]s it: its own test binary
//! again (`<entry> --exact --ignored --nocapture`), with the orders in the environment. The
//! entry test (an `#[ignore]`d test) reads them with [`Orders::from_env`], which is `None` when
//! it is not the child. The child reports on stderr, one line per event, through
//! [`report_ready`], [`report_done`] and [`report_held`]: `ready` once consuming, `done <id>` for
//! each item it finished, `held <id>` for each it holds and will never finish.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const ADDRESS: &str = "MICRO_TEST_DOOMED_ADDRESS";
const TOPIC: &str = "MICRO_TEST_DOOMED_TOPIC";
const GROUP: &str = "MICRO_TEST_DOOMED_GROUP";
const ACK_WAIT_MS: &str = "MICRO_TEST_DOOMED_ACK_WAIT_MS";
const PREFETCH: &str = "MICRO_TEST_DOOMED_PREFETCH";
const HANDLE_FIRST: &str = "MICRO_TEST_DOOMED_HANDLE_FIRST";
/// Starts every report line, so libtest's own output cannot be mistaken for one.
const MARK: &str = "doomed-consumer:";

/// What the child consumer does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orders {
    /// The backend's URL.
    pub address: String,
    /// The topic it consumes.
    pub topic: String,
    /// The group (or queue group) it joins.
    pub group: String,
    /// The group's ack wait, where the backend has one.
    pub ack_wait: Option<Duration>,
    /// Its prefetch.
    pub prefetch: usize,
    /// How many items it finishes before it starts holding them.
    pub handle_first: usize,
}

impl Orders {
    /// Runs the test `entry` of this test binary as the child, with these orders;
    /// `on_handled` is called with every item the child reports.
    pub fn spawn(&self, entry: &str, on_handled: impl Fn(Handled) + Send + 'static) -> DoomedChild {
        let mut env = vec![
            (ADDRESS, self.address.clone()),
            (TOPIC, self.topic.clone()),
            (GROUP, self.group.clone()),
            (PREFETCH, self.prefetch.to_string()),
            (HANDLE_FIRST, self.handle_first.to_string()),
        ];
        if let Some(ack_wait) = self.ack_wait {
            env.push((ACK_WAIT_MS, ack_wait.as_millis().to_string()));
        }
        DoomedChild::spawn(entry, env, on_handled)
    }

    /// The child's orders, or `None` when this process is not a child run by
    /// [`Orders::spawn`]. In the child it also starts a thread that exits the process once the
    /// parent goes away without killing it, so the child never holds work forever.
    pub fn from_env() -> Option<Orders> {
        std::env::var_os(ADDRESS)?;
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(3);
        });
        let ack_wait = std::env::var(ACK_WAIT_MS)
            .ok()
            .map(|ms| Duration::from_millis(ms.parse().expect("milliseconds")));
        Some(Orders {
            address: order(ADDRESS),
            topic: order(TOPIC),
            group: order(GROUP),
            ack_wait,
            prefetch: order(PREFETCH).parse().expect("a prefetch"),
            handle_first: order(HANDLE_FIRST).parse().expect("a count"),
        })
    }
}

fn order(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
}

/// One item the child reported handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Finished (handled, and acknowledged or returned `Ok`).
    Done(u64),
    /// Held: handled or being handled, never finished.
    Held(u64),
}

impl Handled {
    /// The item's id, done or held.
    pub fn id(self) -> u64 {
        match self {
            Handled::Done(id) | Handled::Held(id) => id,
        }
    }
}

/// What the child reported so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Consuming.
    pub ready: bool,
    /// Ids it finished.
    pub done: BTreeSet<u64>,
    /// Ids it holds and never finishes.
    pub held: BTreeSet<u64>,
}

/// The running child; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct DoomedChild {
    child: Child,
    /// Kept open: the child leaves when it closes (the test died without killing it).
    stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
}

impl DoomedChild {
    /// Runs the test `entry` of this test binary as the child, with `env` in its environment
    /// (for orders beyond [`Orders`]); `on_handled` is called with every item the child reports.
    pub fn spawn<K, V>(
        entry: &str,
        env: impl IntoIterator<Item = (K, V)>,
        on_handled: impl Fn(Handled) + Send + 'static,
    ) -> Self
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([
                entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the doomed consumer");
        let stderr = child.stderr.take().expect("the child's stderr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Some((_, report)) = line.split_once(MARK) else {
                    // The child's panics and the like: pass them on.
                    eprintln!("[doomed consumer] {line}");
                    continue;
                };
                let mut words = report.split_whitespace();
                let (what, id) = (words.next(), words.next().and_then(|w| w.parse().ok()));
                let mut seen = record.lock().expect("lock");
                match (what, id) {
                    (Some("ready"), _) => seen.ready = true,
                    (Some("done"), Some(id)) => {
                        seen.done.insert(id);
                        on_handled(Handled::Done(id));
                    }
                    (Some("held"), Some(id)) => {
                        seen.held.insert(id);
                        on_handled(Handled::Held(id));
                    }
                    _ => eprintln!("[doomed consumer] unexpected report: {line}"),
                }
            }
        });
        DoomedChild {
            stdin: child.stdin.take(),
            child,
            seen,
            reader: Some(reader),
        }
    }

    /// What the child reported so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }

    /// Kills the child with SIGKILL, waits for it, asserts it died of that signal (on Unix), and
    /// returns everything it reported.
    pub fn kill(mut self) -> Seen {
        let status = self.stop();
        assert_killed(status);
        self.seen()
    }

    fn stop(&mut self) -> ExitStatus {
        // `Child::kill` is SIGKILL on Unix.
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the doomed consumer");
        self.stdin = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for DoomedChild {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.stop();
        }
    }
}

/// Asserts the child died of SIGKILL (on Unix; elsewhere there is nothing to check).
fn assert_killed(status: ExitStatus) {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the doomed consumer died of SIGKILL: {status}"
        );
    }
    #[cfg(not(unix))]
    let _ = status;
}

/// Child side: reports that it is consuming.
pub fn report_ready() {
    eprintln!("{MARK} ready");
}

/// Child side: reports that it finished `id` (a line without an id when there is none).
pub fn report_done(id: Option<u64>) {
    report("done", id);
}

/// Child side: reports that it holds `id` and will never finish it.
pub fn report_held(id: Option<u64>) {
    report("held", id);
}

fn report(what: &str, id: Option<u64>) {
    match id {
        Some(id) => eprintln!("{MARK} {what} {id}"),
        None => eprintln!("{MARK} {what}"),
    }
}
