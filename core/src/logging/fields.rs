//! The fmt layer's field formatter: `name=value` written straight into the line.
//!
//! The fmt layer formats a span's fields when the span is made and each time one is recorded,
//! whether or not a line is ever printed inside it: the gateway's `http` span pays that on every
//! request. `tracing_subscriber`'s default formatter writes every `&str` through its `Debug`
//! (quoted and escaped char by char) and every name and value through `fmt::write`. This one
//! writes a plain string (ids, paths, service names: see [`plain`]) as it is, in one copy, and
//! keeps the quotes for any other, so a value with a space, a quote or nothing in it still reads
//! unambiguously. Numbers, booleans and `%`/`?` values print as with the default formatter, the
//! `message` field and errors are handed to it, and names and `=` are styled as it styles them
//! (italic and dimmed, only when the layer writes ANSI). A new span's fields are gathered on the
//! stack and its string allocated once, to measure; a record appends to that string directly,
//! with room made for a few more at the first.
//!
//! Fields named `otel.*` (`otel.kind`, `otel.name`, …) are instructions to the OpenTelemetry
//! layer, which reads them from the span itself: they are left out of log lines.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::{RecordFields, VisitOutput as _};
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatFields, Writer};

/// The fields formatter of micro's log lines (see the [module](self)); set on the fmt layer
/// with `.fmt_fields(LeanFields)`. Events' fields and spans' fields both go through it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LeanFields;

impl<'writer> FormatFields<'writer> for LeanFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor::new(Staged::new(writer), true);
        fields.record(&mut visitor);
        visitor.finish()
    }

    /// Appends what `span.record(…)` recorded to the span's fields, straight into the span's
    /// string: a space before each field written, none when nothing is (an `otel.*` field
    /// alone, say), no copy of what is there.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        // A span's string is made to measure when the span is (see `Staged`), so its first
        // record would grow it, and the next ones again. A span recorded into once is likely to
        // be again (the gateway's `http` span is, four times): room for a few fields at once.
        if current.fields.len() == current.fields.capacity() {
            current.fields.reserve(ROOM);
        }
        let first = current.fields.is_empty();
        let mut visitor = Visitor::new(SpanFields::new(current), first);
        fields.record(&mut visitor);
        visitor.finish()
    }
}

impl LeanFields {
    /// Appends `field` of what `fields` recorded, and nothing else, to a span's fields: the
    /// `trace_id` of a span kept for its trace context but not logged (see `logs.rs`).
    pub(crate) fn add_only(
        self,
        current: &mut FormattedFields<Self>,
        fields: &Record<'_>,
        field: &Field,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut visitor = Visitor::new(SpanFields::new(current), first);
        fields.record(&mut Only {
            field,
            visitor: &mut visitor,
        });
        visitor.finish()
    }
}

/// Passes one field on to `visitor`, and no other.
struct Only<'a, V> {
    field: &'a Field,
    visitor: &'a mut V,
}

impl<V: Visit> Visit for Only<'_, V> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field == self.field {
            self.visitor.record_str(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field == self.field {
            self.visitor.record_debug(field, value);
        }
    }
}

/// Bytes reserved in a span's string at its first record.
const ROOM: usize = 128;

/// Where a [`Visitor`] writes.
trait Sink: fmt::Write {
    /// Whether field names are styled with ANSI codes.
    fn ansi(&self) -> bool;

    /// Writes what is held back, then hands `write` the line's [`Writer`] (for the default
    /// formatter's visitor).
    fn with_writer(&mut self, write: impl FnOnce(Writer<'_>) -> fmt::Result) -> fmt::Result;

    /// Writes what is held back.
    fn flush(&mut self) -> fmt::Result;
}

/// Writes one set of fields to `out`; `first` until a field has been written (no separator
/// before it).
struct Visitor<S> {
    out: S,
    first: bool,
    result: fmt::Result,
}

/// The ANSI codes `tracing_subscriber`'s default formatter styles a field's name (italic) and
/// its `=` (dimmed) with, each followed by a reset, when the layer writes ANSI.
const ITALIC: &str = "\x1b[3m";
const DIMMED: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl<S: Sink> Visitor<S> {
    fn new(out: S, first: bool) -> Self {
        Visitor {
            out,
            first,
            result: Ok(()),
        }
    }

    /// Writes what is still held back; the first error met, if any.
    fn finish(mut self) -> fmt::Result {
        self.result?;
        self.out.flush()
    }

    /// Writes the separator and `name=` for `field`, and returns whether its value is to follow:
    /// false after an error, and for `otel.*` fields, which are left out.
    fn name(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let name = field.name();
        if name.starts_with("otel.") {
            return false;
        }
        // A raw identifier (`r#type = …`) is logged without its prefix, as by the default.
        let name = name.strip_prefix("r#").unwrap_or(name);
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if self.out.ansi() {
            write!(self.out, "{separator}{ITALIC}{name}{RESET}{DIMMED}={RESET}")
        } else {
            self.out
                .write_str(separator)
                .and_then(|()| self.out.write_str(name))
                .and_then(|()| self.out.write_str("="))
        };
        self.result.is_ok()
    }

    /// Hands `field` to the default formatter's visitor (the `message` field, errors), which
    /// writes the separator itself unless it comes first.
    fn default(&mut self, visit: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let first = self.first;
        self.result = self.out.with_writer(|writer| {
            let mut default = DefaultVisitor::new(writer, first);
            visit(&mut default);
            default.finish()
        });
        self.first = false;
    }
}

impl<S: Sink> Visit for Visitor<S> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.default(|default| default.record_str(field, value));
        }
        if self.name(field) {
            self.result = if plain(value) {
                self.out.write_str(value)
            } else {
                write!(self.out, "{value:?}")
            };
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.name(field) {
            self.result = write!(self.out, "{value}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.name(field) {
            self.result = write!(self.out, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.name(field) {
            self.result = self.out.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if field.name().starts_with("otel.") {
            return;
        }
        self.default(|default| default.record_error(field, value));
    }

    /// `%value` (its `Display`, through `fmt::Arguments` as by the default formatter), `?value`,
    /// floats, and whatever else `tracing` records as `Debug`.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return self.default(|default| default.record_debug(field, value));
        }
        if self.name(field) {
            self.result = write!(self.out, "{value:?}");
        }
    }
}

/// Bytes of fields gathered on the stack before they are written to the line.
const STAGED: usize = 256;

/// The line's writer (an event's line, or a new span's string) with a buffer on the stack in
/// front of it: a set of fields is written in one piece — one call through the writer's
/// `dyn fmt::Write`, and a new span's string allocated once, to measure — instead of one write
/// (and growth) per name, `=` and value.
struct Staged<'writer> {
    writer: Writer<'writer>,
    bytes: [u8; STAGED],
    len: usize,
}

impl<'writer> Staged<'writer> {
    fn new(writer: Writer<'writer>) -> Self {
        Staged {
            writer,
            bytes: [0; STAGED],
            len: 0,
        }
    }
}

impl fmt::Write for Staged<'_> {
    /// Stages `text`, writing what is staged first when it would not fit (and `text` itself
    /// when it is larger than the buffer).
    fn write_str(&mut self, text: &str) -> fmt::Result {
        if text.len() > STAGED - self.len {
            self.flush()?;
            if text.len() > STAGED {
                return self.writer.write_str(text);
            }
        }
        self.bytes[self.len..self.len + text.len()].copy_from_slice(text.as_bytes());
        self.len += text.len();
        Ok(())
    }
}

impl Sink for Staged<'_> {
    fn ansi(&self) -> bool {
        self.writer.has_ansi_escapes()
    }

    fn with_writer(&mut self, write: impl FnOnce(Writer<'_>) -> fmt::Result) -> fmt::Result {
        self.flush()?;
        write(self.writer.by_ref())
    }

    fn flush(&mut self) -> fmt::Result {
        if self.len == 0 {
            return Ok(());
        }
        // Whole `&str`s only were staged: this never fails (a fast check for ASCII).
        let staged = std::str::from_utf8(&self.bytes[..self.len]).map_err(|_| fmt::Error)?;
        self.len = 0;
        self.writer.write_str(staged)
    }
}

/// A span's own string, appended to directly by a record (no `dyn` call, nothing to copy).
struct SpanFields<'fields> {
    fields: &'fields mut FormattedFields<LeanFields>,
    ansi: bool,
}

impl<'fields> SpanFields<'fields> {
    fn new(fields: &'fields mut FormattedFields<LeanFields>) -> Self {
        // The span's writer knows whether its layer writes ANSI (the flag itself is private).
        let ansi = fields.as_writer().has_ansi_escapes();
        SpanFields { fields, ansi }
    }
}

impl fmt::Write for SpanFields<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.fields.fields.push_str(text);
        Ok(())
    }
}

impl Sink for SpanFields<'_> {
    fn ansi(&self) -> bool {
        self.ansi
    }

    fn with_writer(&mut self, write: impl FnOnce(Writer<'_>) -> fmt::Result) -> fmt::Result {
        write(self.fields.as_writer())
    }

    fn flush(&mut self) -> fmt::Result {
        Ok(())
    }
}

/// Whether `value` reads the same without quotes in a `name=value` list: not empty, and only
/// ASCII letters, digits and `-_./:@+%~,` — no space, quote, `=`, brace, control or non-ASCII
/// character. One pass over its bytes through a table.
pub(crate) fn plain(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|byte| PLAIN[usize::from(byte)])
}

/// [`plain`]'s table: which bytes may appear in an unquoted value.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'/' | b':' | b'@' | b'+' | b'%' | b'~' | b','
            );
        byte += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use tracing::field::Empty;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{ITALIC, LeanFields, plain};
    use crate::logging::tests::Buffer;

    /// What `run` logs through a fmt layer (no time) with micro's formatter, or with the
    /// default one when `lean` is false; ANSI as `ansi` says.
    fn logged_with(lean: bool, ansi: bool, run: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(ansi)
            .with_writer(move || writer.clone());
        if lean {
            let subscriber = tracing_subscriber::registry().with(layer.fmt_fields(LeanFields));
            tracing::subscriber::with_default(subscriber, run);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, run);
        }
        buffer.text()
    }

    /// What `run` logs with micro's formatter, without ANSI.
    fn logged(run: impl FnOnce()) -> String {
        logged_with(true, false, run)
    }

    #[test]
    fn plain_values_are_written_raw() {
        let line = logged(|| {
            tracing::info!(
                path = "/greeter/Greeter/SayHello",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                node = "127.0.0.1:50051",
                "called"
            );
        });
        assert!(
            line.ends_with(
                "called path=/greeter/Greeter/SayHello \
                 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 node=127.0.0.1:50051\n"
            ),
            "{line:?}"
        );
    }

    #[test]
    fn values_that_are_not_plain_are_quoted() {
        let line = logged(|| {
            tracing::info!(
                spaced = "a b",
                quoted = "say \"hi\"",
                empty = "",
                equals = "a=b",
                braced = "}",
                accent = "café",
                "called"
            );
        });
        assert!(
            line.ends_with(concat!(
                r#"called spaced="a b" quoted="say \"hi\"" empty="" equals="a=b" braced="}" "#,
                "accent=\"café\"\n"
            )),
            "{line:?}"
        );
    }

    #[test]
    fn otel_fields_are_left_out() {
        let line = logged(|| {
            let span = tracing::info_span!("http", otel.kind = "server", method = "POST");
            span.in_scope(|| tracing::info!(otel.name = "x", "inside"));
            let bare = tracing::info_span!("deliver", otel.kind = "consumer");
            bare.in_scope(|| tracing::info!("alone"));
        });
        let lines: Vec<&str> = line.lines().collect();
        assert!(
            lines[0].ends_with("http{method=POST}: micro_core::logging::fields::tests: inside"),
            "{line:?}"
        );
        assert!(
            lines[1].ends_with(" deliver: micro_core::logging::fields::tests: alone"),
            "{line:?}"
        );
        assert!(!line.contains("otel"), "{line:?}");
    }

    #[test]
    fn record_appends_to_the_span_fields() {
        let line = logged(|| {
            let span = tracing::info_span!(
                "http",
                method = "POST",
                service = Empty,
                request_id = Empty,
                trace_id = Empty,
                otel.kind = "server"
            );
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            span.record("request_id", "00f067aa0ba902b7");
            span.record("service", "my service");
            span.in_scope(|| tracing::info!("done"));
            // A span whose first fields are all recorded later: no leading space.
            let late = tracing::info_span!("late", a = Empty, otel.kind = "server");
            late.record("a", 1u64);
            late.in_scope(|| tracing::info!("done"));
        });
        assert!(
            line.contains(
                "http{method=POST trace_id=4bf92f3577b34da6a3ce929d0e0e4736 \
                 request_id=00f067aa0ba902b7 service=\"my service\"}: "
            ),
            "{line:?}"
        );
        assert!(line.contains(" late{a=1}: "), "{line:?}");
    }

    #[test]
    fn numbers_booleans_and_display_values() {
        let line = logged(|| {
            let shown = "a b";
            tracing::info!(
                n = 42u64,
                negative = -3i64,
                ok = true,
                ratio = 1.5f64,
                whole = 2.0f64,
                shown = %shown,
                debugged = ?Some("x"),
                "done"
            );
        });
        assert!(
            line.ends_with(
                "done n=42 negative=-3 ok=true ratio=1.5 whole=2.0 shown=a b debugged=Some(\"x\")\n"
            ),
            "{line:?}"
        );
    }

    /// Fields that are not strings (and the message, escapes included, and errors) print as the
    /// default formatter prints them, colours included.
    #[test]
    fn other_fields_and_colours_as_the_default_formatter() {
        let error = std::io::Error::other("disk full");
        let run = || {
            let span = tracing::info_span!("http", n = 7u64, otel.kind = "server", later = Empty);
            span.record("later", -9i64);
            let _entered = span.enter();
            tracing::warn!(
                count = 3u64,
                negative = -1i64,
                ok = false,
                shown = %"x y",
                debugged = ?["a"],
                error = &error as &(dyn std::error::Error + 'static),
                r#type = 5u64,
                "failed \x1b[31m{}",
                "here"
            );
        };
        for ansi in [false, true] {
            let lean = logged_with(true, ansi, run);
            let default = logged_with(false, ansi, run);
            // The default also prints `otel.kind="server"` in the span: remove it to compare.
            let otel = if ansi {
                " \x1b[3motel.kind\x1b[0m\x1b[2m=\x1b[0m\"server\""
            } else {
                " otel.kind=\"server\""
            };
            assert_eq!(lean, default.replace(otel, ""), "ansi {ansi}");
            assert!(lean.contains("\\x1b[31m"), "message escapes kept: {lean:?}");
            assert_eq!(
                lean.contains(ITALIC),
                ansi,
                "names italic with ANSI only: {lean:?}"
            );
        }
    }

    /// The shape of a gateway log line is today's: level, the span with its fields in braces,
    /// the target, the message, the event's fields.
    #[test]
    fn a_line_reads_as_before() {
        let line = logged(|| {
            let span = tracing::info_span!(
                "http",
                method = "POST",
                path = "/greeter/Greeter/SayHello",
                service = Empty,
                endpoint = Empty,
                request_id = Empty,
                trace_id = Empty,
                otel.kind = "server"
            );
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            span.record("request_id", "00f067aa0ba902b7");
            span.in_scope(|| tracing::info!(key = "value", "message"));
        });
        assert_eq!(
            line,
            "\u{20}INFO http{method=POST path=/greeter/Greeter/SayHello \
             trace_id=4bf92f3577b34da6a3ce929d0e0e4736 request_id=00f067aa0ba902b7}: \
             micro_core::logging::fields::tests: message key=value\n"
        );
    }

    /// Fields longer than the stack buffer, alone or together, are written whole and in order.
    #[test]
    fn long_fields_are_written_whole() {
        let long = "a".repeat(300);
        let spaced = format!("{} {}", "b".repeat(200), "c".repeat(200));
        let line = logged(|| {
            let span = tracing::info_span!("s", first = %"x".repeat(250), long = Empty);
            span.record("long", long.as_str());
            span.in_scope(|| tracing::info!(spaced = spaced.as_str(), n = 1u64, "done"));
        });
        let expected = format!(
            "s{{first={} long={long}}}: micro_core::logging::fields::tests: done spaced={spaced:?} n=1\n",
            "x".repeat(250)
        );
        assert!(line.ends_with(&expected), "{line:?}");
    }

    #[test]
    fn plain_is_one_pass_over_safe_bytes() {
        for value in ["POST", "a-b_c.d/e:f@g+h%i~j,k", "0123456789abcdefABCDEF"] {
            assert!(plain(value), "{value}");
        }
        for value in [
            "", " ", "a b", "\"", "a=b", "{", "}", "\\", "\n", "\x1b", "é", "'",
        ] {
            assert!(!plain(value), "{value:?}");
        }
    }
}
