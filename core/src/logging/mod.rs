//! Log output and tracing for binaries.
//!
//! Logs: one line per event on stderr, filtered by `RUST_LOG` (default `info`), coloured only
//! when stderr is a terminal and `NO_COLOR` is not set — so a log written to a file or a pipe
//! carries no escape codes. Lines written inside a call carry its `trace_id`.
//!
//! Traces: micro's spans (`http`, `handle`, `deliver`, …) get W3C trace context (see
//! [`crate::trace`]) whatever `RUST_LOG` says, so a process passes a trace on even when it logs
//! nothing. With the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, they are exported over
//! OTLP/gRPC in batches (`OTEL_BSP_*`), as service `OTEL_SERVICE_NAME` (default: the name given
//! to [`init_service`]), sampled as `OTEL_TRACES_SAMPLER` says (default: parent-based, always
//! on). Without it nothing is exported and no OpenTelemetry span is built: micro's
//! [`PropagationLayer`](crate::trace::PropagationLayer) gives spans their ids (a caller's trace
//! continued, a new sampled one at a root), which is all that passing a trace on and logging its
//! id need. `OTEL_SDK_DISABLED=true` leaves trace context out altogether: none is carried or
//! logged, and spans cost what they cost a plain `tracing` subscriber.
//!
//! Fields are written by a lean formatter of micro's own (`logging/fields.rs`): plain values
//! unquoted, `otel.*` left out, so that a span nobody prints (the gateway's `http` span on a
//! successful call) costs little. The filter and the formatter are one global layer
//! (`logging/logs.rs`), so the subscriber does no per-layer filter bookkeeping on every span
//! enter and exit. Spans at `INFO` and above exist whatever `RUST_LOG` says while trace context
//! is carried; one that `RUST_LOG` leaves out is formatted with its `trace_id` only, so that a
//! warning logged inside a call says which trace it belongs to. A `RUST_LOG` that does not
//! parse is reported in a warning naming it, and the default level is used.

mod fields;
mod logs;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the process's log subscriber and tracing for service `name`, unless a
/// subscriber is installed already. Every binary of micro calls it first, in its tokio runtime,
/// and keeps the returned guard until it exits: dropping it sends the spans not yet exported.
pub fn init_service(name: &str) -> Telemetry {
    init_service_with_default(name, "info")
}

/// As [`init_service`], with `level` when `RUST_LOG` is not set.
pub fn init_service_with_default(name: &str, level: &str) -> Telemetry {
    install(name, level)
}

/// Held by a binary until it exits: dropping it exports the spans still batched and stops the
/// exporter (a no-op when nothing is exported, or when another subscriber was installed first).
#[must_use = "dropping the guard stops span export: keep it until the process exits"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("installed", &self.provider.is_some())
            .finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Blocks until the batch is sent (bounded by OTEL_EXPORTER_OTLP_TIMEOUT); the tonic
            // channel it is sent on is driven by the runtime's worker threads, not this one.
            if let Err(e) = provider.shutdown() {
                eprintln!("spans not exported at exit: {e}");
            }
        }
    }
}

fn install(name: &str, level: &str) -> Telemetry {
    let (filter, directives, problem) = filter(
        std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).ok(),
        level,
    );
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(fields::LeanFields)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    let carried = !sdk_disabled();
    let logs = logs::Logs::new(filter, fmt, carried, &directives);
    let telemetry = install_layers(name, logs, carried);
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    telemetry
}

/// `RUST_LOG`'s filter and its text, or `level`'s with what was wrong with `RUST_LOG`.
fn filter(
    rust_log: Option<String>,
    level: &str,
) -> (tracing_subscriber::EnvFilter, String, Option<String>) {
    let fallback = || tracing_subscriber::EnvFilter::new(level);
    match rust_log {
        Some(directives) if !directives.trim().is_empty() => {
            match tracing_subscriber::EnvFilter::try_new(&directives) {
                Ok(filter) => (filter, directives, None),
                Err(e) => (
                    fallback(),
                    level.to_string(),
                    Some(format!(
                        "RUST_LOG={directives:?} is not a valid filter ({e}); logging at {level}"
                    )),
                ),
            }
        }
        _ => (fallback(), level.to_string(), None),
    }
}

/// Installs `logs` and the layer that keeps trace context (`carried`): OpenTelemetry's when
/// spans are exported, else micro's.
fn install_layers(
    name: &str,
    logs: logs::Logs<impl tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>,
    carried: bool,
) -> Telemetry {
    if !carried {
        // OpenTelemetry's own off switch: logs only, no trace context carried or logged.
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Telemetry { provider: None };
    }
    let (exporter, problem) = match exporter() {
        Ok(exporter) => (exporter, None),
        Err(problem) => (None, Some(problem)),
    };
    let Some(exporter) = exporter else {
        // Nothing to export to: spans get their trace context from micro's own layer, which
        // keeps the ids and builds no OpenTelemetry span only to drop it.
        let _ = tracing_subscriber::registry()
            .with(logs)
            .with(crate::trace::PropagationLayer)
            .try_init();
        if let Some(problem) = problem {
            tracing::warn!("spans are not exported: {problem}");
        }
        return Telemetry { provider: None };
    };
    let provider = provider(name, exporter);
    // None of the layer's optional extras (source location, thread, busy/idle timings, the
    // thread-local OTel context): each is work on every call that the exporter does not need.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("micro"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        // Spans only (events would become span events: a copy of every log line in every
        // span), at info and above: the ones `logs` keeps whatever RUST_LOG says.
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && *meta.level() <= tracing::Level::INFO
        }));
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        tracing::debug!(service = %service_name(name), "exporting spans over OTLP");
    }
    Telemetry {
        provider: installed.then_some(provider),
    }
}

/// The tracer provider: ids, sampling (`OTEL_TRACES_SAMPLER`) and the exporter.
#[cfg(feature = "otlp")]
fn provider(name: &str, exporter: Exporter) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name(name))
                .build(),
        )
        .with_batch_exporter(exporter)
        .build()
}

/// Without the `otlp` feature there is never an exporter to build a provider for.
#[cfg(not(feature = "otlp"))]
fn provider(_name: &str, exporter: Exporter) -> SdkTracerProvider {
    match exporter {}
}

/// `OTEL_SDK_DISABLED=true`: no OpenTelemetry layer at all.
fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// `OTEL_SERVICE_NAME` when set, else `name`.
fn service_name(name: &str) -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| name.to_string())
}

#[cfg(feature = "otlp")]
type Exporter = opentelemetry_otlp::SpanExporter;

/// Without the `otlp` feature there is no exporter to build.
#[cfg(not(feature = "otlp"))]
type Exporter = std::convert::Infallible;

/// The OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, or why
/// it cannot be built.
fn exporter() -> Result<Option<Exporter>, String> {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|key| {
        std::env::var(key)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (key, v))
    });
    let Some((key, value)) = endpoint else {
        return Ok(None);
    };
    #[cfg(feature = "otlp")]
    {
        // The tonic channel is made (lazily) on the current runtime, which then drives it.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(format!(
                "{key} is set but logging was set up outside a tokio runtime; call \
                 micro_core::logging::init_service inside it"
            ));
        }
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map(Some)
            .map_err(|e| {
                format!(
                    "{key}={value} is not a usable OTLP/gRPC endpoint ({e}); set it to the \
                     collector's address, e.g. http://localhost:4317"
                )
            })
    }
    #[cfg(not(feature = "otlp"))]
    Err(format!(
        "{key}={value} is set but this binary was built without micro-core's `otlp` feature; \
         enable it to export spans"
    ))
}

/// Colour on a terminal unless `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::colour;

    /// A `MakeWriter` (through `Fn() -> impl io::Write`) appending every line to one buffer.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        /// Everything written so far.
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn a_bad_rust_log_is_named_and_the_default_level_used() {
        let (filter, directives, problem) =
            super::filter(Some("info,[unclosed=debug".into()), "warn");
        assert_eq!(filter.to_string(), "warn");
        assert_eq!(directives, "warn");
        let problem = problem.unwrap();
        assert!(
            problem.starts_with("RUST_LOG=\"info,[unclosed=debug\" is not a valid filter ("),
            "{problem}"
        );
        assert!(problem.ends_with("; logging at warn"), "{problem}");
        let (filter, directives, problem) = super::filter(Some("[http]=debug".into()), "info");
        assert_eq!((directives.as_str(), problem), ("[http]=debug", None));
        assert_eq!(filter.to_string(), "[http]=debug");
        assert_eq!(super::filter(None, "info").1, "info");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
