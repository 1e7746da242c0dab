//! Output for people (aligned tables, colour only on a terminal) or for scripts (`-o json`).

use std::io::{IsTerminal, Write};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned tables and pretty JSON, for people.
    Text,
    /// One JSON document (or one per line for streams), for scripts.
    Json,
}

/// Whether stdout gets colour: a terminal, and `NO_COLOR` unset or empty.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in bold, on a terminal.
pub(crate) fn bold(text: &str) -> String {
    if colour() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// `text` in green (`good`) or red, on a terminal.
pub(crate) fn status(text: &str, good: bool) -> String {
    match (colour(), good) {
        (true, true) => format!("\x1b[32m{text}\x1b[0m"),
        (true, false) => format!("\x1b[31m{text}\x1b[0m"),
        (false, _) => text.to_string(),
    }
}

/// Prints rows under a bold header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(visible_len(cell));
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(&cell);
            if i < last {
                let pad = widths[i].saturating_sub(visible_len(&cell)) + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "{}",
        bold(&line(header.iter().map(|h| h.to_string()).collect()))
    );
    for row in rows {
        let _ = writeln!(stdout, "{}", line(row.clone()));
    }
}

/// Characters a terminal shows, escape sequences left out.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// Prints `value`: pretty for people, one compact line for scripts.
pub(crate) fn json(value: &serde_json::Value, format: Format) {
    let text = match format {
        Format::Text => serde_json::to_string_pretty(value),
        Format::Json => serde_json::to_string(value),
    }
    .unwrap_or_default();
    line(&text);
}

/// Prints one line and flushes it at once (streams are read as they arrive).
pub(crate) fn line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::visible_len;

    #[test]
    fn escape_codes_take_no_width() {
        assert_eq!(visible_len("\x1b[32mSERVING\x1b[0m"), 7);
        assert_eq!(visible_len("abc"), 3);
    }
}
