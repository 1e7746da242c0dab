//! Trace context for spans when nothing is exported: each span gets a span id and its trace's id
//! (its parent's, or a new one at a root), kept in the span's extensions, and nothing else.
//!
//! Without an exporter an OpenTelemetry span is built only to be dropped: `tracing-opentelemetry`
//! records every field as an attribute, the SDK samples, builds and ends the span, and exiting a
//! span takes a lock and the time. Measured with callgrind (the client bench), a span cost ~14 000
//! instructions more than a disabled one with that layer, ~6 500 with this one — what is left is
//! an enabled span in `tracing-subscriber`'s registry; this layer's own work is a few hundred.
//! What a process without an exporter needs is the ids: to pass the trace on to the services it
//! calls and to put `trace_id` on its log lines. This layer keeps just those, in the same
//! [`SpanContext`] form the OpenTelemetry layer would. [`crate::logging`] installs it instead of
//! the OpenTelemetry layer when no exporter is configured.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Gives every span at `INFO` and above a [`SpanContext`]: its nearest such ancestor's trace
/// (id, sampled flag and trace state) with a span id of its own, or a new sampled trace at a
/// root. Debug and trace spans (when `RUST_LOG` enables them) get none: a trace carries the
/// spans a process always has, whatever it logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagationLayer;

/// The trace context of one span, in its extensions.
struct Ids(SpanContext);

impl<S> Layer<S> for PropagationLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Checked here rather than by a per-layer filter, which the subscriber would consult on
        // every enter, exit and close of every span (see `logging/logs.rs`).
        if *attributes.metadata().level() > tracing::Level::INFO {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        // The nearest ancestor with trace context (explicit or contextual parent, as the
        // registry resolves it), skipping debug spans between.
        let inherited = span.parent().and_then(nearest);
        let context = match inherited {
            Some(parent) => SpanContext::new(
                parent.trace_id(),
                new_span_id(),
                parent.trace_flags(),
                false,
                parent.trace_state().clone(),
            ),
            None => SpanContext::new(
                TraceId::from(fastrand::u128(1..)),
                new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
        };
        span.extensions_mut().insert(Ids(context));
    }
}

fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

/// The trace context this layer gave `id` or, if it filtered `id` out (a debug span, say), the
/// nearest ancestor it did not; `None` when the layer is not installed in `dispatch`.
pub(super) fn context(dispatch: &Dispatch, id: &Id) -> Option<SpanContext> {
    nearest(dispatch.downcast_ref::<Registry>()?.span(id)?)
}

/// The trace context of `span` or of its nearest ancestor that has one. Walked by parent
/// rather than with `scope()`, which would look `span` up in the registry a second time.
fn nearest<R: for<'a> LookupSpan<'a>>(
    span: tracing_subscriber::registry::SpanRef<'_, R>,
) -> Option<SpanContext> {
    let mut next = Some(span);
    while let Some(span) = next {
        if let Some(ids) = span.extensions().get::<Ids>() {
            return Some(ids.0.clone());
        }
        next = span.parent();
    }
    None
}

/// Makes span `id` part of `parent`'s trace (keeping its own span id), when this layer gave it
/// a context: false when it did not (the layer is not installed, or filtered the span out).
/// Spans already opened under `id` keep the trace they started with, so this is for a span not
/// yet entered.
pub(super) fn set_parent(dispatch: &Dispatch, id: &Id, parent: &SpanContext) -> bool {
    let Some(span) = dispatch
        .downcast_ref::<Registry>()
        .and_then(|registry| registry.span(id))
    else {
        return false;
    };
    let mut extensions = span.extensions_mut();
    let Some(ids) = extensions.get_mut::<Ids>() else {
        return false;
    };
    ids.0 = SpanContext::new(
        parent.trace_id(),
        ids.0.span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    );
    true
}
