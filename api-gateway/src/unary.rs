//! A unary gRPC call framed by hand: the request already in wire format goes out as one
//! length-prefixed message, the reply's message comes back as bytes for the reply plan.
//!
//! tonic's generic client (`Grpc::unary`) builds a request stream, an encoding body, a decoding
//! stream and a response with metadata for every call, all to carry one message each way; on
//! the gateway's hot path that machinery cost more than the rest of the gRPC side of a call.
//! The protocol is small for one message (gRPC over HTTP/2: a 5-byte prefix, then the status
//! in the trailers, or in the headers of a trailers-only answer), and the errors here are
//! tonic's own, word for word, so callers see no difference.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Uri, Version, header};
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

/// The largest reply taken: tonic's default limit for a decoded message.
const MAX_REPLY: usize = 4 * 1024 * 1024;
/// The message prefix: a compression flag and a 4-byte big-endian length.
const PREFIX: usize = 5;

/// Calls `path` on `channel` with `message` (its wire bytes) and `headers` (the request's
/// metadata and deadline); answers the reply's wire bytes, or the call's status.
pub(crate) async fn call<S>(
    channel: &mut S,
    path: http::uri::PathAndQuery,
    mut headers: HeaderMap,
    message: &[u8],
) -> Result<Bytes, Status>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Status>,
{
    let length = u32::try_from(message.len()).map_err(|_| {
        Status::resource_exhausted(format!(
            "the request is {} bytes, more than a gRPC message can hold",
            message.len()
        ))
    })?;
    let mut framed = Vec::with_capacity(PREFIX + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut request = http::Request::new(Body::new(Full::new(Bytes::from(framed))));
    *request.method_mut() = Method::POST;
    *request.version_mut() = Version::HTTP_2;
    // The path alone: the client's link to the node adds its scheme and authority.
    *request.uri_mut() = Uri::from(path);
    *request.headers_mut() = headers;
    let response = channel.ready().await?.call(request).await?;
    read_reply(response).await
}

/// The reply message of `response`, or its status, as tonic's unary client reads them.
async fn read_reply(response: http::Response<Body>) -> Result<Bytes, Status> {
    let (parts, mut body) = response.into_parts();
    if let Some(status) = compression(&parts.headers) {
        return Err(status);
    }
    if let Some(status) = Status::from_header_map(&parts.headers) {
        // Trailers-only: the status is all there is.
        return Err(if status.code() == Code::Ok {
            missing_message()
        } else {
            status
        });
    }
    // Usually one data frame holds the whole message: kept as it is, without a copy.
    let mut data = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) if data.is_empty() && more.is_none() => data = chunk,
            Ok(chunk) => more
                .get_or_insert_with(|| BytesMut::from(&data[..]))
                .extend_from_slice(&chunk),
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    match &mut trailers {
                        Some(all) => all.extend(map),
                        None => trailers = Some(map),
                    }
                }
            }
        }
    }
    if let Some(more) = more {
        data = more.freeze();
    }
    let message = first_message(&mut data, parts.status)?;
    if trailers.is_none() && message.is_none() && !data.is_empty() {
        // The body ended inside a message, with no status after it.
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    let status = trailers.as_ref().and_then(Status::from_header_map);
    match status {
        Some(status) if status.code() != Code::Ok => Err(status),
        Some(_) => message.ok_or_else(missing_message),
        None => Err(missing_status(parts.status)),
    }
}

/// The first length-prefixed message in `data` (`None` while it is incomplete); the prefix's
/// errors are tonic's.
fn first_message(data: &mut Bytes, http: http::StatusCode) -> Result<Option<Bytes>, Status> {
    if data.len() < PREFIX {
        return Ok(None);
    }
    match data[0] {
        0 => {}
        // Nothing was offered but identity: a compressed message cannot be read.
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1) while receiving response with status: {http}"
            )));
        }
    }
    let length = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if length > MAX_REPLY {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {length} bytes, the limit is: {MAX_REPLY} bytes"
        )));
    }
    if data.len() < PREFIX + length {
        return Ok(None);
    }
    data.advance(PREFIX);
    Ok(Some(data.split_to(length)))
}

/// `UNIMPLEMENTED` when the reply is compressed: the gateway offers no encoding but identity.
fn compression(headers: &HeaderMap) -> Option<Status> {
    let value = headers.get("grpc-encoding")?;
    if value.as_bytes() == b"identity" {
        return None;
    }
    let name = match std::str::from_utf8(value.as_bytes()) {
        Ok(name) => name.to_string(),
        Err(_) => format!("{:?}", value.as_bytes()),
    };
    Some(Status::unimplemented(format!(
        "Content is compressed with `{name}` which isn't supported"
    )))
}

fn missing_message() -> Status {
    Status::internal("Missing response message.")
}

/// The status of an answer without `grpc-status`: gRPC's mapping of its HTTP status.
fn missing_status(status: http::StatusCode) -> Status {
    if status == http::StatusCode::OK {
        return Status::unknown(
            "protocol error: missing grpc-status trailer, stream was terminated without a final status (possible truncation by a proxy or load balancer)",
        );
    }
    Status::new(
        micro_core::grpc::http_code(status),
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            status.as_u16()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use http_body_util::StreamBody;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    /// How a test server answers: its HTTP status and headers, then these frames.
    #[derive(Clone)]
    struct Answer {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        data: Vec<Vec<u8>>,
        trailers: Option<Vec<(&'static str, &'static str)>>,
        /// The body fails (a reset stream) after its data.
        reset: bool,
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn respond(answer: &Answer) -> http::Response<Body> {
        let mut frames: Vec<Result<http_body::Frame<Bytes>, Status>> = answer
            .data
            .iter()
            .map(|d| Ok(http_body::Frame::data(Bytes::from(d.clone()))))
            .collect();
        if answer.reset {
            frames.push(Err(Status::unavailable("connection reset")));
        }
        if let Some(trailers) = &answer.trailers {
            frames.push(Ok(http_body::Frame::trailers(map(trailers))));
        }
        let body = Body::new(StreamBody::new(futures::stream::iter(frames)));
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(answer.status).unwrap();
        *response.headers_mut() = map(&answer.headers);
        response
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// Bytes in, bytes out: tonic's own unary client with no message type.
    #[derive(Clone, Default)]
    struct Raw;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Bytes;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    /// What tonic's `Grpc::unary` and [`call`] answer to `answer`, as (code, message) or bytes.
    async fn both(
        answer: Answer,
    ) -> (Result<Bytes, (Code, String)>, Result<Bytes, (Code, String)>) {
        let server = {
            let answer = answer.clone();
            tower::service_fn(move |_: http::Request<Body>| {
                let response = respond(&answer);
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let mut grpc = tonic::client::Grpc::new(server);
        grpc.ready().await.unwrap();
        let theirs = grpc
            .unary(
                tonic::Request::new(b"hi".to_vec()),
                http::uri::PathAndQuery::from_static("/a.B/C"),
                Raw,
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| (s.code(), s.message().to_string()));
        let mut ours_server = tower::service_fn(move |_: http::Request<Body>| {
            let response = respond(&answer);
            async move { Ok::<_, Status>(response) }
        });
        let ours = call(
            &mut ours_server,
            http::uri::PathAndQuery::from_static("/a.B/C"),
            HeaderMap::new(),
            b"hi",
        )
        .await
        .map_err(|s| (s.code(), s.message().to_string()));
        (theirs, ours)
    }

    fn ok() -> Option<Vec<(&'static str, &'static str)>> {
        Some(vec![("grpc-status", "0")])
    }

    #[tokio::test]
    async fn answers_as_tonic_does_to_every_shape_of_reply() {
        let grpc = vec![("content-type", "application/grpc")];
        let whole = framed(b"hello");
        let cases: Vec<(&str, Answer)> = vec![
            (
                "one frame",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![whole.clone()],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "split over frames",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![
                        whole[..3].to_vec(),
                        whole[3..7].to_vec(),
                        whole[7..].to_vec(),
                    ],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "empty message",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![framed(b"")],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "two messages",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![framed(b"one"), framed(b"two")],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "trailers-only error",
                Answer {
                    status: 200,
                    headers: vec![("grpc-status", "5"), ("grpc-message", "no%20such%20thing")],
                    data: vec![],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "trailers-only OK",
                Answer {
                    status: 200,
                    headers: vec![("grpc-status", "0")],
                    data: vec![],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "error after a message",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![whole.clone()],
                    trailers: Some(vec![("grpc-status", "13"), ("grpc-message", "late")]),
                    reset: false,
                },
            ),
            (
                "no message, OK",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "no trailers",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![whole.clone()],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "cut inside a message",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![whole[..6].to_vec()],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "cut inside the prefix",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![whole[..3].to_vec()],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "cut, then OK",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![whole[..6].to_vec()],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "HTTP 503, nothing else",
                Answer {
                    status: 503,
                    headers: vec![],
                    data: vec![],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "HTTP 404, nothing else",
                Answer {
                    status: 404,
                    headers: vec![],
                    data: vec![],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "HTTP 418, nothing else",
                Answer {
                    status: 418,
                    headers: vec![],
                    data: vec![],
                    trailers: None,
                    reset: false,
                },
            ),
            (
                "compressed flag",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![{
                        let mut m = whole.clone();
                        m[0] = 1;
                        m
                    }],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "unknown flag",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![{
                        let mut m = whole.clone();
                        m[0] = 7;
                        m
                    }],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "too long",
                Answer {
                    status: 200,
                    headers: grpc.clone(),
                    data: vec![vec![0, 0x7f, 0xff, 0xff, 0xff]],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "gzip",
                Answer {
                    status: 200,
                    headers: vec![("grpc-encoding", "gzip")],
                    data: vec![whole.clone()],
                    trailers: ok(),
                    reset: false,
                },
            ),
            (
                "identity",
                Answer {
                    status: 200,
                    headers: vec![("grpc-encoding", "identity")],
                    data: vec![whole.clone()],
                    trailers: ok(),
                    reset: false,
                },
            ),
        ];
        for (name, answer) in cases {
            let (theirs, ours) = both(answer).await;
            assert_eq!(ours, theirs, "{name}");
        }
    }

    #[tokio::test]
    async fn sends_one_framed_message_with_the_grpc_headers() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let mut server = {
            let seen = seen.clone();
            tower::service_fn(move |request: http::Request<Body>| {
                let seen = seen.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    *seen.lock().unwrap() = Some((parts, bytes));
                    Ok::<_, Status>(respond(&Answer {
                        status: 200,
                        headers: vec![],
                        data: vec![framed(b"reply")],
                        trailers: ok(),
                        reset: false,
                    }))
                }
            })
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let reply = call(
            &mut server,
            http::uri::PathAndQuery::from_static("/greeter.v1.Greeter/SayHello"),
            headers,
            b"\x0a\x05Alice",
        )
        .await
        .unwrap();
        assert_eq!(&reply[..], b"reply");
        let (parts, body) = seen.lock().unwrap().take().unwrap();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.uri, "/greeter.v1.Greeter/SayHello");
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(parts.headers["x-request-id"], "abc");
        assert_eq!(&body[..], &framed(b"\x0a\x05Alice")[..]);
    }
}
