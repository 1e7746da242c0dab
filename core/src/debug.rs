//! CPU profiles of a live process, served over HTTP on `--debug-address`.
//!
//! - `GET /debug/pprof/profile?seconds=N` samples every thread's stack 99 times a second for N
//!   seconds (default 30, at most 300) and answers the gzipped `perftools.profiles.Profile`
//!   protobuf that `go tool pprof` and `pprof` read (`?format=svg` answers a flamegraph instead);
//! - `GET /debug/pprof/flamegraph?seconds=N` answers the same samples as an SVG flamegraph.
//!
//! One profile at a time (the sampler is process-wide): a second request while one runs gets
//! `409 Conflict`. Off unless `debug-address` is set, loopback only unless `debug-remote` is set
//! (a profile shows the code and its timing), and only in binaries built with micro-core's
//! `profiling` feature.

use std::net::SocketAddr;

use crate::Result;
use crate::options::Options;

/// The HTTP server of `/debug/pprof/*` on `debug-address`, while it is kept: dropping it stops
/// the listener and any profile being taken.
#[derive(Debug)]
pub struct DebugServer(crate::http_server::HttpServer);

impl DebugServer {
    /// The address the server listens on (the real port when `debug-address` asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.0.address()
    }
}

/// Serves profiles on `options.debug_address`; `None` when it is not set.
///
/// Errors when the binary was built without the `profiling` feature, when the address is not a
/// loopback address and `debug-remote` is not set, and when it cannot be bound.
pub async fn serve(options: &Options) -> Result<Option<DebugServer>> {
    let Some(address) = options.debug_address.as_deref() else {
        return Ok(None);
    };
    #[cfg(feature = "profiling")]
    {
        profiling::serve(address, options.debug_remote)
            .await
            .map(Some)
    }
    #[cfg(not(feature = "profiling"))]
    {
        Err(crate::Error::Option(format!(
            "--debug-address {address}: this binary was built without profiling; rebuild it \
             with micro-core's `profiling` feature (micro-core = {{ features = [\"profiling\"] \
             }}), or unset --debug-address / MICRO_DEBUG_ADDRESS"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(address: &str, remote: bool) -> Options {
        Options {
            debug_address: Some(address.to_string()),
            debug_remote: remote,
            ..Options::default()
        }
    }

    #[tokio::test]
    async fn off_unless_an_address_is_set() {
        assert!(serve(&Options::default()).await.unwrap().is_none());
    }

    #[cfg(not(feature = "profiling"))]
    #[tokio::test]
    async fn an_address_without_profiling_says_how_to_build_it() {
        let error = serve(&options("127.0.0.1:0", false)).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("--debug-address"), "{text}");
        assert!(text.contains("`profiling` feature"), "{text}");
    }

    #[cfg(feature = "profiling")]
    #[tokio::test]
    async fn loopback_only_unless_remote_and_closed_when_dropped() {
        let error = serve(&options("0.0.0.0:0", false)).await.unwrap_err();
        assert!(error.to_string().contains("--debug-remote"), "{error}");

        let server = serve(&options("127.0.0.1:0", false))
            .await
            .unwrap()
            .unwrap();
        let address = server.address();
        assert_ne!(address.port(), 0, "the real port, not the one asked for");
        tokio::net::TcpStream::connect(address).await.unwrap();
        drop(server);
        // The listener closes once the runtime drops the aborted task: poll for it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{address} still accepts after the server was dropped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        let remote = serve(&options("0.0.0.0:0", true)).await.unwrap().unwrap();
        assert!(remote.address().ip().is_unspecified());
    }
}

#[cfg(feature = "profiling")]
mod profiling {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::io::Write;
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode, header};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use tokio::net::TcpListener;
    use tokio::sync::Mutex;
    use tracing::Instrument;

    use super::DebugServer;
    use crate::http_server::HttpServer;
    use crate::{Error, Result};

    /// Samples per second. Not 100: a rate in lockstep with the 100 Hz timers of many programs
    /// would keep sampling the same moment of their loops.
    const FREQUENCY: i32 = 99;
    /// `seconds` when the request names none (Go's default).
    const DEFAULT_SECONDS: u64 = 30;
    /// The longest profile: a forgotten `seconds=86400` must not hold the sampler for a day.
    const MAX_SECONDS: u64 = 300;
    /// Libraries not unwound from the signal handler: unwinding through them can deadlock or
    /// crash (pprof-rs's advice).
    const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

    /// Held while a profile is taken. Process-wide, like the sampler itself: a gateway and a
    /// service in one process share it.
    static BUSY: Mutex<()> = Mutex::const_new(());

    type Reply = Response<Full<Bytes>>;

    pub(super) async fn serve(address: &str, remote: bool) -> Result<DebugServer> {
        let candidates: Vec<SocketAddr> = tokio::net::lookup_host(address)
            .await
            .map_err(|e| {
                Error::Option(format!(
                    "--debug-address {address}: not a HOST:PORT address to listen on ({e}); \
                     use e.g. 127.0.0.1:6060"
                ))
            })?
            .collect();
        if !remote && let Some(public) = candidates.iter().find(|a| !a.ip().is_loopback()) {
            return Err(Error::Option(format!(
                "--debug-address {address}: {} is not a loopback address, and profiles show \
                 the code and its timing; listen on 127.0.0.1, or pass --debug-remote \
                 (MICRO_DEBUG_REMOTE=true) to serve them beyond this machine",
                public.ip()
            )));
        }
        let listener = TcpListener::bind(candidates.as_slice())
            .await
            .map_err(|e| {
                Error::Option(format!(
                    "--debug-address {address}: cannot listen ({e}); choose a free port, or port \
                     0 for any"
                ))
            })?;
        let bound = listener.local_addr()?;
        tracing::info!(
            address = %bound,
            "serving CPU profiles: http://{bound}/debug/pprof/profile?seconds=30, \
             http://{bound}/debug/pprof/flamegraph?seconds=30"
        );
        Ok(DebugServer(HttpServer::spawn(
            listener,
            "debug server",
            handle,
        )))
    }

    async fn handle(request: Request<Incoming>) -> std::result::Result<Reply, Infallible> {
        let span = tracing::info_span!(
            "debug",
            method = %request.method(),
            path = %request.uri().path(),
            status = tracing::field::Empty,
        );
        let reply = route(&request).instrument(span.clone()).await;
        span.record("status", reply.status().as_u16());
        Ok(reply)
    }

    /// What a request asks for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Format {
        Pprof,
        Svg,
    }

    async fn route(request: &Request<Incoming>) -> Reply {
        let path = request.uri().path().trim_end_matches('/');
        let default = match path {
            "/debug/pprof" => return index(),
            "/debug/pprof/profile" => Format::Pprof,
            "/debug/pprof/flamegraph" => Format::Svg,
            _ => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no page {path}: {ENDPOINTS}"),
                );
            }
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut reply = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} {path}: profiles are read with GET", request.method()),
            );
            reply
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return reply;
        }
        let (seconds, format) = match parse_query(request.uri().query().unwrap_or(""), default) {
            Ok(parsed) => parsed,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        profile(seconds, format).await
    }

    const ENDPOINTS: &str = "the endpoints are /debug/pprof/profile?seconds=N (pprof protobuf, \
                             gzipped) and /debug/pprof/flamegraph?seconds=N (SVG)";

    fn index() -> Reply {
        text(
            StatusCode::OK,
            format!(
                "CPU profiles of this process: {ENDPOINTS}; N from 1 to {MAX_SECONDS}, \
                 {DEFAULT_SECONDS} by default.\n"
            ),
        )
    }

    /// `seconds` and `format` from the query; other parameters are ignored, as Go's pprof does.
    fn parse_query(query: &str, default: Format) -> std::result::Result<(u64, Format), String> {
        let mut seconds = DEFAULT_SECONDS;
        let mut format = default;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "seconds" => {
                    seconds = value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=MAX_SECONDS).contains(s))
                        .ok_or_else(|| {
                            format!(
                                "bad query parameter `seconds`: `{value}`: expected a whole number \
                                 of seconds from 1 to {MAX_SECONDS}"
                            )
                        })?;
                }
                "format" => {
                    format = match value {
                        "pprof" | "proto" => Format::Pprof,
                        "svg" | "flamegraph" => Format::Svg,
                        _ => {
                            return Err(format!(
                                "bad query parameter `format`: `{value}`: expected `pprof` or \
                                 `svg`"
                            ));
                        }
                    };
                }
                _ => {}
            }
        }
        Ok((seconds, format))
    }

    async fn profile(seconds: u64, format: Format) -> Reply {
        let Ok(_busy) = BUSY.try_lock() else {
            return text(
                StatusCode::CONFLICT,
                "a CPU profile is already being taken in this process (one at a time: the \
                 sampler is process-wide); retry when it ends"
                    .to_string(),
            );
        };
        let guard = match pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .blocklist(&BLOCKLIST)
            .build()
        {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the CPU profiler");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot start the CPU profiler: {e}"),
                );
            }
        };
        tracing::info!(seconds, ?format, "taking a CPU profile");
        // When the client goes away this future is dropped, and the guard with it: the
        // sampling stops then rather than at the end of `seconds`.
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        // Symbolizing every sampled address takes CPU time (and reads debug info from disk).
        let rendered = tokio::task::spawn_blocking(move || {
            // Copy the raw samples and stop sampling first: symbolizing them (reading debug
            // info, demangling) is the profiler's own work, not the process's.
            let unresolved = guard.report().build_unresolved();
            drop(guard);
            let report = resolve(unresolved.map_err(|e| format!("cannot read the samples: {e}"))?);
            let samples: isize = report.data.values().sum();
            let body = match format {
                Format::Pprof => gzip(&encode(&report))?,
                Format::Svg => flamegraph(&report)?,
            };
            Ok::<_, String>((samples, body))
        })
        .await
        .map_err(|e| format!("the profile's rendering failed: {e}"))
        .and_then(|rendered| rendered);
        match rendered {
            Ok((samples, body)) => {
                tracing::info!(samples, bytes = body.len(), "CPU profile taken");
                let (content_type, disposition) = match format {
                    Format::Pprof => (
                        "application/octet-stream",
                        "attachment; filename=\"profile\"",
                    ),
                    Format::Svg => ("image/svg+xml", "inline; filename=\"flamegraph.svg\""),
                };
                let mut reply = Response::new(Full::new(Bytes::from(body)));
                let headers = reply.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                headers.insert(
                    header::CONTENT_DISPOSITION,
                    header::HeaderValue::from_static(disposition),
                );
                reply
            }
            Err(message) => {
                tracing::error!(%message, "CPU profile failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }

    /// The samples with their functions' names, without the sampler's own frames.
    fn resolve(unresolved: pprof::UnresolvedReport) -> pprof::Report {
        let mut data: HashMap<pprof::Frames, isize> = HashMap::new();
        for (frames, count) in unresolved.data {
            let mut frames = pprof::Frames::from(frames);
            // Each stack starts (leaf first) with the signal handler's unwinder: pprof-rs drops
            // the handler's frame but not those above it, which would top every flame.
            let sampler = frames
                .frames
                .iter()
                .take_while(|frame| {
                    frame.iter().any(|symbol| {
                        let name = symbol.name();
                        name.starts_with("backtrace::") || name.contains("pprof::")
                    })
                })
                .count();
            frames.frames.drain(..sampler);
            if frames.frames.is_empty() {
                // The unwinder stopped at the signal frame: the CPU time was spent, where is
                // unknown. Kept under perf's name for it rather than dropped from the total.
                frames.frames.push(vec![pprof::Symbol {
                    name: Some(b"[unknown]".to_vec()),
                    addr: None,
                    lineno: None,
                    filename: None,
                }]);
            }
            *data.entry(frames).or_default() += count;
        }
        pprof::Report {
            data,
            timing: unresolved.timing,
        }
    }

    fn text(status: StatusCode, message: String) -> Reply {
        let mut body = message;
        if !body.ends_with('\n') {
            body.push('\n');
        }
        let mut reply = Response::new(Full::new(Bytes::from(body)));
        *reply.status_mut() = status;
        reply.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        reply
    }

    fn gzip(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder
            .write_all(bytes)
            .and_then(|()| encoder.finish())
            .map_err(|e| format!("cannot gzip the profile: {e}"))
    }

    fn flamegraph(report: &pprof::Report) -> std::result::Result<Vec<u8>, String> {
        if report.data.is_empty() {
            // inferno refuses an empty graph; an empty profile (an idle process) is still an
            // answer, and an SVG is what the caller's viewer expects.
            return Ok(
                b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
                <text x=\"10\" y=\"25\">no samples: the process used no CPU time while \
                profiled</text></svg>\n"
                    .to_vec(),
            );
        }
        let mut svg = Vec::new();
        report
            .flamegraph(&mut svg)
            .map_err(|e| format!("cannot draw the flamegraph: {e}"))?;
        Ok(svg)
    }

    /// The report as a `perftools.profiles.Profile` (google/pprof's profile.proto).
    ///
    /// Encoded here rather than by pprof-rs's `prost-codec`, which would bring a second prost
    /// (0.12) into the tree.
    fn encode(report: &pprof::Report) -> Vec<u8> {
        use prost::Message;

        let mut strings = Strings::default();
        let samples_type = proto::ValueType {
            r#type: strings.intern("samples"),
            unit: strings.intern("count"),
        };
        let cpu_type = proto::ValueType {
            r#type: strings.intern("cpu"),
            unit: strings.intern("nanoseconds"),
        };
        let thread_key = strings.intern("thread");
        let frequency = i64::from(report.timing.frequency.max(1));
        let period = 1_000_000_000 / frequency;

        let mut functions: HashMap<(String, String), u64> = HashMap::new();
        let mut locations: HashMap<(u64, u32), u64> = HashMap::new();
        let mut profile = proto::Profile {
            sample_type: vec![samples_type, cpu_type],
            period_type: Some(cpu_type),
            period,
            time_nanos: report
                .timing
                .start_time
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or_default(),
            duration_nanos: i64::try_from(report.timing.duration.as_nanos()).unwrap_or(i64::MAX),
            ..Default::default()
        };
        for (frames, &count) in &report.data {
            let mut location_ids = Vec::new();
            // Leaf first, as profile.proto wants; a frame's inlined functions come innermost
            // first, each its own location.
            for symbol in frames.frames.iter().flatten() {
                let name = symbol.name();
                let filename = symbol.filename().into_owned();
                let next_function = profile.function.len() as u64 + 1;
                let function_id = *functions
                    .entry((name.clone(), filename.clone()))
                    .or_insert(next_function);
                if function_id == next_function {
                    profile.function.push(proto::Function {
                        id: function_id,
                        name: strings.intern(&name),
                        system_name: strings.intern(&symbol.sys_name()),
                        filename: strings.intern(&filename),
                        start_line: 0,
                    });
                }
                let line = symbol.lineno();
                let next_location = profile.location.len() as u64 + 1;
                let location_id = *locations
                    .entry((function_id, line))
                    .or_insert(next_location);
                if location_id == next_location {
                    profile.location.push(proto::Location {
                        id: location_id,
                        line: vec![proto::Line {
                            function_id,
                            line: i64::from(line),
                        }],
                        ..Default::default()
                    });
                }
                location_ids.push(location_id);
            }
            let count = count as i64;
            profile.sample.push(proto::Sample {
                location_id: location_ids,
                value: vec![count, count.saturating_mul(period)],
                label: vec![proto::Label {
                    key: thread_key,
                    str: strings.intern(&frames.thread_name_or_id()),
                    ..Default::default()
                }],
            });
        }
        profile.string_table = strings.table;
        profile.encode_to_vec()
    }

    /// profile.proto's string table: each string once, referred to by index; index 0 is "".
    struct Strings {
        table: Vec<String>,
        index: HashMap<String, i64>,
    }

    impl Default for Strings {
        fn default() -> Self {
            Strings {
                table: vec![String::new()],
                index: HashMap::from([(String::new(), 0)]),
            }
        }
    }

    impl Strings {
        fn intern(&mut self, text: &str) -> i64 {
            if let Some(&index) = self.index.get(text) {
                return index;
            }
            let index = self.table.len() as i64;
            self.table.push(text.to_string());
            self.index.insert(text.to_string(), index);
            index
        }
    }

    /// The messages of google/pprof's `proto/profile.proto` (package `perftools.profiles`) that
    /// a CPU profile uses; field numbers as there.
    mod proto {
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Profile {
            #[prost(message, repeated, tag = "1")]
            pub(super) sample_type: Vec<ValueType>,
            #[prost(message, repeated, tag = "2")]
            pub(super) sample: Vec<Sample>,
            #[prost(message, repeated, tag = "4")]
            pub(super) location: Vec<Location>,
            #[prost(message, repeated, tag = "5")]
            pub(super) function: Vec<Function>,
            #[prost(string, repeated, tag = "6")]
            pub(super) string_table: Vec<String>,
            #[prost(int64, tag = "9")]
            pub(super) time_nanos: i64,
            #[prost(int64, tag = "10")]
            pub(super) duration_nanos: i64,
            #[prost(message, optional, tag = "11")]
            pub(super) period_type: Option<ValueType>,
            #[prost(int64, tag = "12")]
            pub(super) period: i64,
        }

        #[derive(Clone, Copy, PartialEq, prost::Message)]
        pub(super) struct ValueType {
            #[prost(int64, tag = "1")]
            pub(super) r#type: i64,
            #[prost(int64, tag = "2")]
            pub(super) unit: i64,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Sample {
            #[prost(uint64, repeated, tag = "1")]
            pub(super) location_id: Vec<u64>,
            #[prost(int64, repeated, tag = "2")]
            pub(super) value: Vec<i64>,
            #[prost(message, repeated, tag = "3")]
            pub(super) label: Vec<Label>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Label {
            #[prost(int64, tag = "1")]
            pub(super) key: i64,
            #[prost(int64, tag = "2")]
            pub(super) str: i64,
            #[prost(int64, tag = "3")]
            pub(super) num: i64,
            #[prost(int64, tag = "4")]
            pub(super) num_unit: i64,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Location {
            #[prost(uint64, tag = "1")]
            pub(super) id: u64,
            #[prost(uint64, tag = "2")]
            pub(super) mapping_id: u64,
            #[prost(uint64, tag = "3")]
            pub(super) address: u64,
            #[prost(message, repeated, tag = "4")]
            pub(super) line: Vec<Line>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Line {
            #[prost(uint64, tag = "1")]
            pub(super) function_id: u64,
            #[prost(int64, tag = "2")]
            pub(super) line: i64,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct Function {
            #[prost(uint64, tag = "1")]
            pub(super) id: u64,
            #[prost(int64, tag = "2")]
            pub(super) name: i64,
            #[prost(int64, tag = "3")]
            pub(super) system_name: i64,
            #[prost(int64, tag = "4")]
            pub(super) filename: i64,
            #[prost(int64, tag = "5")]
            pub(super) start_line: i64,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn seconds_default_and_bounds() {
            assert_eq!(
                parse_query("", Format::Pprof),
                Ok((DEFAULT_SECONDS, Format::Pprof))
            );
            assert_eq!(
                parse_query("seconds=2&format=svg", Format::Pprof),
                Ok((2, Format::Svg))
            );
            for bad in [
                "seconds=0",
                "seconds=301",
                "seconds=abc",
                "seconds=",
                "seconds=-1",
            ] {
                let error = parse_query(bad, Format::Pprof).unwrap_err();
                assert!(error.contains("`seconds`"), "{bad}: {error}");
            }
            let error = parse_query("format=json", Format::Pprof).unwrap_err();
            assert!(error.contains("`format`"), "{error}");
        }

        #[test]
        fn strings_start_with_the_empty_string_and_repeat_nothing() {
            let mut strings = Strings::default();
            assert_eq!(strings.intern(""), 0);
            assert_eq!(strings.intern("cpu"), 1);
            assert_eq!(strings.intern("cpu"), 1);
            assert_eq!(strings.table, ["", "cpu"]);
        }
    }
}
