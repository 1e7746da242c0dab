//! `micro new NAME`: a new service project that builds, runs and passes its test as generated.
//!
//! The project is a crate of its own (an empty `[workspace]`, so it never joins a parent
//! workspace): a proto compiled by `build.rs` with protox, the generated code and a handler in
//! `src/lib.rs`, the server in `src/main.rs`, an in-process test in `tests/call.rs`. The
//! templates are `cli/templates/*.tmpl`, embedded in the binary.
//!
//! It depends on this framework's crates by path (`--micro-path`, by default the checkout this
//! binary was built from, whose `Cargo.lock` it copies so versions match and an offline build
//! works) or from the registry (`--micro-version`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::CliError;

/// `micro new` arguments.
#[derive(clap::Args)]
pub(crate) struct NewArgs {
    /// The service name: a lower-case letter, then up to 62 lower-case letters, digits and `-`
    name: String,
    /// Where to create the project: a directory that does not exist or is empty [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Depend on micro's crates by path, in this checkout [default: the checkout `micro` was built from]
    #[arg(long, value_name = "PATH", conflicts_with = "micro_version")]
    micro_path: Option<PathBuf>,
    /// Depend on micro's crates from crates.io at this version requirement (`0.1`)
    #[arg(long, value_name = "VERSION")]
    micro_version: Option<String>,
}

/// The rule a service name follows, as the usage error states it.
const NAME_RULE: &str = "a service name is a lower-case letter followed by up to 62 lower-case \
                         letters, digits and `-` (^[a-z][a-z0-9-]{0,62}$)";

/// The framework's crates the project depends on: package name and directory in a checkout.
const MICRO_CRATES: [(&str, &str); 4] = [
    ("micro-core", "core"),
    ("micro-memory", "plugins/memory"),
    ("micro-remote", "plugins/remote"),
    ("micro-etcd", "plugins/etcd"),
];

/// Crates the project depends on; a project of the same name would collide with one of them.
const DEPENDENCIES: &[&str] = &[
    "micro-core",
    "micro-memory",
    "micro-remote",
    "micro-etcd",
    "prost",
    "tokio",
    "tonic",
    "tonic-prost",
    "protox",
    "tonic-prost-build",
];

/// Names cargo refuses or that break `use NAME::…`: Rust keywords (2024 edition, reserved ones
/// included), the standard library's crates and the target directory's own folders.
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "build",
    "const",
    "continue",
    "core",
    "crate",
    "deps",
    "do",
    "dyn",
    "else",
    "enum",
    "examples",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "incremental",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

const CARGO_TOML: &str = include_str!("../templates/Cargo.toml.tmpl");
const PROTO: &str = include_str!("../templates/service.proto.tmpl");
const BUILD_RS: &str = include_str!("../templates/build.rs.tmpl");
const LIB_RS: &str = include_str!("../templates/lib.rs.tmpl");
const MAIN_RS: &str = include_str!("../templates/main.rs.tmpl");
const CALL_RS: &str = include_str!("../templates/call.rs.tmpl");
const README: &str = include_str!("../templates/README.md.tmpl");
const GITIGNORE: &str = include_str!("../templates/gitignore.tmpl");

/// Where the project's micro crates come from.
#[derive(Debug, PartialEq)]
enum Source {
    /// A checkout of this repository (absolute, canonical).
    Path(PathBuf),
    /// crates.io, at this version requirement.
    Version(String),
}

/// The names one service name gives: crate and proto package (`my_svc`), service (`MySvc`).
#[derive(Debug)]
struct Names<'a> {
    name: &'a str,
    snake: String,
    pascal: String,
}

impl<'a> Names<'a> {
    fn new(name: &'a str) -> Result<Self, CliError> {
        validate_name(name)?;
        Ok(Names {
            name,
            snake: name.replace('-', "_"),
            pascal: pascal_case(name),
        })
    }
}

pub(crate) fn run(args: &NewArgs) -> Result<(), CliError> {
    let names = Names::new(&args.name)?;
    let source = source(args)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    check_empty(&dir)?;

    let mut files = project_files(&names, &source);
    if let Source::Path(checkout) = &source {
        let lock = checkout.join("Cargo.lock");
        if lock.is_file() {
            let text = std::fs::read_to_string(&lock)
                .map_err(|e| CliError::Failed(format!("read {}: {e}", lock.display())))?;
            files.insert(1, ("Cargo.lock".to_string(), text));
        }
    }
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CliError::Failed(format!("create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| CliError::Failed(format!("write {}: {e}", path.display())))?;
    }
    format_rust(&dir, &files);

    let mut out = format!("Created service `{}` in {}:\n", names.name, dir.display());
    for (path, _) in &files {
        let _ = writeln!(out, "  {path}");
    }
    let _ = write!(
        out,
        "\nNext steps:\n  cd {} && cargo run   # registers with micro-gateway's registry on 127.0.0.1:8000\n  \
         cargo test\n  micro call {} {}.Call '{{\"name\":\"Alice\"}}'\n",
        shell_quote(&dir.display().to_string()),
        names.name,
        names.pascal
    );
    print!("{out}");
    Ok(())
}

/// Runs rustfmt over the Rust files, if it is installed: the templates are formatted for names
/// of usual length, and a long name can push a line past rustfmt's width. Best effort: the
/// project builds the same either way.
fn format_rust(dir: &Path, files: &[(String, String)]) {
    let rust = files
        .iter()
        .filter(|(path, _)| path.ends_with(".rs"))
        .map(|(path, _)| dir.join(path));
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .args(rust)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Checks `name` against [`NAME_RULE`], and against the names cargo or Rust refuse.
fn validate_name(name: &str) -> Result<(), CliError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63;
    if !valid {
        return Err(CliError::Usage(format!(
            "invalid service name `{name}`: {NAME_RULE}"
        )));
    }
    let snake = name.replace('-', "_");
    if RESERVED.contains(&snake.as_str()) {
        return Err(CliError::Usage(format!(
            "invalid service name `{name}`: `{snake}` is a Rust keyword or a name cargo reserves"
        )));
    }
    if DEPENDENCIES.iter().any(|d| d.replace('-', "_") == snake) {
        return Err(CliError::Usage(format!(
            "invalid service name `{name}`: the project depends on a crate of that name"
        )));
    }
    let pascal = pascal_case(name);
    if pascal == "CallRequest" || pascal == "CallResponse" {
        return Err(CliError::Usage(format!(
            "invalid service name `{name}`: service `{pascal}` would clash with the message of that name"
        )));
    }
    Ok(())
}

/// `my-svc2` → `MySvc2`: each `-`-separated part capitalized, the dashes dropped.
fn pascal_case(name: &str) -> String {
    name.split('-')
        .flat_map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
        })
        .collect()
}

/// Where the micro crates come from: the flags, else the checkout this binary was built from.
fn source(args: &NewArgs) -> Result<Source, CliError> {
    if let Some(version) = &args.micro_version {
        let ok = !version.trim().is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " .,*^~=<>+-".contains(c));
        if !ok {
            return Err(CliError::Usage(format!(
                "--micro-version `{version}` is not a version requirement like 0.1 or =0.1.2"
            )));
        }
        return Ok(Source::Version(version.trim().to_string()));
    }
    if let Some(path) = &args.micro_path {
        let checkout = path
            .canonicalize()
            .map_err(|e| CliError::Usage(format!("--micro-path {}: {e}", path.display())))?;
        return checkout_source(checkout, &format!("--micro-path {}", path.display()));
    }
    let built_from = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    match built_from.canonicalize() {
        Ok(checkout) if checkout.join("core/Cargo.toml").is_file() => {
            checkout_source(checkout, "the checkout micro was built from")
        }
        _ => Err(CliError::Usage(format!(
            "micro was built from {}, which is no longer a micro checkout: pass --micro-path PATH \
             (a checkout of micro) or --micro-version VERSION (its crates from crates.io)",
            built_from.display()
        ))),
    }
}

/// A checkout as the source, if it holds every crate the project depends on.
fn checkout_source(checkout: PathBuf, what: &str) -> Result<Source, CliError> {
    if let Some((_, dir)) = MICRO_CRATES
        .iter()
        .find(|(_, dir)| !checkout.join(dir).join("Cargo.toml").is_file())
    {
        return Err(CliError::Usage(format!(
            "{what} is not a checkout of micro: {} has no {dir}/Cargo.toml",
            checkout.display()
        )));
    }
    if checkout.to_str().is_none() {
        return Err(CliError::Usage(format!(
            "{what}: {} is not UTF-8, which Cargo.toml cannot hold",
            checkout.display()
        )));
    }
    Ok(Source::Path(checkout))
}

/// Refuses a `dir` that exists and is not an empty directory.
fn check_empty(dir: &Path) -> Result<(), CliError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(CliError::Usage(format!(
                    "{} exists and is not empty: pick another --dir or remove it",
                    dir.display()
                )))
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => Err(CliError::Usage(format!(
            "{} exists and is not a directory",
            dir.display()
        ))),
        Err(e) => Err(CliError::Failed(format!("read {}: {e}", dir.display()))),
    }
}

/// The project's files (path relative to its directory, text), Cargo.lock aside.
fn project_files(names: &Names<'_>, source: &Source) -> Vec<(String, String)> {
    let micro_deps = MICRO_CRATES
        .iter()
        .map(|(package, dir)| match source {
            Source::Path(checkout) => {
                let path = checkout.join(dir);
                let path = path.to_str().unwrap_or_default();
                format!("{package} = {{ path = {} }}", toml_string(path))
            }
            Source::Version(version) => format!("{package} = {}", toml_string(version)),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let vars = [
        ("name", names.name),
        ("crate", &names.snake),
        ("pkg", &names.snake),
        ("Service", &names.pascal),
        ("micro_deps", &micro_deps),
    ];
    let pkg = &names.snake;
    [
        ("Cargo.toml".to_string(), CARGO_TOML),
        ("build.rs".to_string(), BUILD_RS),
        (format!("proto/{pkg}/v1/{pkg}.proto"), PROTO),
        ("src/lib.rs".to_string(), LIB_RS),
        ("src/main.rs".to_string(), MAIN_RS),
        ("tests/call.rs".to_string(), CALL_RS),
        ("README.md".to_string(), README),
        (".gitignore".to_string(), GITIGNORE),
    ]
    .into_iter()
    .map(|(path, template)| (path, render(template, &vars)))
    .collect()
}

/// `template` with each `{{key}}` replaced by its value.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` as one shell word: as it is when it is plain, else single-quoted.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(result: Result<(), CliError>) -> String {
        match result {
            Err(CliError::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn names_that_follow_the_rule_are_accepted() {
        for name in ["a", "demo", "my-svc2", "a-", "a--b", "v1", "x0-9"] {
            validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        validate_name(&format!("a{}", "b".repeat(62))).expect("63 characters");
    }

    #[test]
    fn names_against_the_rule_are_usage_errors_stating_it() {
        let too_long = format!("a{}", "b".repeat(63));
        for name in [
            "",
            "Bad_Name",
            "Demo",
            "1demo",
            "-demo",
            "my_svc",
            "my.svc",
            "my svc",
            "démo",
            too_long.as_str(),
        ] {
            let message = usage(validate_name(name));
            assert!(message.contains(NAME_RULE), "{name}: {message}");
            assert!(message.contains(&format!("`{name}`")), "{message}");
        }
    }

    #[test]
    fn names_rust_or_cargo_refuse_are_usage_errors() {
        for name in ["fn", "self", "test", "core", "proc-macro", "build", "gen"] {
            assert!(usage(validate_name(name)).contains("keyword"), "{name}");
        }
        for name in ["tokio", "micro-core", "tonic-prost-build"] {
            assert!(usage(validate_name(name)).contains("depends on"), "{name}");
        }
        for name in ["call-request", "call-response"] {
            assert!(usage(validate_name(name)).contains("clash"), "{name}");
        }
    }

    #[test]
    fn pascal_case_capitalizes_each_dash_separated_part() {
        for (name, pascal) in [
            ("demo", "Demo"),
            ("my-svc", "MySvc"),
            ("my-svc2", "MySvc2"),
            ("a-1b", "A1b"),
            ("a--b-", "AB"),
            ("x", "X"),
        ] {
            assert_eq!(pascal_case(name), pascal);
        }
    }

    #[test]
    fn every_placeholder_of_every_template_is_filled() {
        let names = Names::new("my-svc").expect("valid");
        for source in [
            Source::Path(PathBuf::from("/src/mi\"cro")),
            Source::Version("0.1".into()),
        ] {
            for (path, text) in project_files(&names, &source) {
                assert!(!text.contains("{{"), "{path} keeps a placeholder:\n{text}");
            }
        }
    }

    #[test]
    fn files_are_named_and_filled_after_the_service() {
        let names = Names::new("my-svc").expect("valid");
        let files = project_files(&names, &Source::Path(PathBuf::from("/src/micro")));
        let file = |path: &str| -> &str {
            &files
                .iter()
                .find(|(p, _)| p == path)
                .unwrap_or_else(|| panic!("no {path}"))
                .1
        };
        let proto = file("proto/my_svc/v1/my_svc.proto");
        assert!(proto.contains("package my_svc.v1;"), "{proto}");
        assert!(proto.contains("service MySvc {"), "{proto}");
        let manifest = file("Cargo.toml");
        assert!(manifest.contains("name = \"my-svc\""), "{manifest}");
        assert!(
            manifest.contains("micro-etcd = { path = \"/src/micro/plugins/etcd\" }"),
            "{manifest}"
        );
        assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
        assert!(file("src/main.rs").contains("Options::new(\"my-svc\")"));
        assert!(file("README.md").contains("micro call my-svc MySvc.Call"));
        assert_eq!(file(".gitignore"), "/target\n");

        let files = project_files(&names, &Source::Version("0.2".into()));
        let manifest = &files[0].1;
        assert!(manifest.contains("micro-core = \"0.2\"\n"), "{manifest}");
    }

    #[test]
    fn toml_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(toml_string("/a/b"), "\"/a/b\"");
        assert_eq!(toml_string(r#"C:\a "b""#), r#""C:\\a \"b\"""#);
        assert_eq!(toml_string("a\nb"), "\"a\\u000Ab\"");
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("./demo"), "./demo");
        assert_eq!(shell_quote("my dir"), "'my dir'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn an_existing_non_empty_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("micro-new-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create");
        check_empty(&dir).expect("an empty directory will do");
        std::fs::write(dir.join("file"), "x").expect("write");
        assert!(usage(check_empty(&dir)).contains("not empty"));
        assert!(usage(check_empty(&dir.join("file"))).contains("not a directory"));
        check_empty(&dir.join("missing")).expect("a missing directory will do");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
