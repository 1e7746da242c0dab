//! The log layer: `RUST_LOG`'s filter and the line formatter as one global layer.
//!
//! Given to the subscriber as per-layer filters (`fmt.with_filter(env)`, the propagation layer
//! with a filter of its own), `tracing-subscriber` asks each filter about every span on every
//! enter, exit, record and close (a lookup in the span's filter map per layer and callback), and
//! `EnvFilter` as a layer takes a lock and a map lookup on each of them to follow span-scoped
//! directives — measured with callgrind, ~4 600 instructions per gateway request, for spans
//! that print nothing. As one global layer the subscriber asks once, when a callsite registers
//! or a span is made, and `EnvFilter` follows spans only when `RUST_LOG` has a span or field
//! directive (`[http]=debug`, `[{service=greeter}]=trace`), the only case it needs them.
//!
//! Spans at `INFO` and above are kept whatever `RUST_LOG` says when trace context is carried:
//! the propagation layer (or OpenTelemetry's) needs them to pass a caller's trace on, even in a
//! process that logs only warnings. Such a span that `RUST_LOG` would have left out is *quiet*:
//! its fields are not formatted, except `trace_id`, so that a line logged inside it still says
//! which trace it belongs to (`http{trace_id=…}: …`). Everything else — which events print,
//! which spans are formatted — is exactly `EnvFilter`'s answer.

use tracing::field::Field;
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::fields::LeanFields;

/// The name of the field a quiet span keeps (see the [module](self)).
const TRACE_ID: &str = "trace_id";

/// `RUST_LOG`'s filter and micro's line formatter, as one global layer (see the [module](self)).
pub(super) struct Logs<F> {
    filter: EnvFilter,
    /// The fmt layer, with [`LeanFields`] (a quiet span's `trace_id` is written as it writes).
    fmt: F,
    /// Spans at `INFO` and above exist whatever `filter` says (trace context is carried).
    keep_spans: bool,
    /// `filter` has span or field directives: it follows spans in and out.
    scoped: bool,
}

impl<F> Logs<F> {
    /// Lines from `fmt` as `filter` allows them; `keep_spans` when trace context is carried;
    /// `directives` is the filter's text (`RUST_LOG`), to tell whether it scopes by span.
    pub(super) fn new(filter: EnvFilter, fmt: F, keep_spans: bool, directives: &str) -> Self {
        Logs {
            filter,
            fmt,
            keep_spans,
            // Span and field directives are the ones in brackets (`target[span{field=value}]`).
            scoped: directives.contains('['),
        }
    }

    /// A span kept for trace context whatever the filter says.
    fn kept(&self, metadata: &Metadata<'_>) -> bool {
        self.keep_spans && metadata.is_span() && *metadata.level() <= tracing::Level::INFO
    }
}

/// Marks a quiet span (see the [module](self)), decided when it is made: a span directive's
/// answer depends on the spans entered at the time.
struct Quiet;

impl<F> std::fmt::Debug for Logs<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("filter", &self.filter)
            .field("keep_spans", &self.keep_spans)
            .field("scoped", &self.scoped)
            .finish_non_exhaustive()
    }
}

impl<S, F> Layer<S> for Logs<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.fmt.on_register_dispatch(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.kept(metadata) {
            // The filter still learns of the callsite (its span directives are built here).
            let _ = Layer::<S>::register_callsite(&self.filter, metadata);
            return Interest::always();
        }
        Layer::<S>::register_callsite(&self.filter, metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.kept(metadata) || Layer::<S>::enabled(&self.filter, metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let hint = Layer::<S>::max_level_hint(&self.filter);
        if self.keep_spans {
            hint.map(|hint| hint.max(LevelFilter::INFO))
        } else {
            hint
        }
    }

    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.scoped {
            Layer::<S>::on_new_span(&self.filter, attributes, id, ctx.clone());
        }
        let metadata = attributes.metadata();
        if self.kept(metadata) && !Layer::<S>::enabled(&self.filter, metadata, ctx.clone()) {
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Quiet);
            }
            return;
        }
        self.fmt.on_new_span(attributes, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.scoped {
            Layer::<S>::on_record(&self.filter, id, values, ctx.clone());
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        if !self.kept(span.metadata()) || span.extensions().get::<Quiet>().is_none() {
            drop(span);
            self.fmt.on_record(id, values, ctx);
            return;
        }
        // Quiet: only its trace id is kept for the lines of events inside it.
        let Some(trace_id) = span.metadata().fields().field(TRACE_ID) else {
            return;
        };
        if values.contains(&trace_id) {
            record_only(&mut span.extensions_mut(), values, &trace_id);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if self.scoped {
            Layer::<S>::on_enter(&self.filter, id, ctx.clone());
        }
        self.fmt.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if self.scoped {
            Layer::<S>::on_exit(&self.filter, id, ctx.clone());
        }
        self.fmt.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if self.scoped {
            Layer::<S>::on_close(&self.filter, id.clone(), ctx.clone());
        }
        self.fmt.on_close(id, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.fmt.on_event(event, ctx);
    }
}

/// Adds `field` of `values` (nothing else) to the span's formatted fields.
fn record_only(
    extensions: &mut tracing_subscriber::registry::ExtensionsMut<'_>,
    values: &Record<'_>,
    field: &Field,
) {
    if let Some(fields) = extensions.get_mut::<FormattedFields<LeanFields>>() {
        let _ = LeanFields.add_only(fields, values, field);
        return;
    }
    let mut fields = FormattedFields::<LeanFields>::new(String::new());
    if LeanFields.add_only(&mut fields, values, field).is_ok() {
        extensions.insert(fields);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tracing::field::Empty;
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::Logs;
    use crate::logging::fields::LeanFields;
    use crate::logging::tests::Buffer;

    /// What `run` logs with `RUST_LOG=directives` (no time, no colour), trace context carried
    /// by micro's propagation layer when `carried`.
    fn logged(directives: &str, carried: bool, run: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(false)
            .fmt_fields(LeanFields)
            .with_writer(move || writer.clone());
        let logs = Logs::new(EnvFilter::new(directives), fmt, carried, directives);
        if carried {
            let subscriber = tracing_subscriber::registry()
                .with(logs)
                .with(crate::trace::PropagationLayer);
            tracing::subscriber::with_default(subscriber, run);
        } else {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(logs), run);
        }
        buffer.text()
    }

    /// The `traceparent` a call made here would carry.
    fn traceparent() -> Option<String> {
        let mut headers = http::HeaderMap::new();
        crate::trace::inject(&mut headers);
        headers
            .get(crate::trace::TRACEPARENT)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// The trace id of a `traceparent`.
    fn trace_of(traceparent: &str) -> &str {
        &traceparent[3..35]
    }

    /// A value counting how often it is formatted.
    struct Counted<'a>(&'a AtomicUsize);

    impl std::fmt::Debug for Counted<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fetch_add(1, Ordering::Relaxed);
            f.write_str("counted")
        }
    }

    /// The gateway's span as it is used: fields at creation, then recorded.
    fn http_span() -> tracing::Span {
        let span = tracing::info_span!(
            "http",
            method = "POST",
            status = Empty,
            trace_id = Empty,
            otel.kind = "server"
        );
        span.record("trace_id", "0af7651916cd43dd8448eb211c80319c");
        span.record("status", 200);
        span
    }

    #[test]
    fn trace_context_is_carried_whatever_rust_log_says() {
        for directives in ["trace", "info", "warn", "off", "micro_core=error"] {
            logged(directives, true, || {
                let outer = tracing::info_span!("http");
                let _outer = outer.enter();
                let first = traceparent().unwrap_or_else(|| panic!("none at {directives}"));
                let inner = tracing::info_span!("handle");
                let _inner = inner.enter();
                let second = traceparent().unwrap_or_else(|| panic!("none at {directives}"));
                assert_eq!(trace_of(&first), trace_of(&second), "{directives}");
                assert_ne!(first, second, "{directives}: a span id of its own");
            });
        }
    }

    #[test]
    fn a_line_inside_a_quiet_span_shows_only_its_trace_id() {
        let text = logged("warn", true, || {
            let span = http_span();
            let _entered = span.enter();
            tracing::info!("not printed");
            tracing::warn!("slow");
        });
        assert_eq!(
            text,
            " WARN http{trace_id=0af7651916cd43dd8448eb211c80319c}: \
             micro_core::logging::logs::tests: slow\n"
        );
    }

    #[test]
    fn a_span_the_filter_enables_is_logged_with_all_its_fields() {
        let text = logged("info", true, || {
            let span = http_span();
            let _entered = span.enter();
            tracing::info!("done");
        });
        assert_eq!(
            text,
            " INFO http{method=POST trace_id=0af7651916cd43dd8448eb211c80319c status=200}: \
             micro_core::logging::logs::tests: done\n"
        );
    }

    #[test]
    fn an_event_the_filter_leaves_out_is_neither_formatted_nor_printed() {
        let formatted = AtomicUsize::new(0);
        let text = logged("info", true, || {
            tracing::debug!(value = ?Counted(&formatted), "debug");
            let span = tracing::debug_span!("detail", value = ?Counted(&formatted));
            let _entered = span.enter();
        });
        let quiet = logged("warn", true, || {
            tracing::info!(value = ?Counted(&formatted), "info");
            let span = tracing::info_span!("kept", value = ?Counted(&formatted));
            let _entered = span.enter();
        });
        assert_eq!((text.as_str(), quiet.as_str()), ("", ""));
        assert_eq!(formatted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn span_and_field_directives_scope_events_as_before() {
        let text = logged("warn,[http]=debug", true, || {
            tracing::debug!("outside");
            let span = tracing::info_span!("http");
            let _entered = span.enter();
            tracing::debug!("inside");
        });
        assert!(
            text.contains("inside") && !text.contains("outside"),
            "{text}"
        );
        let text = logged("warn,[{service=greeter}]=debug", true, || {
            for service in ["other", "greeter"] {
                let span = tracing::info_span!("handle", service);
                let _entered = span.enter();
                tracing::debug!("in {service}");
            }
        });
        assert!(
            text.contains("in greeter") && !text.contains("in other"),
            "{text}"
        );
    }

    #[test]
    fn target_directives_filter_as_before() {
        let text = logged("warn,micro_core::logging=debug", true, || {
            tracing::debug!("ours");
            tracing::debug!(target: "elsewhere", "theirs");
            tracing::warn!(target: "elsewhere", "their warning");
        });
        assert!(text.contains("ours"), "{text}");
        assert!(!text.contains("theirs"), "{text}");
        assert!(text.contains("their warning"), "{text}");
    }

    #[test]
    fn debug_spans_between_do_not_break_the_trace() {
        logged("debug", true, || {
            let outer = tracing::info_span!("http");
            let _outer = outer.enter();
            let first = traceparent().unwrap();
            let detail = tracing::debug_span!("detail");
            let _detail = detail.enter();
            assert_eq!(traceparent().unwrap(), first, "a debug span has no ids");
            let inner = tracing::info_span!("handle");
            let _inner = inner.enter();
            assert_eq!(trace_of(&traceparent().unwrap()), trace_of(&first));
        });
    }

    #[test]
    fn without_trace_context_the_filter_alone_decides() {
        logged("warn", false, || {
            assert!(tracing::info_span!("http").is_disabled());
            assert!(traceparent().is_none());
        });
        let logs = |carried| {
            Logs::new(
                EnvFilter::new("warn"),
                tracing_subscriber::fmt::layer(),
                carried,
                "warn",
            )
        };
        let hint = |logs: Logs<_>| {
            tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(&logs)
        };
        assert_eq!(hint(logs(false)), Some(LevelFilter::WARN));
        assert_eq!(hint(logs(true)), Some(LevelFilter::INFO));
    }
}
