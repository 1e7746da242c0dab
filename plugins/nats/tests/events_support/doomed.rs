//! A group member in a child process, killed with SIGKILL: no goodbye to the server, no last
//! acknowledgements, its TCP connection torn down by the kernel — a consumer dying for real,
//! with events in hand.
//!
//! The parent runs its own test binary again (`<entry> --exact --ignored --nocapture`) with the
//! orders in the environment; the entry test calls [`child_main`], which does nothing when those
//! variables are not set. The child reports on stderr, one line per event: `ready` once
//! consuming, `done <id>` for each of the first `handle_first` events (handled, and its ack
//! confirmed by the server), and `held <id>` for every later one: handled, never acknowledged,
//! as if the process died between the two.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use micro_core::Events;
use micro_core::events::{ConsumeOptions, Offset};
use micro_nats::NatsEvents;

const ADDRESS: &str = "MICRO_TEST_DOOMED_ADDRESS";
const TOPIC: &str = "MICRO_TEST_DOOMED_TOPIC";
const GROUP: &str = "MICRO_TEST_DOOMED_GROUP";
const ACK_WAIT_MS: &str = "MICRO_TEST_DOOMED_ACK_WAIT_MS";
const PREFETCH: &str = "MICRO_TEST_DOOMED_PREFETCH";
const HANDLE_FIRST: &str = "MICRO_TEST_DOOMED_HANDLE_FIRST";
/// Starts every report line, so libtest's own output cannot be mistaken for one.
const MARK: &str = "doomed-consumer:";

/// What the child consumer does.
#[derive(Clone, Debug)]
pub struct Orders {
    /// The NATS URL.
    pub address: String,
    /// The topic it consumes.
    pub topic: String,
    /// The group it joins.
    pub group: String,
    /// The group's ack wait.
    pub ack_wait: Duration,
    /// Its prefetch.
    pub prefetch: usize,
    /// How many events it handles and acknowledges before it starts holding them.
    pub handle_first: usize,
}

/// What the child reported so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Consuming.
    pub ready: bool,
    /// Ids it handled and acknowledged (the server confirmed the ack).
    pub done: BTreeSet<u64>,
    /// Ids it handled and never acknowledged.
    pub held: BTreeSet<u64>,
}

/// The running child; killed (SIGKILL) when dropped.
pub struct DoomedConsumer {
    child: Child,
    /// Kept open: the child leaves when it closes (the test died without killing it).
    stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
}

impl DoomedConsumer {
    /// Runs the test `entry` of this test binary as the child, with `orders`; `on_handled` is
    /// called with every id the child reports handled (done or held).
    pub fn spawn(entry: &str, orders: &Orders, on_handled: impl Fn(u64) + Send + 'static) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([
                entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ADDRESS, &orders.address)
            .env(TOPIC, &orders.topic)
            .env(GROUP, &orders.group)
            .env(ACK_WAIT_MS, orders.ack_wait.as_millis().to_string())
            .env(PREFETCH, orders.prefetch.to_string())
            .env(HANDLE_FIRST, orders.handle_first.to_string())
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
                        on_handled(id);
                    }
                    (Some("held"), Some(id)) => {
                        seen.held.insert(id);
                        on_handled(id);
                    }
                    _ => eprintln!("[doomed consumer] unexpected report: {line}"),
                }
            }
        });
        DoomedConsumer {
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

    /// Kills the child with SIGKILL, waits for it, and returns everything it reported.
    pub fn kill(mut self) -> (Seen, ExitStatus) {
        let status = self.stop();
        (self.seen(), status)
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

impl Drop for DoomedConsumer {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.stop();
        }
    }
}

fn report(what: &str, id: Option<u64>) {
    match id {
        Some(id) => eprintln!("{MARK} {what} {id}"),
        None => eprintln!("{MARK} {what}"),
    }
}

fn order(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
}

/// The child's side: joins the group, handles and acknowledges `handle_first` events, then
/// handles every later one without acknowledging it, until it is killed. Returns at once unless
/// run by [`DoomedConsumer::spawn`].
pub async fn child_main() {
    if std::env::var_os(ADDRESS).is_none() {
        return;
    }
    // The parent went away without killing us: leave rather than hold events forever.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(3);
    });
    let prefetch: usize = order(PREFETCH).parse().expect("a prefetch");
    let handle_first: usize = order(HANDLE_FIRST).parse().expect("a count");
    let ack_wait = Duration::from_millis(order(ACK_WAIT_MS).parse().expect("milliseconds"));
    let events = NatsEvents::connect(&order(ADDRESS))
        .await
        .expect("the doomed consumer connects")
        .with_prefetch(prefetch);
    let options = ConsumeOptions::group(order(GROUP))
        .with_offset(Offset::Earliest)
        .with_ack_wait(ack_wait);
    let mut stream = events
        .consume(&order(TOPIC), options)
        .await
        .expect("the doomed consumer consumes");
    report("ready", None);
    let mut handled = 0;
    let mut held = Vec::new();
    while let Some(delivery) = stream.next().await {
        let Ok(delivery) = delivery else { continue };
        let id = super::id_of(&delivery.event.payload);
        if handled < handle_first {
            delivery.ack().await.expect("the doomed consumer acks");
            report("done", id);
        } else {
            report("held", id);
            held.push(delivery); // never acknowledged
        }
        handled += 1;
    }
}
