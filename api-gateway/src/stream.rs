//! Server-streaming methods over plain HTTP: the replies as one JSON message per line
//! (`application/x-ndjson`), or as Server-Sent Events (`text/event-stream`, each reply
//! `data: <json>\n\n`) when the client accepts them. The body pulls each reply from the tonic
//! stream when hyper asks for the next chunk, so nothing is queued and a slow client slows the
//! service down (HTTP/2 flow control does the rest); each reply is written as it arrives.
//!
//! The response head waits for the first reply: a stream that fails before it answers the
//! ordinary error response (status and `{"code","message","details"}`). A failure after it
//! ends the body with a last error object (NDJSON: `{"error":{...}}`; SSE: `event: error`).
//! The whole stream is bounded by the call's deadline. Dropping the body (the client went away)
//! drops the tonic stream, which resets the HTTP/2 stream: the service sees its call cancelled.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use prost_reflect::DynamicMessage;
use tracing::Instrument;

use crate::call::{Labels, Prepared, reply_json};
use crate::error::ApiError;
use crate::gateway::GatewayState;
use crate::metrics::StreamRecord;

/// The most bytes of replies that have already arrived written as one chunk.
const BATCH: usize = 16 * 1024;

/// How the replies of a stream are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON message per line.
    Ndjson,
    /// Server-Sent Events: `data: <json>\n\n` per reply.
    Sse,
}

impl Format {
    /// SSE when the client's `Accept` names `text/event-stream`, NDJSON otherwise.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        let sse = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|media| {
                media
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
            });
        if sse { Format::Sse } else { Format::Ndjson }
    }

    /// The response's content type.
    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Sse => "text/event-stream",
        }
    }

    /// Appends one reply, framed, to `out`.
    fn message(self, json: &[u8], out: &mut Vec<u8>) {
        match self {
            Format::Ndjson => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
            Format::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
        }
    }

    /// Appends the error that ends a stream after it started, framed, to `out`.
    fn error(self, error: &ApiError, out: &mut Vec<u8>) {
        let body = error_body(error);
        let framed = match self {
            Format::Ndjson => format!("{}\n", serde_json::json!({ "error": body })),
            Format::Sse => format!("event: error\ndata: {body}\n\n"),
        };
        out.extend_from_slice(framed.as_bytes());
    }
}

/// The gateway's error shape, `{"code","message","details"}`, as a JSON value.
pub(crate) fn error_body(error: &ApiError) -> serde_json::Value {
    serde_json::json!({ "code": error.code as i32, "message": error.message, "details": error.details })
}

/// The error of a stream that outlived its deadline.
pub(crate) fn deadline_passed(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::DeadlineExceeded,
        format!(
            "the call passed its deadline of {} (the gateway's --timeout, or the client's shorter grpc-timeout)",
            humantime::format_duration(timeout)
        ),
    )
}

/// Calls a server-streaming method with `message` and answers its replies as a streamed body.
pub(crate) async fn respond(
    state: &GatewayState,
    labels: &Labels,
    mut prepared: Prepared,
    message: DynamicMessage,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let format = Format::negotiate(headers);
    let mut record = state.metrics.stream(&labels.service, &labels.endpoint);
    record.messages(1, 0);
    let (deadline, timeout) = (prepared.deadline, prepared.timeout);
    // Errors before the first reply are plain responses: details of the service's own types
    // are decoded with its descriptors, as for unary calls.
    let pool = prepared.method.parent_pool().clone();
    let failed = |status: tonic::Status| ApiError::from_service_status(&status, Some(&pool));
    let opened = async {
        let mut grpc = prepared.grpc().await?;
        let (path, codec) = (prepared.path(), prepared.codec());
        let mut replies = grpc
            .server_streaming(prepared.request(message), path, codec)
            .await
            .map_err(failed)?
            .into_inner();
        let first = replies.message().await.map_err(failed)?;
        Ok::<_, ApiError>((replies, first))
    };
    let (replies, first) = match tokio::time::timeout_at(deadline, opened).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            record.finish(error.code);
            return Err(error);
        }
        Err(_) => {
            let error = deadline_passed(timeout);
            record.finish(error.code);
            return Err(error);
        }
    };
    // A stream that ended before any reply is an empty body.
    let done = first.is_none();
    if done {
        record.finish(tonic::Code::Ok);
    }
    let relay = Relay {
        replies,
        first,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        timeout,
        format,
        record,
        done,
        span: tracing::Span::current(),
    };
    let body = Body::from_stream(futures::stream::unfold(relay, |relay| {
        let span = relay.span.clone();
        relay.next().instrument(span)
    }));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The state of a streamed body: the tonic stream and what has been written of it.
struct Relay {
    replies: tonic::Streaming<DynamicMessage>,
    /// The first reply, read before the head was answered.
    first: Option<DynamicMessage>,
    /// Fires when the call's deadline passes.
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    format: Format,
    /// Counts the stream; dropped unfinished (the client went away) it counts `CANCELLED`.
    record: StreamRecord,
    /// The stream ended (the last chunk, if any, was written).
    done: bool,
    /// The request's `http` span, entered while the body is polled.
    span: tracing::Span,
}

impl Relay {
    /// The next chunk of the body, and the state after it; `None` ends the body. A chunk holds
    /// the next reply and those that have already arrived behind it (never waiting for one), up
    /// to [`BATCH`] bytes: a busy stream is written in fewer, larger chunks, a slow one reply by
    /// reply as each comes.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Relay)> {
        if self.done {
            return None;
        }
        let reply = match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => tokio::select! {
                biased;
                () = &mut self.deadline => Err(deadline_passed(self.timeout)),
                reply = self.replies.message() => reply.map_err(|status| ApiError::from_status(&status)),
            },
        };
        let mut chunk = Vec::new();
        self.write(reply, &mut chunk);
        while !self.done && chunk.len() < BATCH {
            match self.replies.message().now_or_never() {
                Some(reply) => {
                    self.write(
                        reply.map_err(|status| ApiError::from_status(&status)),
                        &mut chunk,
                    );
                }
                None => break,
            }
        }
        if chunk.is_empty() {
            return None;
        }
        Some((Ok(chunk.into()), self))
    }

    /// Appends what `reply` says to `chunk`: a reply, the end (nothing), or a last error.
    fn write(&mut self, reply: Result<Option<DynamicMessage>, ApiError>, chunk: &mut Vec<u8>) {
        match reply.and_then(|reply| reply.map(|m| reply_json(&m)).transpose()) {
            Ok(Some(json)) => {
                self.record.messages(0, 1);
                self.format.message(&json, chunk);
            }
            Ok(None) => {
                self.record.finish(tonic::Code::Ok);
                self.done = true;
            }
            Err(error) => {
                tracing::debug!(code = ?error.code, message = %error.message, "stream ended by an error");
                self.record.finish(error.code);
                self.done = true;
                self.format.error(&error, chunk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_sse_only_when_asked() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::negotiate(&headers), Format::Ndjson);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert_eq!(Format::negotiate(&headers), Format::Sse);
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(Format::negotiate(&headers), Format::Ndjson);
    }

    #[test]
    fn frames_messages_and_errors() {
        let error = ApiError::new(StatusCode::CONFLICT, tonic::Code::Aborted, "stop");
        let framed = |format: Format, error: Option<&ApiError>| {
            let mut out = Vec::new();
            format.message(b"{\"a\":1}", &mut out);
            if let Some(error) = error {
                format.error(error, &mut out);
            }
            String::from_utf8(out).unwrap_or_default()
        };
        assert_eq!(framed(Format::Ndjson, None), "{\"a\":1}\n");
        assert_eq!(framed(Format::Sse, None), "data: {\"a\":1}\n\n");
        assert_eq!(
            framed(Format::Ndjson, Some(&error)),
            "{\"a\":1}\n{\"error\":{\"code\":10,\"details\":[],\"message\":\"stop\"}}\n"
        );
        assert_eq!(
            framed(Format::Sse, Some(&error)),
            "data: {\"a\":1}\n\nevent: error\ndata: {\"code\":10,\"details\":[],\"message\":\"stop\"}\n\n"
        );
    }
}
