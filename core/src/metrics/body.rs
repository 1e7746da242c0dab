//! One call being recorded, and the gRPC code it ends with: from the response headers for a
//! trailers-only answer, else from the trailers at the end of the body. A body dropped before
//! its end was abandoned by the peer: `CANCELLED`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tonic::Code;
use tonic::body::Body;

use super::{CLIENT_CALLS, CLIENT_LATENCY, SERVER_IN_FLIGHT, SERVER_LATENCY, SERVER_REQUESTS};

/// The endpoint label of calls to a method the server does not have: one label for all of them,
/// so arbitrary paths sent by clients cannot grow the set of series.
pub(crate) const UNKNOWN_ENDPOINT: &str = "unknown";

/// Whose call it is, with its labels.
enum Side {
    Server {
        service: Arc<str>,
        endpoint: String,
    },
    Client {
        service: Arc<str>,
        endpoint: Arc<str>,
        node: Arc<str>,
    },
}

/// A call counted once, when it ends; dropped unfinished it counts as `CANCELLED`.
pub(crate) struct Recording {
    started: Instant,
    side: Option<Side>,
}

impl Recording {
    /// A call of `endpoint` (its gRPC path) handled by `service`: in flight until it ends.
    pub(crate) fn server(service: Arc<str>, endpoint: String) -> Self {
        SERVER_IN_FLIGHT.add(&[&service], 1);
        Recording {
            started: Instant::now(),
            side: Some(Side::Server { service, endpoint }),
        }
    }

    /// A call of `endpoint` sent to `node` of `service` (shared names: no copy per call).
    pub(crate) fn client(service: Arc<str>, endpoint: Arc<str>, node: Arc<str>) -> Self {
        Recording {
            started: Instant::now(),
            side: Some(Side::Client {
                service,
                endpoint,
                node,
            }),
        }
    }

    /// Records the call as ended with `code` (the first call counts).
    pub(crate) fn finish(&mut self, code: Code) {
        // Recorded already (this is the drop after the end): no clock to read.
        let Some(side) = self.side.take() else {
            return;
        };
        let elapsed = self.started.elapsed();
        let code_label = crate::grpc::code_name(code);
        match side {
            Side::Server { service, endpoint } => {
                SERVER_REQUESTS.inc(&[&service, &endpoint, code_label]);
                SERVER_LATENCY.observe(&[&service, &endpoint], elapsed);
                SERVER_IN_FLIGHT.add(&[&service], -1);
            }
            Side::Client {
                service,
                endpoint,
                node,
            } => {
                CLIENT_CALLS.inc(&[&service, &endpoint, &node, code_label]);
                CLIENT_LATENCY.observe(&[&service, &endpoint, &node], elapsed);
            }
        }
    }

    /// The server answered "no such method": counted under [`UNKNOWN_ENDPOINT`].
    fn unknown_endpoint(&mut self) {
        if let Some(Side::Server { endpoint, .. }) = &mut self.side {
            *endpoint = UNKNOWN_ENDPOINT.to_string();
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
    if let Some(code) = status_code(response.headers()) {
        // Trailers-only: the status is in the headers and there is no body to wait for. Tonic's
        // router and generated services answer a method they do not have with a bare
        // UNIMPLEMENTED (no message); a handler's own UNIMPLEMENTED carries its message.
        let message = response.headers().get(&crate::grpc::GRPC_MESSAGE);
        if code == Code::Unimplemented && message.is_none_or(|m| m.is_empty()) {
            recording.unknown_endpoint();
        }
        recording.finish(code);
        return response;
    }
    if response.status() != http::StatusCode::OK {
        // Not gRPC's answer (a proxy's): the code gRPC clients derive from the HTTP status.
        recording.finish(http_code(response.status()));
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

/// The `grpc-status` in `headers` (response headers or trailers).
fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(&crate::grpc::GRPC_STATUS)?.to_str().ok()?;
    value.trim().parse::<i32>().ok().map(Code::from)
}

/// The gRPC code of an HTTP status without `grpc-status` (gRPC's HTTP to gRPC status mapping).
fn http_code(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
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
                        .finish(status_code(trailers).unwrap_or(Code::Unknown));
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
