//! Log output for binaries: one line per event on stderr, filtered by `RUST_LOG` (default
//! `info`), coloured only when stderr is a terminal and `NO_COLOR` is not set — so a log written
//! to a file or a pipe carries no escape codes.

use std::io::IsTerminal;

/// Installs the process's log subscriber, unless one is installed already. Every binary of
/// micro (the gateway, the examples) calls it first.
pub fn init() {
    init_with_default("info");
}

/// As [`init`], with `level` when `RUST_LOG` is not set: a command-line tool such as `micro`
/// shows warnings only, so its output is its answer.
pub fn init_with_default(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .try_init();
}

/// Colour on a terminal unless `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
