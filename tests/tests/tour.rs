//! The README's tour, run as a new user would run it: every step's shell commands, in a shell of
//! their own with ports of their own, checking every output the README shows.
//!
//! What the README keeps to, so that this test can read it (and a person too):
//! - a line `$ command` followed by output lines: the command prints exactly those lines;
//! - a command line whose comment ends `→ output`: the command prints `output`;
//! - a command ending in `&` starts a process that runs until the end of its step;
//! - any other command exits 0.
//!
//! A command is retried for up to [`PATIENCE`] until it does what the README says, as a person
//! waits for the processes they just started. The steps' processes get fresh ports through the
//! environment (`MICRO_GATEWAY_ADDRESS`, ...), and `localhost:8080` in a command becomes the
//! step's HTTP address. `cargo run -q -p micro-examples --bin X` runs the built `X` directly:
//! cargo holds the build lock while the tests run (the README's test command builds every binary
//! before testing).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one command may take to do what the README says.
const PATIENCE: Duration = Duration::from_secs(30);

/// The etcd key step 6 sets; cleared before and after, so the greeting starts as "Hello".
const GREETING_KEY: &str = "/micro/config/greeter/greeting";

#[test]
fn the_readme_tour_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let steps = tour_steps(&readme);
    assert!(
        steps.len() >= 6,
        "the README's tour has {} steps with shell commands; expected its numbered steps",
        steps.len()
    );
    etcdctl(&["del", GREETING_KEY]);
    let mut failures = Vec::new();
    for step in &steps {
        if let Err(report) = run_step(&root, step) {
            failures.push(format!("step {}:\n{report}", step.title));
        }
    }
    etcdctl(&["del", GREETING_KEY]);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One numbered step of the tour: its title and its shell commands.
struct Step {
    title: String,
    commands: Vec<ShellCommand>,
}

/// A command as the README writes it.
#[derive(Debug, PartialEq)]
struct ShellCommand {
    text: String,
    background: bool,
    expected: Option<String>,
}

/// The numbered steps of "## A 5-minute tour" that have ```sh blocks.
fn tour_steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("## A 5-minute tour")
        .expect("the README has a '## A 5-minute tour' section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut steps: Vec<Step> = Vec::new();
    let mut in_sh = false;
    let mut block = Vec::new();
    for line in section[..end].lines() {
        if !in_sh && line.starts_with("**") && line[2..].starts_with(|c: char| c.is_ascii_digit()) {
            let title = line[2..].split("**").next().unwrap_or_default().to_string();
            steps.push(Step {
                title,
                commands: Vec::new(),
            });
        } else if line.trim() == "```sh" {
            in_sh = true;
        } else if in_sh && line.trim() == "```" {
            in_sh = false;
            if let Some(step) = steps.last_mut() {
                step.commands.extend(parse_block(&block));
            }
            block.clear();
        } else if in_sh {
            block.push(line.to_string());
        }
    }
    steps.retain(|s| !s.commands.is_empty());
    steps
}

/// The commands of one ```sh block: `\` continuations joined, `$ command` outputs collected.
fn parse_block(lines: &[String]) -> Vec<ShellCommand> {
    let mut joined: Vec<String> = Vec::new();
    let mut continued = false;
    for line in lines {
        match joined.last_mut() {
            Some(last) if continued => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => joined.push(line.clone()),
        }
        continued = line.trim_end().ends_with('\\');
        if continued && let Some(last) = joined.last_mut() {
            let trimmed = last
                .trim_end()
                .trim_end_matches('\\')
                .trim_end()
                .to_string();
            *last = trimmed;
        }
    }
    let mut commands: Vec<ShellCommand> = Vec::new();
    let mut prompted = false;
    for line in joined {
        if line.trim().is_empty() {
            prompted = false;
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            commands.push(command_of(command));
            prompted = true;
        } else if prompted {
            // An output line of the `$ command` above.
            if let Some(last) = commands.last_mut() {
                let expected = last.expected.get_or_insert_with(String::new);
                if !expected.is_empty() {
                    expected.push('\n');
                }
                expected.push_str(&line);
            }
        } else if !line.trim_start().starts_with('#') {
            commands.push(command_of(&line));
        }
    }
    commands
}

/// A command line: the command, whether it runs in the background, and the output its comment
/// promises (`# ... → output`).
fn command_of(line: &str) -> ShellCommand {
    let (code, comment) = split_comment(line);
    let code = code.trim();
    let (text, background) = match code.strip_suffix('&') {
        Some(rest) if !rest.ends_with('&') => (rest.trim().to_string(), true),
        _ => (code.to_string(), false),
    };
    let expected = comment
        .and_then(|c| c.split_once('→'))
        .map(|(_, output)| output.trim().to_string());
    ShellCommand {
        text,
        background,
        expected,
    }
}

/// Splits a shell line at its comment: a `#` after whitespace, outside quotes.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => {
                return (&line[..i], Some(&line[i + 1..]));
            }
            _ => {}
        }
        previous = c;
    }
    (line, None)
}

/// Runs one step's commands in one bash process (so `export` and variables carry over), its
/// background processes in the same process group, all stopped when the step ends.
fn run_step(root: &Path, step: &Step) -> Result<(), String> {
    let http = free_port();
    let registry = free_port();
    let binaries = binaries_dir();
    let log = std::env::temp_dir().join(format!(
        "micro-tour-{}-{http}.log",
        step.title.split('.').next().unwrap_or("step")
    ));
    let _ = std::fs::remove_file(&log);
    let mut script = format!(
        "set -o pipefail\nLOG={}\ntries={}\n{}\n",
        quote(&log.display().to_string()),
        PATIENCE.as_millis() / 100,
        SHELL_HELPERS
    );
    for command in &step.commands {
        let text = command
            .text
            .replace("localhost:8080", &format!("127.0.0.1:{http}"))
            .replace("target/debug/", &format!("{}/", binaries.display()));
        let text = match text.strip_prefix("cargo run -q -p micro-examples --bin ") {
            Some(rest) => format!("{}/{rest}", binaries.display()),
            None => text,
        };
        let line = if command.background {
            format!("eval {} >>\"$LOG\" 2>&1 &", quote(&text))
        } else if let Some(expected) = &command.expected {
            format!("expect_output {} {}", quote(expected), quote(&text))
        } else {
            format!("succeed {}", quote(&text))
        };
        script.push_str(&line);
        script.push('\n');
    }
    let uses_remote = !step
        .commands
        .iter()
        .any(|c| c.text.contains("--registry") || c.text.contains("MICRO_REGISTRY="));
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(&script)
        .current_dir(root)
        .env("MICRO_GATEWAY_ADDRESS", format!("127.0.0.1:{http}"))
        .env(
            "MICRO_GATEWAY_REGISTRY_LISTEN",
            format!("127.0.0.1:{registry}"),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).expect("step output file"),
        ))
        .stderr(Stdio::inherit());
    if uses_remote {
        // The services' `remote` registry is the step's gateway, not one on the default port.
        bash.env("MICRO_REGISTRY_ADDRESS", format!("127.0.0.1:{registry}"));
    }
    std::os::unix::process::CommandExt::process_group(&mut bash, 0);
    let mut child = bash.spawn().expect("bash");
    let status = child.wait().expect("wait for bash");
    stop_group(child.id());
    let out = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let processes = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = processes.lines().rev().take(30).collect();
    Err(format!(
        "{out}\n--- the step's processes said (last lines of {}):\n{}",
        log.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// `expect_output WANT COMMAND`: retries COMMAND until it prints WANT; `succeed COMMAND`:
/// retries it until it exits 0. Both try `$tries` times, 0.1 s apart.
const SHELL_HELPERS: &str = r#"
expect_output() {
    local got i
    for i in $(seq 1 $tries); do
        got=$(eval "$2" 2>>"$LOG") && [ "$got" = "$1" ] && { printf 'ok: %s\n' "$2"; return 0; }
        sleep 0.1
    done
    printf 'FAILED: %s\n  the README shows: %s\n  it printed:       %s\n' "$2" "$1" "$got"
    exit 1
}
succeed() {
    local i status
    for i in $(seq 1 $tries); do
        eval "$1" >>"$LOG" 2>&1 && { printf 'ok: %s\n' "$1"; return 0; }
        status=$?
        sleep 0.1
    done
    printf 'FAILED (exit status %s): %s\n' "$status" "$1"
    exit 1
}
"#;

/// SIGTERM to the step's process group (services deregister), then SIGKILL to what is left.
fn stop_group(pid: u32) {
    let group = format!("-{pid}");
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .stderr(Stdio::null())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let alive = Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
}

/// Where this build's binaries are (`target/debug`, or wherever the target directory is).
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn etcdctl(args: &[&str]) {
    let _ = Command::new("etcdctl")
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Single-quotes `text` for bash.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[test]
fn reads_the_readme_conventions() {
    let block: Vec<String> = [
        "$ cargo run -q -p micro-examples --bin quickstart",
        "Hello Alice",
        "",
        "target/debug/micro-gateway &                # HTTP on :8080",
        "curl -s 'localhost:8080/a?b=1' -d '{\"x\":\"#1\"}'   # GET → {\"message\":\"Hi\"}",
        "export A=1 \\",
        "       B=2",
        "# a comment line",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        parse_block(&block),
        vec![
            ShellCommand {
                text: "cargo run -q -p micro-examples --bin quickstart".into(),
                background: false,
                expected: Some("Hello Alice".into()),
            },
            ShellCommand {
                text: "target/debug/micro-gateway".into(),
                background: true,
                expected: None,
            },
            ShellCommand {
                text: "curl -s 'localhost:8080/a?b=1' -d '{\"x\":\"#1\"}'".into(),
                background: false,
                expected: Some("{\"message\":\"Hi\"}".into()),
            },
            ShellCommand {
                text: "export A=1 B=2".into(),
                background: false,
                expected: None,
            },
        ]
    );
}
