//! `micro new`: the project it creates builds offline, passes its own test, is rustfmt-clean,
//! and runs: registered with a gateway's embedded registry, `micro call` reaches it. A bad name,
//! a non-empty directory and a path that is no checkout are usage errors (exit 2).
//!
//! The nested `cargo build` shares this workspace's target directory (`cargo test` holds no lock
//! on it while test binaries run) and its `[profile.*]` settings (passed with `--config`), so the
//! project reuses the dependencies the workspace already built instead of compiling them all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use micro_testkit::{
    GatewayProcess, PROPAGATION, Process, SHORT_TTL_ARGS, SLACK, binary, get, wait_until,
};

/// A directory removed (with what is in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temp directory, named after `label` and this
    /// process.
    fn new(label: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("micro-cli-new-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// `path` itself, emptied first: a fixed place, so repeated runs rebuild one project
    /// instead of leaving a copy per run in the shared target directory.
    fn fixed(path: PathBuf) -> TempDir {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create project parent dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the `micro` binary with `args` in `dir`, without the caller's `MICRO_*` variables.
fn micro(args: &[&str], dir: &Path) -> Output {
    let mut command = Command::new(binary("micro"));
    command.args(args).current_dir(dir);
    without_micro_env(&mut command);
    command.output().expect("run micro")
}

fn without_micro_env(command: &mut Command) {
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MICRO_")) {
        command.env_remove(key);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// This workspace's root (the parent of `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `[profile.*]` tables of the workspace's Cargo.toml, as a cargo config file in `dir`: the
/// project builds its dependencies as the workspace did, so the builds are shared.
fn workspace_profiles(dir: &Path) -> PathBuf {
    let manifest =
        std::fs::read_to_string(workspace().join("Cargo.toml")).expect("workspace Cargo.toml");
    let mut keep = false;
    let mut profiles = String::new();
    for line in manifest.lines() {
        if line.trim_start().starts_with('[') {
            keep = line.trim_start().starts_with("[profile");
        }
        if keep {
            profiles.push_str(line);
            profiles.push('\n');
        }
    }
    let path = dir.join("workspace-profiles.toml");
    std::fs::write(&path, profiles).expect("write profiles");
    path
}

/// Runs `cargo <args>` in `project` with the shared target directory, asserting success.
fn cargo(project: &Path, target: &Path, profiles: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(args)
        .arg("--offline")
        .arg("--config")
        .arg(profiles)
        .current_dir(project)
        .env("CARGO_TARGET_DIR", target);
    without_micro_env(&mut command);
    let started = Instant::now();
    let output = command.output().expect("run cargo");
    eprintln!("cargo {} took {:.1?}", args.join(" "), started.elapsed());
    assert!(
        output.status.success(),
        "cargo {args:?} in {} failed: {}\n{}",
        project.display(),
        output.status,
        text(&output.stderr)
    );
    output
}

#[test]
fn a_new_project_builds_passes_its_test_and_answers_micro_call() {
    // Under the target directory, inside this workspace: the project's own `[workspace]`
    // keeps it out of ours.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let target = tmp.parent().expect("target dir").to_path_buf();
    let parent = TempDir::fixed(tmp.join("cli-new"));
    let project = parent.0.join("demo");
    let project_arg = project.to_str().expect("UTF-8 path");

    let created = micro(&["new", "demo", "--dir", project_arg], &parent.0);
    let stdout = text(&created.stdout);
    assert!(
        created.status.success(),
        "micro new failed: {}",
        text(&created.stderr)
    );
    assert!(
        stdout.contains(&format!("cd {project_arg} && cargo run")),
        "{stdout}"
    );
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto/demo/v1/demo.proto",
        "src/lib.rs",
        "src/main.rs",
        "tests/call.rs",
        "README.md",
        ".gitignore",
    ] {
        assert!(project.join(file).is_file(), "{file} missing");
        assert!(stdout.contains(file), "{file} not listed in {stdout}");
    }

    let rustfmt = Command::new("rustfmt")
        .args(["--check", "--edition", "2024"])
        .args(["build.rs", "src/lib.rs", "src/main.rs", "tests/call.rs"])
        .current_dir(&project)
        .output()
        .expect("run rustfmt");
    assert!(
        rustfmt.status.success(),
        "generated code is not rustfmt-clean:\n{}",
        text(&rustfmt.stdout)
    );

    let profiles = workspace_profiles(&parent.0);
    cargo(&project, &target, &profiles, &["build"]);
    let tested = cargo(&project, &target, &profiles, &["test"]);
    let report = text(&tested.stdout);
    assert!(
        report.contains("test call_says_hello_and_refuses_an_empty_name ... ok"),
        "{report}"
    );

    let gateway = GatewayProcess::start(&[]);
    let registry = gateway.registry.to_string();
    let mut args = vec!["--registry", "remote", "--registry-address", &registry];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    // The nested build put `demo` beside the workspace's binaries.
    let mut demo = Process::start("demo", &args, &[], None);
    let address = demo.listening_address();
    demo.line_containing("demo: listening on ", SLACK);
    wait_until(PROPAGATION, "demo registered with the gateway", || {
        get(gateway.http, "/demo").status == 200
    });

    let call = |request: &str| {
        micro(
            &[
                "call",
                "--registry-address",
                &registry,
                "demo",
                "Demo.Call",
                request,
            ],
            &parent.0,
        )
    };
    let hello = call(r#"{"name":"x"}"#);
    assert!(
        hello.status.success(),
        "micro call failed ({}): {}",
        hello.status,
        text(&hello.stderr)
    );
    assert!(
        text(&hello.stdout).contains("Hello x"),
        "{}",
        text(&hello.stdout)
    );
    let empty = call(r#"{"name":""}"#);
    assert_eq!(empty.status.code(), Some(1), "{}", text(&empty.stderr));
    assert!(
        text(&empty.stderr).contains("INVALID_ARGUMENT: name is empty"),
        "{}",
        text(&empty.stderr)
    );

    demo.terminate();
    assert!(
        demo.wait(SLACK).success(),
        "demo at {address}: {}",
        demo.stderr()
    );
}

#[test]
fn a_bad_name_is_a_usage_error_stating_the_rule() {
    let dir = TempDir::new("bad-name");
    let output = micro(&["new", "Bad_Name"], &dir.0);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("micro: "), "{stderr}");
    assert!(stderr.contains("`Bad_Name`"), "{stderr}");
    assert!(stderr.contains("^[a-z][a-z0-9-]{0,62}$"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&dir.0).expect("read dir").count(),
        0,
        "nothing created"
    );
}

#[test]
fn an_existing_non_empty_directory_is_a_usage_error() {
    let dir = TempDir::new("non-empty");
    std::fs::write(dir.0.join("keep.txt"), "mine").expect("write");
    let dir_arg = dir.0.to_str().expect("UTF-8 path");
    let output = micro(&["new", "demo", "--dir", dir_arg], &dir.0);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(!dir.0.join("Cargo.toml").exists(), "nothing written");
    assert_eq!(
        std::fs::read_to_string(dir.0.join("keep.txt")).expect("read"),
        "mine"
    );
}

#[test]
fn a_micro_path_that_is_no_checkout_is_a_usage_error() {
    let dir = TempDir::new("no-checkout");
    let dir_arg = dir.0.to_str().expect("UTF-8 path");
    let project = dir.0.join("demo");
    let output = micro(
        &[
            "new",
            "demo",
            "--micro-path",
            dir_arg,
            "--dir",
            project.to_str().expect("UTF-8 path"),
        ],
        &dir.0,
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--micro-path"), "{stderr}");
    assert!(stderr.contains("core/Cargo.toml"), "{stderr}");
    assert!(!project.exists(), "nothing created");
}
