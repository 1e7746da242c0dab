//! A request body that can be handed to a second attempt if the first never took any of it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;

/// Shares one body between attempts. Each attempt gets a [`SharedBody::reader`]; once a reader
/// has taken a frame, the request may have reached a handler and is no longer retried.
#[derive(Clone)]
pub(super) struct SharedBody {
    body: Arc<Mutex<Body>>,
    taken: Arc<AtomicBool>,
}

impl SharedBody {
    pub(super) fn new(body: Body) -> Self {
        SharedBody {
            body: Arc::new(Mutex::new(body)),
            taken: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn reader(&self) -> Body {
        Body::new(Reader(self.clone()))
    }

    /// Whether any attempt took part of the body.
    pub(super) fn taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }
}

struct Reader(SharedBody);

impl HttpBody for Reader {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut body = self.0.body.lock().unwrap_or_else(|p| p.into_inner());
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.0.taken.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .body
            .lock()
            .map(|b| b.is_end_stream())
            .unwrap_or(false)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0
            .body
            .lock()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}
