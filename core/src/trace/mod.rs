//! W3C trace context across processes: the `traceparent` and `tracestate` headers of gRPC calls
//! and broker messages (<https://www.w3.org/TR/trace-context/>).
//!
//! A server call's `handle` span continues the caller's trace ([`handler_span`]); every outgoing
//! client call carries the current span's context ([`inject`]), so a handler calling another
//! service continues the same trace; a published message carries it in its headers
//! ([`inject_message`]) and its delivery continues it ([`message_span`]). The gateway continues
//! an HTTP client's trace the same way ([`TraceStart`]).
//!
//! The span ids come from the layer [`crate::logging`] installs: OpenTelemetry's when spans are
//! exported, else micro's [`PropagationLayer`], which keeps only the ids. A library user with a
//! subscriber of their own gets them from OpenTelemetry's layer if it has one; without either,
//! these functions carry nothing and cost a lookup: a trace is never invented where nobody can
//! see it.

mod layer;

pub use layer::PropagationLayer;

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tonic::body::Body;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::broker::Message;

/// The W3C header carrying the trace id, the parent span id and the sampled flag.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C header carrying vendors' trace state, passed on as it came.
pub const TRACESTATE: &str = "tracestate";

const TRACEPARENT_HEADER: http::HeaderName = http::HeaderName::from_static(TRACEPARENT);
const TRACESTATE_HEADER: http::HeaderName = http::HeaderName::from_static(TRACESTATE);

/// The span a server handles one call in, continuing the caller's trace when the request
/// carries one (its `traceparent` header). Its `trace_id` field puts the trace id on every log
/// line written inside the call.
pub fn handler_span(request: &http::Request<Body>, service: &str, node: &str) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&crate::grpc::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let trace = TraceStart::from_headers(request.headers());
    let span = tracing::info_span!(
        "handle",
        service = %service,
        node = %node,
        endpoint = %request.uri().path(),
        request_id = %request_id,
        trace_id = trace.trace_id(),
        otel.kind = "server",
    );
    trace.start(&span);
    span
}

/// The trace a request's span goes in: the caller's, when the request carries a valid
/// `traceparent` (and its `tracestate`), or a new one. Found before the span is made, so that
/// the span can be given its `trace_id` field at creation: a field recorded afterwards costs
/// the log layer a second pass over the span.
///
/// ```
/// # let headers = http::HeaderMap::new();
/// let trace = micro_core::trace::TraceStart::from_headers(&headers);
/// let span = tracing::info_span!("http", trace_id = trace.trace_id());
/// trace.start(&span);
/// ```
#[derive(Debug)]
pub struct TraceStart {
    /// The caller's span, when the request continues a trace.
    parent: Option<SpanContext>,
    /// A new trace's id, chosen here when micro's own [`PropagationLayer`] keeps trace context
    /// (OpenTelemetry's layer picks a new trace's id itself; it is recorded once the span
    /// exists then).
    new: Option<TraceId>,
    /// The trace id as 32 hex digits, when it is known before the span is made: the caller's,
    /// or the new one.
    digits: Option<[u8; 32]>,
}

impl TraceStart {
    /// The trace that a request with `headers` goes in.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        Self::from_carrier(&HeaderExtractor(headers))
    }

    fn from_carrier(carrier: &dyn Extractor) -> Self {
        let parent = carrier
            .get(TRACEPARENT)
            .map(str::trim)
            .and_then(|traceparent| remote_parent(traceparent, carrier));
        let own = tracing::dispatcher::get_default(|dispatch| {
            dispatch.downcast_ref::<PropagationLayer>().is_some()
        });
        let new = (own && parent.is_none()).then(|| TraceId::from(fastrand::u128(1..)));
        let digits = parent
            .as_ref()
            .map(SpanContext::trace_id)
            .or(new)
            .map(trace_digits);
        TraceStart {
            parent,
            new,
            digits,
        }
    }

    /// The value to give the span's `trace_id` field when it is made (`None` when the span's
    /// trace is not known until then).
    pub fn trace_id(&self) -> Option<&str> {
        self.digits.as_ref().map(digits_str)
    }

    /// Puts `span` — made with [`trace_id`](Self::trace_id) as its `trace_id` field, and not yet
    /// entered — in this trace.
    pub fn start(&self, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        match (&self.parent, self.new) {
            // Fails only when no layer keeps trace context: nothing to continue then.
            (Some(parent), _) => {
                set_parent(span, parent.clone());
            }
            // A new trace, whose id the span was given: micro's layer takes it in place of its
            // own pick (the span keeps its span id).
            (None, Some(new)) => {
                let trace = SpanContext::new(
                    new,
                    SpanId::INVALID,
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::NONE,
                );
                span.with_subscriber(|(id, dispatch)| layer::set_parent(dispatch, id, &trace));
            }
            // A new trace under OpenTelemetry's layer, which chose its id with the span.
            (None, None) => record_trace_id(span),
        }
    }
}

/// `id` as the 32 lowercase hex digits of logs and `traceparent`.
fn trace_digits(id: TraceId) -> [u8; 32] {
    let mut digits = [0u8; 32];
    write_hex(&id.to_bytes(), &mut digits);
    digits
}

/// The digits [`trace_digits`] wrote, as text (hex digits are always valid UTF-8).
fn digits_str(digits: &[u8; 32]) -> &str {
    std::str::from_utf8(digits).unwrap_or_default()
}

/// The caller's span that `traceparent` (and the carrier's `tracestate`) names, when the header
/// is well formed and its ids are not all zero (W3C: start a new trace then, as for a malformed
/// header).
fn remote_parent(traceparent: &str, carrier: &dyn Extractor) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
    // A malformed tracestate is dropped, the trace continued (as the SDK's propagator does).
    let state = carrier
        .get(TRACESTATE)
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    // Version 00 defines only the sampled flag.
    let flags = TraceFlags::new(flags) & TraceFlags::SAMPLED;
    let parent = SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        flags,
        true,
        state,
    );
    parent.is_valid().then_some(parent)
}

/// Writes the current span's trace context into an outgoing call's headers, replacing any
/// `traceparent`/`tracestate` already there (a forwarded client header must not outlive the
/// hop that continued it).
pub fn inject(headers: &mut http::HeaderMap) {
    inject_into(&mut HeaderInjector(headers));
}

/// Writes the current span's trace context into a message's headers before it is published.
pub fn inject_message(message: &mut Message) {
    inject_into(&mut MapInjector(&mut message.header));
}

/// Writes the current span's context into `carrier`, when there is one.
fn inject_into(carrier: &mut dyn Injector) {
    // Asked by id first: `Span::current()` clones the span and closes the clone, which costs
    // more than the lookup itself on every outgoing call. Only without micro's layer (spans
    // exported by OpenTelemetry's) is the span itself needed.
    let own = tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        layer::context(dispatch, current.id()?)
    });
    let Some(span_context) = own.or_else(|| exported_context(&tracing::Span::current())) else {
        return;
    };
    carrier.set(TRACEPARENT, traceparent(&span_context));
    let state = span_context.trace_state();
    if *state != TraceState::NONE {
        let header = state.header();
        if !header.is_empty() {
            carrier.set(TRACESTATE, header);
        }
    }
}

/// `00-<trace id>-<span id>-<flags>` of `span_context`, written without the formatting
/// machinery: it runs on every outgoing call.
fn traceparent(span_context: &SpanContext) -> String {
    let mut header = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let flags = [(span_context.trace_flags() & TraceFlags::SAMPLED).to_u8()];
    write_hex(&span_context.trace_id().to_bytes(), &mut header[3..35]);
    write_hex(&span_context.span_id().to_bytes(), &mut header[36..52]);
    write_hex(&flags, &mut header[53..55]);
    // ASCII digits and dashes only: always valid UTF-8.
    String::from_utf8(header.to_vec()).unwrap_or_default()
}

/// Writes `bytes` as lowercase hex digits into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// The span a subscriber handles `message` in, continuing the publisher's trace when the
/// message carries one.
pub fn message_span(topic: &str, message: &Message) -> tracing::Span {
    let trace = TraceStart::from_carrier(&MapExtractor(&message.header));
    let span = tracing::info_span!(
        "deliver",
        %topic,
        trace_id = trace.trace_id(),
        otel.kind = "consumer",
    );
    trace.start(&span);
    span
}

/// The trace id of `span` as 32 lowercase hex digits, or `None` when it has no trace context
/// (no OpenTelemetry layer installed, or the span is disabled).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    span_context(span).map(|context| context.trace_id().to_string())
}

/// Whether `span`'s fields may go further than the logs, as the attributes of an exported span:
/// false when micro's own [`PropagationLayer`] keeps trace context, which `logging` installs only
/// when nothing is exported. A field recorded for the exporter alone can be skipped then.
pub fn exported(span: &tracing::Span) -> bool {
    span.with_subscriber(|(_, dispatch)| dispatch.downcast_ref::<PropagationLayer>().is_none())
        .unwrap_or(false)
}

/// The trace context of `span`, from whichever layer keeps it.
fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    if let Some(own) = span
        .with_subscriber(|(id, dispatch)| layer::context(dispatch, id))
        .flatten()
    {
        return Some(own);
    }
    exported_context(span)
}

/// The trace context OpenTelemetry's layer gave `span`, if that layer is installed.
fn exported_context(span: &tracing::Span) -> Option<SpanContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Makes `span` (not yet entered) part of `parent`'s trace, in whichever layer keeps trace
/// context: false when none does.
fn set_parent(span: &tracing::Span, parent: SpanContext) -> bool {
    let own = span
        .with_subscriber(|(id, dispatch)| layer::set_parent(dispatch, id, &parent))
        .unwrap_or(false);
    own || OpenTelemetrySpanExt::set_parent(
        span,
        opentelemetry::Context::new().with_remote_span_context(parent),
    )
    .is_ok()
}

/// The trace id, parent span id and flags of a W3C `traceparent`, when it has the shape
/// `version-traceid-parentid-flags`: 2, 32, 16 and 2 lowercase hex digits, version `ff`
/// forbidden, and for version `00` nothing after the flags (a later version may add fields
/// after another dash). The SDK's propagator pads short ids with zeros, so a truncated header
/// would be continued as a different trace: checked here, in one pass, as it runs on every call.
fn parse_traceparent(traceparent: &str) -> Option<(u128, u64, u8)> {
    let bytes = traceparent.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let version = hex(&bytes[..2])?;
    if version == 0xff || (bytes.len() > 55 && (version == 0 || bytes[55] != b'-')) {
        return None;
    }
    Some((
        hex(&bytes[3..35])?,
        u64::try_from(hex(&bytes[36..52])?).ok()?,
        u8::try_from(hex(&bytes[53..55])?).ok()?,
    ))
}

/// The value of `digits` (at most 32 lowercase hex digits), or `None` if one is not.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let digit = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(digit))
    })
}

fn record_trace_id(span: &tracing::Span) {
    // On every call that starts a trace: written by hand, not through `fmt` (as in `trace_id`).
    if let Some(context) = span_context(span) {
        span.record("trace_id", digits_str(&trace_digits(context.trace_id())));
    }
}

/// Reads the propagator's keys from HTTP headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Our two names as constants: looked up without parsing the name on every call.
        let value = match key {
            TRACEPARENT => self.0.get(&TRACEPARENT_HEADER),
            TRACESTATE => self.0.get(&TRACESTATE_HEADER),
            other => self.0.get(other),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Reads the propagator's keys from a message's headers.
struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the propagator's keys into a message's headers, replacing earlier values.
struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// Writes the propagator's keys into HTTP headers, replacing earlier values.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Our two names, known statically (no copy of the name per call); a value that is
        // not a valid header is skipped rather than sent half-formed.
        let name = match key {
            TRACEPARENT => Ok(TRACEPARENT_HEADER),
            TRACESTATE => Ok(TRACESTATE_HEADER),
            other => http::HeaderName::from_bytes(other.as_bytes()),
        };
        if let (Ok(name), Ok(mut value)) = (name, http::HeaderValue::try_from(value)) {
            // A new value on every call: HTTP/2's header compression would add each one to its
            // table, pushing out the headers that do repeat (content-type, te, grpc-timeout)
            // on both ends. Sensitive values are sent as never-indexed literals instead.
            value.set_sensitive(true);
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// Runs `test` with each layer that keeps trace context: OpenTelemetry's (spans exported)
    /// and micro's own (nothing exported), filtered to info spans as `logging` installs them.
    fn with_layer(test: impl Fn()) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let exporting = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(exporting, &test);
        let propagating = tracing_subscriber::registry().with(PropagationLayer.with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && *meta.level() <= tracing::Level::INFO
            }),
        ));
        tracing::subscriber::with_default(propagating, &test);
    }

    #[test]
    fn a_call_made_in_a_span_the_layer_does_not_see_carries_the_enclosing_trace() {
        // The debug span exists (logs at debug are on) but is not the propagation layer's.
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .with(
                PropagationLayer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    *meta.level() <= tracing::Level::INFO
                })),
            );
        tracing::subscriber::with_default(subscriber, || {
            let span = handler_span(&request(Some(PARENT)), "greeter", "n1");
            let inner = span.in_scope(|| tracing::debug_span!("detail"));
            let sent = inner.in_scope(injected);
            assert!(
                sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{sent}"
            );
            assert_eq!(trace_id(&inner), trace_id(&span));
        });
    }

    #[test]
    fn each_span_has_its_own_id_and_a_root_starts_a_new_trace() {
        with_layer(|| {
            let first = tracing::info_span!("root");
            let second = tracing::info_span!("root");
            assert_ne!(trace_id(&first), trace_id(&second));
            let child = first.in_scope(|| tracing::info_span!("child"));
            assert_eq!(trace_id(&child), trace_id(&first));
            let (from_first, from_child) = (first.in_scope(injected), child.in_scope(injected));
            assert_eq!(from_first[..36], from_child[..36], "one trace");
            assert_ne!(from_first[36..52], from_child[36..52], "two span ids");
            assert!(
                from_first.ends_with("-01"),
                "a new trace is sampled: {from_first}"
            );
        });
    }

    fn request(traceparent: Option<&str>) -> http::Request<Body> {
        let mut request = http::Request::new(Body::empty());
        if let Some(value) = traceparent {
            request
                .headers_mut()
                .insert(TRACEPARENT, http::HeaderValue::from_str(value).unwrap());
        }
        request
    }

    fn injected() -> String {
        let mut headers = http::HeaderMap::new();
        inject(&mut headers);
        headers
            .get(TRACEPARENT)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_call_continues_the_callers_trace_with_a_span_of_its_own() {
        with_layer(|| {
            let span = handler_span(&request(Some(PARENT)), "greeter", "n1");
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("0af7651916cd43dd8448eb211c80319c")
            );
            let sent = span.in_scope(injected);
            let parts: Vec<&str> = sent.split('-').collect();
            assert_eq!(parts.len(), 4, "{sent}");
            assert_eq!(parts[1], "0af7651916cd43dd8448eb211c80319c");
            assert_ne!(
                parts[2], "b7ad6b7169203331",
                "the handle span's own id goes on"
            );
            assert_eq!(parts[3], "01");
        });
    }

    #[test]
    fn a_new_traces_id_is_logged_as_the_span_has_it() {
        let buffer = crate::logging::tests::Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .with(PropagationLayer);
        tracing::subscriber::with_default(subscriber, || {
            for traceparent in [None, Some("not a trace")] {
                let span = handler_span(&request(traceparent), "greeter", "n1");
                let id = trace_id(&span).expect("a new trace");
                span.in_scope(|| tracing::warn!("inside"));
                let text = buffer.text();
                let line = text.lines().last().unwrap_or_default();
                // tracing's own formatter quotes a `str` field.
                assert!(
                    line.contains(&format!("trace_id=\"{id}\"")),
                    "{id} in {line}"
                );
            }
        });
    }

    #[test]
    fn spans_are_exported_only_without_micros_own_layer() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let exporting = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(exporting, || {
            assert!(exported(&tracing::info_span!("http")));
        });
        let propagating = tracing_subscriber::registry().with(PropagationLayer);
        tracing::subscriber::with_default(propagating, || {
            assert!(!exported(&tracing::info_span!("http")));
        });
        assert!(
            !exported(&tracing::Span::none()),
            "a disabled span goes nowhere"
        );
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        with_layer(|| {
            for bad in [
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
                "00-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-7ad6b7169203331-01",
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "not a trace",
            ] {
                let span = handler_span(&request(Some(bad)), "greeter", "n1");
                let id = trace_id(&span).expect("a new trace");
                assert_ne!(id, "0af7651916cd43dd8448eb211c80319c", "{bad}");
                assert_ne!(id, "00000000000000000000000000000000", "{bad}");
            }
        });
    }

    #[test]
    fn the_callers_trace_state_goes_on_with_the_trace() {
        with_layer(|| {
            let mut request = request(Some(PARENT));
            request.headers_mut().insert(
                TRACESTATE,
                http::HeaderValue::from_static("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            );
            let span = handler_span(&request, "greeter", "n1");
            let mut headers = http::HeaderMap::new();
            span.in_scope(|| inject(&mut headers));
            assert_eq!(
                headers.get(TRACESTATE).and_then(|v| v.to_str().ok()),
                Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
            );
            let sent = headers.get(TRACEPARENT).expect("traceparent");
            assert!(
                sent.is_sensitive(),
                "a per-call value stays out of HPACK's table"
            );
            assert!(
                parse_traceparent(sent.to_str().expect("ASCII")).is_some(),
                "{sent:?}"
            );
            // Without a tracestate, none is sent.
            let span = handler_span(&self::request(Some(PARENT)), "greeter", "n1");
            let mut headers = http::HeaderMap::new();
            span.in_scope(|| inject(&mut headers));
            assert!(headers.get(TRACESTATE).is_none());
        });
    }

    #[test]
    fn an_unsampled_caller_is_continued_unsampled() {
        with_layer(|| {
            let span = handler_span(
                &request(Some(
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                )),
                "greeter",
                "n1",
            );
            let sent = span.in_scope(injected);
            assert!(
                sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && sent.ends_with("-00"),
                "{sent}"
            );
        });
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        assert!(parse_traceparent(PARENT).is_some());
        assert!(
            parse_traceparent(
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next"
            )
            .is_some()
        );
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01what-comes-next",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_message_carries_the_trace_to_its_delivery() {
        with_layer(|| {
            let span = handler_span(&request(Some(PARENT)), "relay", "n1");
            let mut message = Message::new("hi");
            span.in_scope(|| inject_message(&mut message));
            let header = message.header.get(TRACEPARENT).cloned().unwrap_or_default();
            assert!(
                header.contains("0af7651916cd43dd8448eb211c80319c"),
                "{header}"
            );
            let delivery = message_span("greeted", &message);
            assert_eq!(
                trace_id(&delivery).as_deref(),
                Some("0af7651916cd43dd8448eb211c80319c")
            );
        });
    }

    #[test]
    fn without_the_layer_nothing_is_carried() {
        let span = handler_span(&request(Some(PARENT)), "greeter", "n1");
        assert_eq!(trace_id(&span), None);
        assert_eq!(span.in_scope(injected), "");
        let mut message = Message::new("hi");
        inject_message(&mut message);
        assert!(message.header.is_empty());
    }
}
