//! Streaming methods over a WebSocket: `GET` on the call path with `Upgrade: websocket`.
//!
//! One JSON message per text frame each way: the client's frames are the request messages
//! (transcoded with the method's input descriptor), the replies come back as text frames. The
//! method's kind decides the rest:
//!
//! - client or bidi streaming: every text frame is a request message; an **empty** text frame
//!   ends the request stream (a gRPC half-close) and the replies still come;
//! - server streaming: the one request message is the query string (mapped as for a unary
//!   `GET`), or, without a query, the first text frame; further frames are refused;
//! - unary: refused (400), as it has a plain HTTP form.
//!
//! At the end the gateway sends a close frame: **1000** when the call ended OK; **4000 + the gRPC
//! code** (4003 INVALID_ARGUMENT, 4004 DEADLINE_EXCEEDED, 4014 UNAVAILABLE, ...) when it failed,
//! just after a last text frame `{"error":{"code","message","details":[]}}`; **1007** when a frame
//! does not fit the input message, **1003** for a binary frame, **1008** for a frame after the
//! request stream ended. The reason of every non-1000 close is `{"code","message"}` (the gRPC
//! code; the message cut so the reason fits the protocol's 123 bytes). A close frame from the
//! client ends the exchange at once: the protocol allows nothing to be sent after it (the
//! WebSocket library answers it), so the call is cancelled as for a client that disconnects.
//!
//! Auth, the request id and the deadline are prepared before the upgrade (a refused token is a
//! plain 401/403). The whole exchange is bounded by the call's deadline. Requests go to the
//! service through a small bounded channel and frames are read only as it takes them; replies
//! are pulled from the service only as fast as frames are written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use http::{HeaderMap, header};
use micro_core::dynamic::{self, DynamicCodec};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::call::{self, CallTarget, Input, Labels, Prepared, reply_json};
use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::metrics::StreamRecord;
use crate::stream::{deadline_passed, error_body};

/// Request messages read ahead of the service: a few, so a slow service stops the reading.
const REQUEST_BUFFER: usize = 8;
/// How long the gateway waits for the client's answer to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The longest close reason the protocol allows (a control frame carries 125 bytes, 2 of them
/// the code).
const MAX_REASON: usize = 123;
/// Close codes of the protocol (RFC 6455 section 7.4.1).
const NORMAL: u16 = 1000;
/// A binary frame: only text frames carry messages.
const UNSUPPORTED_DATA: u16 = 1003;
/// A frame whose JSON does not fit the input message.
const INVALID_PAYLOAD: u16 = 1007;
/// A frame the exchange does not take (after the request stream ended).
const POLICY_VIOLATION: u16 = 1008;
/// A failed call closes with this plus its gRPC code (the private-use range 4000-4999).
const GRPC_BASE: u16 = 4000;

/// Whether `headers` ask for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

/// Answers a WebSocket request to `target`: resolves the method and prepares the call (auth
/// refused here is a plain 401/403), then upgrades and runs the exchange on the socket.
pub(crate) async fn call(
    state: &GatewayState,
    target: &CallTarget,
    mut parts: http::request::Parts,
) -> (Labels, Result<Response, ApiError>) {
    let (route, schema) = match call::resolve_method(state, target).await {
        Ok(found) => found,
        Err(e) => return (Labels::default(), Err(e)),
    };
    let labels = Labels::of(state, &schema, &route);
    let method = &route.method;
    let result = async {
        if !method.is_client_streaming() && !method.is_server_streaming() {
            return Err(ApiError::bad_request(format!(
                "{} is a unary method: call it with POST (or GET), not over a WebSocket",
                labels.endpoint
            )));
        }
        // A server-streaming request in the query is checked before the upgrade, as for GET.
        let request = match parts.uri.query().filter(|q| !q.is_empty()) {
            Some(query) if !method.is_client_streaming() => Some(call::transcode(
                state,
                method,
                Input::Query(query.to_string()),
            )?),
            _ => None,
        };
        let prepared = call::prepare(state, &route, &schema, &parts.headers, &labels).await?;
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    tonic::Code::InvalidArgument,
                    format!("not a WebSocket upgrade: {}", rejection.body_text()),
                )
            })?;
        let limit = usize::try_from(state.options.max_body).unwrap_or(usize::MAX);
        let session = Session {
            record: state.metrics.stream(&labels.service, &labels.endpoint),
            prepared,
            request,
            allow_unknown_fields: state.options.allow_unknown_fields,
        };
        let span = tracing::Span::current();
        let failed_span = span.clone();
        Ok(upgrade
            .max_message_size(limit)
            .max_frame_size(limit)
            .on_failed_upgrade(move |error| {
                tracing::debug!(parent: &failed_span, %error, "WebSocket upgrade failed");
            })
            .on_upgrade(move |socket| session.run(socket).instrument(span))
            .into_response())
    }
    .await;
    (labels, result)
}

/// One upgraded call.
struct Session {
    prepared: Prepared,
    /// The request of a server-streaming method, when the query carried it.
    request: Option<DynamicMessage>,
    record: StreamRecord,
    allow_unknown_fields: bool,
}

/// How an exchange ended.
enum Outcome {
    /// The call ended OK: close 1000.
    Ok,
    /// The call failed (the service's status, or the deadline): close 4000 + code.
    Failed(ApiError),
    /// A frame was refused: close with this code.
    Refused(u16, ApiError),
    /// The client closed or went away: nothing more can be sent.
    Gone,
}

/// The replies of the call, whatever its kind.
enum Replies {
    /// A server or bidi stream.
    Many(tonic::Streaming<DynamicMessage>),
    /// A client stream's one reply, until taken.
    One(Option<DynamicMessage>),
}

impl Replies {
    async fn next(&mut self) -> Result<Option<DynamicMessage>, tonic::Status> {
        match self {
            Replies::Many(stream) => stream.message().await,
            Replies::One(reply) => Ok(reply.take()),
        }
    }
}

/// What the reader hands to the request stream.
enum Request {
    /// A request message.
    Message(DynamicMessage),
    /// The client's end of the request stream (an empty frame): a half-close.
    End,
}

/// Messages counted by the reader and the writer, which run side by side.
#[derive(Default)]
struct Counts {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Session {
    /// Runs the exchange within the deadline, then closes the socket as the outcome says.
    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut frames) = socket.split();
        let counts = Counts::default();
        let (deadline, timeout) = (self.prepared.deadline, self.prepared.timeout);
        let outcome = tokio::select! {
            outcome = self.exchange(&mut sink, &mut frames, &counts) => outcome,
            () = tokio::time::sleep_until(deadline) => Outcome::Failed(deadline_passed(timeout)),
        };
        self.record.messages(
            counts.received.load(Ordering::Relaxed),
            counts.sent.load(Ordering::Relaxed),
        );
        let (code, error) = match outcome {
            Outcome::Ok => {
                self.record.finish(tonic::Code::Ok);
                (NORMAL, None)
            }
            Outcome::Failed(error) => {
                self.record.finish(error.code);
                (GRPC_BASE + error.code as u16, Some(error))
            }
            Outcome::Refused(code, error) => {
                self.record.finish(error.code);
                (code, Some(error))
            }
            Outcome::Gone => {
                self.record.finish(tonic::Code::Cancelled);
                // Flushes the library's answer to the client's close, if there was one.
                let _ = sink.close().await;
                return;
            }
        };
        close(sink, frames, code, error).await;
    }

    /// Opens the call and relays both ways until it ends, a frame is refused or the client
    /// leaves.
    async fn exchange(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        frames: &mut SplitStream<WebSocket>,
        counts: &Counts,
    ) -> Outcome {
        let method = self.prepared.method.clone();
        let input = method.input();
        let allow_unknown = self.allow_unknown_fields;
        let mut grpc = match self.prepared.grpc().await {
            Ok(grpc) => grpc,
            Err(error) => return Outcome::Failed(error),
        };
        let (path, codec) = (self.prepared.path(), self.prepared.codec());
        if !method.is_client_streaming() {
            let message = match self.request.take() {
                Some(message) => message,
                None => match first_request(frames, &input, allow_unknown).await {
                    Ok(message) => message,
                    Err(outcome) => return outcome,
                },
            };
            counts.received.fetch_add(1, Ordering::Relaxed);
            let request = self.prepared.request(message);
            let opened = async {
                grpc.server_streaming(request, path, codec)
                    .await
                    .map(|r| Replies::Many(r.into_inner()))
            };
            let reader = read_requests(frames, None, &input, allow_unknown, counts);
            return relay(opened, reader, sink, counts).await;
        }
        let (requests, mut outgoing) = mpsc::channel(REQUEST_BUFFER);
        let messages = futures::stream::poll_fn(move |cx| match outgoing.poll_recv(cx) {
            Poll::Ready(Some(Request::Message(message))) => Poll::Ready(Some(message)),
            Poll::Ready(Some(Request::End)) => Poll::Ready(None),
            // The reader is gone without the end frame: the exchange was abandoned and the call
            // is being dropped (a reset, which the service sees as a cancellation). Ending the
            // stream here would tell the service the requests were complete instead.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        });
        let mut request = self.prepared.request(messages);
        // Abandoning the exchange (the client left, a frame was refused, the deadline) resets
        // the call, so the service sees a cancellation rather than a request stream that ended.
        let _cancel_on_drop = CancelOnDrop(Some(request.cancellation_handle()));
        let bidi = method.is_server_streaming();
        let opened = open_client_stream(&mut grpc, request, path, codec, bidi);
        let reader = read_requests(frames, Some(requests), &input, allow_unknown, counts);
        relay(opened, reader, sink, counts).await
    }
}

/// Cancels a call's request stream when dropped: an HTTP/2 reset unless it ended gracefully.
struct CancelOnDrop(Option<tonic::CancellationHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.cancel();
        }
    }
}

/// Opens a client or bidi stream; a client stream's call ends with its one reply.
async fn open_client_stream<S>(
    grpc: &mut tonic::client::Grpc<micro_core::client::ServiceChannel>,
    request: tonic::Request<S>,
    path: http::uri::PathAndQuery,
    codec: DynamicCodec,
    bidi: bool,
) -> Result<Replies, tonic::Status>
where
    S: futures::Stream<Item = DynamicMessage> + Send + 'static,
{
    if bidi {
        let replies = grpc.streaming(request, path, codec).await?;
        Ok(Replies::Many(replies.into_inner()))
    } else {
        let reply = grpc.client_streaming(request, path, codec).await?;
        Ok(Replies::One(Some(reply.into_inner())))
    }
}

/// Runs the reader (client frames → requests) beside the writer (replies → frames): the call
/// ends when the writer does; a refused frame or a client that leaves ends it first.
async fn relay(
    opened: impl Future<Output = Result<Replies, tonic::Status>>,
    reader: impl Future<Output = Outcome>,
    sink: &mut SplitSink<WebSocket, Message>,
    counts: &Counts,
) -> Outcome {
    let writer = async {
        let mut replies = match opened.await {
            Ok(replies) => replies,
            Err(status) => return Outcome::Failed(ApiError::from_status(&status)),
        };
        loop {
            // Replies that have already arrived are written together; the socket is flushed
            // whenever the next one is not there yet, so none waits for another.
            let next = match replies.next().now_or_never() {
                Some(next) => next,
                None => {
                    if sink.flush().await.is_err() {
                        return Outcome::Gone;
                    }
                    replies.next().await
                }
            };
            let reply = match next {
                Ok(Some(reply)) => reply,
                Ok(None) => return Outcome::Ok,
                Err(status) => return Outcome::Failed(ApiError::from_status(&status)),
            };
            let text = match reply_json(&reply).map(String::from_utf8) {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => {
                    return Outcome::Failed(ApiError::new(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        tonic::Code::Internal,
                        format!("a reply is not UTF-8 JSON: {e}"),
                    ));
                }
                Err(error) => return Outcome::Failed(error),
            };
            if sink.feed(Message::Text(text.into())).await.is_err() {
                return Outcome::Gone;
            }
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
    };
    // The reader only returns to end the exchange early; the writer's end is the call's.
    tokio::select! {
        outcome = writer => outcome,
        outcome = reader => outcome,
    }
}

/// The request of a server-streaming method sent as the first text frame.
async fn first_request(
    frames: &mut SplitStream<WebSocket>,
    input: &MessageDescriptor,
    allow_unknown: bool,
) -> Result<DynamicMessage, Outcome> {
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(Message::Text(text)) => {
                return dynamic::from_json(input, text.as_str().as_bytes(), allow_unknown)
                    .map_err(|e| bad_message(1, input, &e));
            }
            Ok(Message::Binary(_)) => return Err(binary_frame()),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(Message::Close(_)) | Err(_) => return Err(Outcome::Gone),
        }
    }
    Err(Outcome::Gone)
}

/// Reads the client's frames: each text frame a request message handed to `requests` (waiting
/// while the service is not taking them), an empty one the end of the request stream. Returns
/// only to end the exchange: the client left, or sent a frame that is refused. With no
/// `requests` (a server stream, or after the end) a message frame is refused.
async fn read_requests(
    frames: &mut SplitStream<WebSocket>,
    mut requests: Option<mpsc::Sender<Request>>,
    input: &MessageDescriptor,
    allow_unknown: bool,
    counts: &Counts,
) -> Outcome {
    let mut received = 0u64;
    while let Some(frame) = frames.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => return binary_frame(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return Outcome::Gone,
        };
        if text.as_str().is_empty() {
            // The end of the request stream: the service sees it end (half-close).
            if let Some(sender) = requests.take() {
                let _ = sender.send(Request::End).await;
            }
            continue;
        }
        let Some(sender) = &requests else {
            return Outcome::Refused(
                POLICY_VIOLATION,
                ApiError::bad_request(
                    "no more request messages are taken: the request stream has ended (an empty frame, or the one request of a server-streaming method)",
                ),
            );
        };
        received += 1;
        match dynamic::from_json(input, text.as_str().as_bytes(), allow_unknown) {
            Ok(message) => {
                counts.received.fetch_add(1, Ordering::Relaxed);
                // A service that stopped reading its requests ends the call; the writer says
                // how, so a message it will not read is dropped here.
                let _ = sender.send(Request::Message(message)).await;
            }
            Err(error) => return bad_message(received, input, &error),
        }
    }
    Outcome::Gone
}

/// 1007 for message `n` (from 1), naming the field that does not fit.
fn bad_message(n: u64, input: &MessageDescriptor, error: &dynamic::JsonError) -> Outcome {
    Outcome::Refused(
        INVALID_PAYLOAD,
        ApiError::bad_request(format!(
            "{error} (message {n} does not fit {})",
            input.full_name()
        )),
    )
}

/// 1003: messages are JSON in text frames.
fn binary_frame() -> Outcome {
    Outcome::Refused(
        UNSUPPORTED_DATA,
        ApiError::bad_request("binary frames are not taken: send one JSON message per text frame"),
    )
}

/// Sends the error (if any) as a last text frame and the close frame, then waits a little for
/// the client's answer so the close handshake completes.
async fn close(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: SplitStream<WebSocket>,
    code: u16,
    error: Option<ApiError>,
) {
    let reason = match &error {
        Some(error) => {
            let last = serde_json::json!({ "error": error_body(error) }).to_string();
            if sink.send(Message::Text(last.into())).await.is_err() {
                return;
            }
            close_reason(error)
        }
        None => String::new(),
    };
    tracing::debug!(code, %reason, "closing the WebSocket");
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if sink.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(frame)) = frames.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// `{"code","message"}` of `error`, the message cut (on a character boundary) so the whole
/// fits [`MAX_REASON`] bytes.
fn close_reason(error: &ApiError) -> String {
    let reason = |message: &str| {
        serde_json::json!({ "code": error.code as i32, "message": message }).to_string()
    };
    // No longer than the reason may be, then a character less until the escaped JSON fits.
    let mut message = error.message.as_str();
    let mut cut = message.len().min(MAX_REASON);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message = &message[..cut];
    let mut text = reason(message);
    while text.len() > MAX_REASON {
        let mut chars = message.chars();
        chars.next_back();
        message = chars.as_str();
        text = reason(message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};

    #[test]
    fn recognises_an_upgrade() {
        let mut headers = HeaderMap::new();
        assert!(!is_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_upgrade(&headers));
    }

    #[test]
    fn close_reasons_fit_the_protocol() {
        let short = ApiError::new(StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, "no");
        assert_eq!(close_reason(&short), r#"{"code":3,"message":"no"}"#);
        for message in ["é".repeat(200), "\"".repeat(200), "x".repeat(500)] {
            let long = ApiError::new(StatusCode::BAD_REQUEST, tonic::Code::Internal, message);
            let reason = close_reason(&long);
            assert!(
                reason.len() <= MAX_REASON,
                "{} bytes: {reason}",
                reason.len()
            );
            let value: serde_json::Value = serde_json::from_str(&reason).expect("JSON");
            assert_eq!(value["code"], 13);
            assert!(!value["message"].as_str().unwrap_or_default().is_empty());
        }
    }
}
