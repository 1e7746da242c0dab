//! Fallbacks: a reply the caller supplies, given instead of an error when a service cannot
//! answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use tonic::Code;
use tonic::body::Body;

/// A reply given instead of an error for calls of one service (or one of its endpoints):
///
/// ```ignore
/// let client = Client::new(&options, registry).fallback(
///     Fallback::new("greeter", || HelloReply { message: "Hello, whoever you are".into() })
///         .endpoint("Greeter.SayHello"),
/// );
/// ```
///
/// It answers when the service's breaker is open (every node ejected: see
/// [`BreakerConfig`](super::BreakerConfig)), at once and without a call, and when a call ends
/// with one of its codes (`UNAVAILABLE` unless [`Fallback::on`] says otherwise) as an error or
/// in the response headers of a trailers-only answer. A status the node sends after reply
/// messages is the caller's: part of the answer has been read by then. Each fallback answer
/// is counted as a degraded call in the process's metrics.
#[derive(Clone)]
pub struct Fallback {
    service: String,
    /// The `Service.Method` endpoint or gRPC path it is limited to.
    endpoint: Option<String>,
    codes: Vec<Code>,
    reply: Arc<dyn Fn() -> Bytes + Send + Sync>,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("service", &self.service)
            .field("endpoint", &self.endpoint)
            .field("codes", &self.codes)
            .finish_non_exhaustive()
    }
}

impl Fallback {
    /// Answers calls of `service` that fail with `UNAVAILABLE` (or find its breaker open) with
    /// the message `reply` makes.
    pub fn new<M: prost::Message + 'static>(
        service: &str,
        reply: impl Fn() -> M + Send + Sync + 'static,
    ) -> Self {
        Fallback {
            service: service.to_string(),
            endpoint: None,
            codes: vec![Code::Unavailable],
            reply: Arc::new(move || Bytes::from(reply().encode_to_vec())),
        }
    }

    /// Only for `endpoint`: `Service.Method` (`Greeter.SayHello`) or a gRPC path
    /// (`/greeter.v1.Greeter/SayHello`).
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = Some(endpoint.to_string());
        self
    }

    /// Answers calls that end with any of `codes` (instead of `UNAVAILABLE` alone).
    pub fn on(mut self, codes: &[Code]) -> Self {
        self.codes = codes.to_vec();
        self
    }

    /// Whether it answers for the call of gRPC `path` on `service`.
    pub(super) fn covers(&self, service: &str, path: &str) -> bool {
        self.service == service
            && self.endpoint.as_deref().is_none_or(|endpoint| {
                endpoint == path
                    || crate::grpc::endpoint_of_path(path).is_some_and(|e| e == endpoint)
            })
    }

    /// Whether it answers a call that ended with `code`.
    pub(super) fn answers(&self, code: Code) -> bool {
        self.codes.contains(&code)
    }

    /// The fallback reply as a gRPC response: one message, then `grpc-status: 0`.
    pub(super) fn response(&self) -> http::Response<Body> {
        let message = (self.reply)();
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        // A reply over 4 GiB cannot be framed; the length is clamped rather than wrapped.
        frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
        frame.put_slice(&message);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let mut response = http::Response::new(Body::new(Reply {
            data: Some(frame.freeze()),
            trailers: Some(trailers),
        }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

/// One data frame, then trailers.
struct Reply {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}
