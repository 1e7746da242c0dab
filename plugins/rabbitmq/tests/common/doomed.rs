//! A queue-group member in a child process, killed with SIGKILL: no AMQP `connection.close`, no
//! last acknowledgements, the TCP connection torn down by the kernel — a consumer dying for real,
//! with the messages its handler holds unacknowledged.
//!
//! The parent runs its own test binary again (`<entry> --exact --ignored --nocapture`) with the
//! orders in the environment; the entry test calls [`child_main`], which does nothing when those
//! variables are not set. The child reports on stderr, one line per event: `ready` once
//! subscribed, `done <id>` for each of the first `handle_first` messages (handled, `Ok`), and
//! `held <id>` for every later one, whose handler then never returns.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use micro_core::Broker;
use micro_core::broker::{Message, SubscribeOptions, handler};
use micro_rabbitmq::{RabbitBroker, RabbitOptions};

const ADDRESS: &str = "MICRO_TEST_DOOMED_ADDRESS";
const TOPIC: &str = "MICRO_TEST_DOOMED_TOPIC";
const QUEUE: &str = "MICRO_TEST_DOOMED_QUEUE";
const PREFETCH: &str = "MICRO_TEST_DOOMED_PREFETCH";
const HANDLE_FIRST: &str = "MICRO_TEST_DOOMED_HANDLE_FIRST";
/// Starts every report line, so libtest's own output cannot be mistaken for one.
const MARK: &str = "doomed-consumer:";

/// What the child consumer does.
#[derive(Clone, Debug)]
pub struct Orders {
    /// The RabbitMQ URL.
    pub address: String,
    /// The topic it subscribes to.
    pub topic: String,
    /// The queue group it joins.
    pub queue: String,
    /// Its prefetch: how many messages it ends up holding.
    pub prefetch: u16,
    /// How many messages it handles before it starts holding them.
    pub handle_first: usize,
}

/// What the child reported so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Subscribed.
    pub ready: bool,
    /// Ids it handled (its handler returned `Ok`).
    pub done: BTreeSet<u64>,
    /// Ids its handler holds and never finishes.
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
    /// Runs the test `entry` of this test binary as the child, with `orders`; `on_done` is called
    /// with every id the child reports handled.
    pub fn spawn(entry: &str, orders: &Orders, on_done: impl Fn(u64) + Send + 'static) -> Self {
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
            .env(QUEUE, &orders.queue)
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
                        on_done(id);
                    }
                    (Some("held"), Some(id)) => {
                        seen.held.insert(id);
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

/// The child's side: joins the queue group, handles `handle_first` messages, then holds every
/// message it gets until it is killed. Returns at once unless run by [`DoomedConsumer::spawn`].
pub async fn child_main() {
    if std::env::var_os(ADDRESS).is_none() {
        return;
    }
    // The parent went away without killing us: leave rather than hold messages forever.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(3);
    });
    let prefetch: u16 = order(PREFETCH).parse().expect("a prefetch");
    let handle_first: usize = order(HANDLE_FIRST).parse().expect("a count");
    let broker = RabbitBroker::connect(RabbitOptions::new(order(ADDRESS)).with_prefetch(prefetch))
        .await
        .expect("the doomed consumer connects");
    let started = Arc::new(AtomicUsize::new(0));
    let hold = handler(move |message: Message| {
        // Reported in delivery order, as the handler is called.
        let id = super::id_of(&message.body);
        let hold = started.fetch_add(1, Ordering::SeqCst) >= handle_first;
        report(if hold { "held" } else { "done" }, id);
        async move {
            id.ok_or("a message without an id")?;
            if hold {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
    });
    let _subscription = broker
        .subscribe(&order(TOPIC), hold, SubscribeOptions::queue(order(QUEUE)))
        .await
        .expect("the doomed consumer subscribes");
    report("ready", None);
    std::future::pending::<()>().await;
}
