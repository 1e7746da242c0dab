//! Helpers for micro's end-to-end tests: greeter servers in process, binaries as child
//! processes, and waiting on conditions with deadlines (never fixed sleeps).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use micro_core::server::RunningServer;
use micro_core::{Options, Registry, Server};
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::{Greeter, greeter};

/// Options for an in-process test server: port 0, short TTL.
pub fn test_options(name: &str) -> Options {
    Options::new(name)
        .set("register-ttl", "2s")
        .set("register-interval", "500ms")
        .set("shutdown-timeout", "5s")
        .load_from(["test"])
        .expect("test options")
}

/// Starts a greeter replying `"<greeting> <name>"`, registered in `registry`.
pub async fn start_greeter(registry: Arc<dyn Registry>, greeting: &str) -> RunningServer {
    Server::new(test_options("greeter"), registry)
        .descriptors(greeter::DESCRIPTORS)
        .expect("descriptors")
        .add_service(GreeterServer::new(Greeter {
            greeting: greeting.into(),
            ..Greeter::default()
        }))
        .start()
        .await
        .expect("start greeter")
}

/// Polls `check` every 25 ms until true; panics naming `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not true within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The path of a workspace binary built next to this test executable.
///
/// `cargo test`/`nextest` build the binaries of the packages under test; the README's test
/// command builds every binary first, so this only fails when run some other way.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A child process, killed when dropped, whose stdout lines can be awaited.
pub struct Process {
    /// The child.
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
}

impl Process {
    /// Starts binary `name` with `args` and extra environment `env` (the parent's `MICRO_*`
    /// variables are removed so tests are not steered by the caller's environment).
    pub fn start(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: Option<&std::path::Path>,
    ) -> Process {
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MICRO_")) {
            command.env_remove(key);
        }
        command.envs(env.iter().copied());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stdout line containing `needle`, waiting up to `deadline`.
    pub fn line_containing(&mut self, needle: &str, deadline: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let until = std::time::Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stdout line containing `{needle}` within {deadline:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        signal(self.child.id(), "KILL");
    }

    /// Waits for the exit status, up to `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "process did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
