//! One call being recorded, and the gRPC code it ends with: from the response headers for a
//! trailers-only answer, else from the trailers at the end of the body. A body dropped before
//! its end was abandoned by the peer: `CANCELLED`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;

use super::family::{Counter, Gauge, Histogram, Series};
use super::{CLIENT_CALLS, CLIENT_LATENCY, SERVER_IN_FLIGHT, SERVER_LATENCY, SERVER_REQUESTS};

/// The endpoint label of calls to a method the server does not have: one label for all of them,
/// so arbitrary paths sent by clients cannot grow the set of series.
pub(crate) const UNKNOWN_ENDPOINT: &str = "unknown";

/// The endpoints a server keeps the series of: a service has a few methods, and only paths it
/// answered as a method are kept, so this bounds what a catch-all handler could add.
pub(super) const SERVER_ENDPOINTS: usize = 256;

/// The endpoints a client keeps the series of per node (a node sees the few methods called).
pub(super) const NODE_ENDPOINTS: usize = 64;

/// The gRPC codes, `OK` (0) to `UNAUTHENTICATED` (16): a code indexes its counter.
const CODES: usize = 17;

/// The series of one endpoint, on a server or of calls to one node, found in their families
/// the first time each is needed (none is created before a call ends with it).
pub(crate) struct Endpoint {
    service: Arc<str>,
    endpoint: Arc<str>,
    /// The node called, on a client; none on a server.
    node: Option<Arc<str>>,
    latency: OnceLock<Arc<Series<Histogram>>>,
    /// By code.
    calls: [OnceLock<Arc<Series<Counter>>>; CODES],
}

impl Endpoint {
    /// The series of `endpoint` on `service`, on a server, or of the calls to `node`.
    pub(super) fn new(service: Arc<str>, endpoint: Arc<str>, node: Option<Arc<str>>) -> Self {
        Endpoint {
            service,
            endpoint,
            node,
            latency: OnceLock::new(),
            calls: [const { OnceLock::new() }; CODES],
        }
    }

    /// Counts one call that ended with `code` after `elapsed`.
    fn record(&self, code: Code, elapsed: Duration) {
        let (service, endpoint) = (&*self.service, &*self.endpoint);
        let name = crate::grpc::code_name(code);
        let calls = |code: &str| match &self.node {
            None => SERVER_REQUESTS.series(&[service, endpoint, code]),
            Some(node) => CLIENT_CALLS.series(&[service, endpoint, node, code]),
        };
        match self.calls.get(code as usize) {
            Some(cell) => cell.get_or_init(|| calls(name)).inc(),
            None => calls(name).inc(),
        }
        self.latency
            .get_or_init(|| match &self.node {
                None => SERVER_LATENCY.series(&[service, endpoint]),
                Some(node) => CLIENT_LATENCY.series(&[service, endpoint, node]),
            })
            .observe(elapsed);
    }
}

/// Endpoints by gRPC path, up to a bound: read by every call, written once per path.
struct Endpoints {
    by_path: RwLock<HashMap<Arc<str>, Arc<Endpoint>, PathHash>>,
    bound: usize,
}

impl Endpoints {
    fn new(bound: usize) -> Self {
        Endpoints {
            by_path: RwLock::new(HashMap::with_hasher(PathHash(fastrand::u64(..)))),
            bound,
        }
    }

    fn get(&self, path: &str) -> Option<Arc<Endpoint>> {
        // Nothing panics while this lock is held; a poisoned one still holds endpoints.
        let by_path = self.by_path.read().unwrap_or_else(|p| p.into_inner());
        by_path.get(path).cloned()
    }

    /// The endpoint of `path`, made by `new` and kept unless the bound is reached.
    fn add(&self, path: &str, new: impl FnOnce(Arc<str>) -> Endpoint) -> Arc<Endpoint> {
        let mut by_path = self.by_path.write().unwrap_or_else(|p| p.into_inner());
        if let Some(endpoint) = by_path.get(path) {
            return endpoint.clone();
        }
        let path: Arc<str> = path.into();
        let endpoint = Arc::new(new(path.clone()));
        if by_path.len() < self.bound {
            by_path.insert(path, endpoint.clone());
        }
        endpoint
    }
}

/// A word-at-a-time multiplicative hash (as rustc's FxHash) of paths, seeded per map: SipHash
/// took ~200 instructions a call to hash a gRPC path. Few keys, chosen by the server's answers
/// or the caller's code, so flooding is no concern; the seed keeps collisions unpredictable.
#[derive(Clone)]
struct PathHash(u64);

impl std::hash::BuildHasher for PathHash {
    type Hasher = PathHasher;
    fn build_hasher(&self) -> PathHasher {
        PathHasher(self.0)
    }
}

/// The state of [`PathHash`].
struct PathHasher(u64);

impl PathHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0; 8];
        word[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        // The multiply mixes into the high bits; the table indexes by the low ones.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
impl Endpoints {
    /// The paths kept, sorted.
    fn paths(&self) -> Vec<String> {
        let by_path = self.by_path.read().unwrap_or_else(|p| p.into_inner());
        let mut paths: Vec<String> = by_path.keys().map(|p| p.to_string()).collect();
        paths.sort();
        paths
    }
}

/// The series of the calls one server layer counts, shared by all its clones (the server
/// clones its handlers for every call): the calls of a method it knows find their series
/// without a family lookup.
pub(crate) struct ServerCalls {
    service: Arc<str>,
    in_flight: OnceLock<Arc<Series<Gauge>>>,
    /// The endpoint of calls to methods the server does not have.
    unknown: OnceLock<Arc<Endpoint>>,
    /// The methods it answered.
    known: Endpoints,
}

impl ServerCalls {
    /// The calls of `service`.
    pub(crate) fn new(service: &str) -> Self {
        ServerCalls {
            service: service.into(),
            in_flight: OnceLock::new(),
            unknown: OnceLock::new(),
            known: Endpoints::new(SERVER_ENDPOINTS),
        }
    }

    /// The paths whose series are kept, sorted.
    #[cfg(test)]
    pub(super) fn known_paths(&self) -> Vec<String> {
        self.known.paths()
    }

    fn in_flight(&self) -> &Series<Gauge> {
        self.in_flight
            .get_or_init(|| SERVER_IN_FLIGHT.series(&[&self.service]))
    }

    fn unknown(&self) -> &Endpoint {
        self.unknown.get_or_init(|| {
            let endpoint = Endpoint::new(self.service.clone(), UNKNOWN_ENDPOINT.into(), None);
            Arc::new(endpoint)
        })
    }
}

/// The series of the calls a client sends to one node, by endpoint, shared by every channel
/// that holds the node.
pub(crate) struct NodeCalls {
    node: Arc<str>,
    endpoints: Endpoints,
}

impl NodeCalls {
    /// The calls to the node with id `node`.
    pub(crate) fn new(node: Arc<str>) -> Self {
        NodeCalls {
            node,
            endpoints: Endpoints::new(NODE_ENDPOINTS),
        }
    }

    /// The paths whose series are kept, sorted.
    #[cfg(test)]
    pub(super) fn known_paths(&self) -> Vec<String> {
        self.endpoints.paths()
    }

    /// The series of calls of `endpoint` (a gRPC path) on `service` to this node.
    pub(super) fn endpoint(&self, service: &Arc<str>, endpoint: &Arc<str>) -> Arc<Endpoint> {
        let new = |path| Endpoint::new(service.clone(), path, Some(self.node.clone()));
        match self.endpoints.get(endpoint) {
            // A node serves one service; a caller naming another gets series of its own.
            Some(found) if found.service == *service => found,
            Some(_) => Arc::new(new(endpoint.clone())),
            None => self.endpoints.add(endpoint, new),
        }
    }
}

/// The endpoint a server call is counted under.
enum ServerEndpoint {
    /// A method the server answered before.
    Known(Arc<Endpoint>),
    /// A path not seen answered yet: a method, or not (decided by the answer).
    Path(Box<str>),
    /// A method the server does not have.
    Unknown,
}

/// Whose call it is, with its series.
enum Side {
    Server {
        calls: Arc<ServerCalls>,
        endpoint: ServerEndpoint,
    },
    Client(Arc<Endpoint>),
}

/// A call counted once, when it ends; dropped unfinished it counts as `CANCELLED`.
pub(crate) struct Recording {
    started: Instant,
    side: Option<Side>,
}

impl Recording {
    /// A call of `path` handled by the server of `calls`: in flight until it ends.
    pub(crate) fn server(calls: &Arc<ServerCalls>, path: &str) -> Self {
        calls.in_flight().add(1);
        let endpoint = match calls.known.get(path) {
            Some(known) => ServerEndpoint::Known(known),
            None => ServerEndpoint::Path(path.into()),
        };
        Recording {
            started: Instant::now(),
            side: Some(Side::Server {
                calls: calls.clone(),
                endpoint,
            }),
        }
    }

    /// A call sent to a node, counted in `endpoint`'s series.
    pub(crate) fn client(endpoint: Arc<Endpoint>) -> Self {
        Recording {
            started: Instant::now(),
            side: Some(Side::Client(endpoint)),
        }
    }

    /// Records the call as ended with `code` (the first call counts).
    pub(crate) fn finish(&mut self, code: Code) {
        // Recorded already (this is the drop after the end): no clock to read.
        let Some(side) = self.side.take() else {
            return;
        };
        let elapsed = self.started.elapsed();
        match side {
            Side::Server { calls, endpoint } => {
                match endpoint {
                    ServerEndpoint::Known(endpoint) => endpoint.record(code, elapsed),
                    ServerEndpoint::Unknown => calls.unknown().record(code, elapsed),
                    // Not kept (no answer, or the bound is reached): found in the families.
                    ServerEndpoint::Path(path) => {
                        Endpoint::new(calls.service.clone(), path.into(), None)
                            .record(code, elapsed);
                    }
                }
                calls.in_flight().add(-1);
            }
            Side::Client(endpoint) => endpoint.record(code, elapsed),
        }
    }

    /// The server answered "no such method": counted under [`UNKNOWN_ENDPOINT`].
    fn unknown_endpoint(&mut self) {
        if let Some(Side::Server { endpoint, .. }) = &mut self.side {
            *endpoint = ServerEndpoint::Unknown;
        }
    }

    /// The server answered as a method: its path is kept (within the bound) for later calls.
    fn known_endpoint(&mut self) {
        if let Some(Side::Server { calls, endpoint }) = &mut self.side
            && let ServerEndpoint::Path(path) = endpoint
        {
            let service = &calls.service;
            let known = calls
                .known
                .add(path, |path| Endpoint::new(service.clone(), path, None));
            *endpoint = ServerEndpoint::Known(known);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Dropped before it ended: the handler's future or the body was abandoned (the client
        // went away, or a deadline dropped the call).
        self.finish(Code::Cancelled);
    }
}

/// `response`, recorded by `recording` when it ends.
pub(crate) fn observe(
    response: http::Response<Body>,
    mut recording: Recording,
) -> http::Response<Body> {
    let status = crate::grpc::status_code(response.headers());
    // Tonic's router and generated services answer a method they do not have with a bare
    // trailers-only UNIMPLEMENTED (no message); a handler's own UNIMPLEMENTED carries its message.
    let unknown = status == Some(Code::Unimplemented)
        && response
            .headers()
            .get(&crate::grpc::GRPC_MESSAGE)
            .is_none_or(|m| m.is_empty());
    if unknown {
        recording.unknown_endpoint();
    } else {
        recording.known_endpoint();
    }
    if let Some(code) = status {
        // Trailers-only: the status is in the headers and there is no body to wait for.
        recording.finish(code);
        return response;
    }
    if response.status() != http::StatusCode::OK {
        // Not gRPC's answer (a proxy's): the code gRPC clients derive from the HTTP status.
        recording.finish(crate::grpc::http_code(response.status()));
        return response;
    }
    if response.body().is_end_stream() {
        // A 200 with neither a body nor a status: what a gRPC client reads as UNKNOWN.
        recording.finish(Code::Unknown);
        return response;
    }
    let (parts, body) = response.into_parts();
    http::Response::from_parts(
        parts,
        Body::new(Observed {
            inner: body,
            recording,
        }),
    )
}

/// A response body that records its call when the trailers (or an error) pass through it.
struct Observed {
    inner: Body,
    recording: Recording,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.recording
                        .finish(crate::grpc::status_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.recording.finish(status.code()),
            // Ended without trailers (no-op when they came): a status-less end is UNKNOWN.
            Poll::Ready(None) => this.recording.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_read_from_grpc_status_with_or_without_the_fast_path() {
        let status = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                &crate::grpc::GRPC_STATUS,
                http::HeaderValue::from_static(value),
            );
            crate::grpc::status_code(&headers)
        };
        assert_eq!(status("0"), Some(Code::Ok));
        assert_eq!(status(" 0 "), Some(Code::Ok));
        assert_eq!(status("14"), Some(Code::Unavailable));
        assert_eq!(status("00"), Some(Code::Ok));
        assert_eq!(status("x"), None);
        assert_eq!(crate::grpc::status_code(&http::HeaderMap::new()), None);
    }
}
