//! A request body that can be handed to a second attempt: from the start when the first took
//! none of it, or replayed from a copy of what it took while that copy is small.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;

/// How much of a request is kept to replay it on another node (unary calls fit; a long client
/// stream is not replayed). gRPC's own retry buffer is of this order (grpc-java: 256 KiB).
const REPLAY_LIMIT: usize = 64 * 1024;

/// Shares one body between attempts. Each attempt gets a [`SharedBody::reader`], which first
/// yields the frames earlier attempts took, then takes the rest from the body.
#[derive(Clone)]
pub(super) struct SharedBody(Arc<Shared>);

/// What the attempts share, in one allocation.
struct Shared {
    state: Mutex<State>,
    taken: AtomicBool,
}

struct State {
    body: Body,
    /// The data frames taken so far, in order (emptied when it stops being `replayable`: no
    /// reader is made after that).
    frames: Vec<Bytes>,
    /// Their total size.
    size: usize,
    /// Whether `frames` holds everything taken (nothing past the limit, no trailers).
    replayable: bool,
}

impl SharedBody {
    pub(super) fn new(body: Body) -> Self {
        SharedBody(Arc::new(Shared {
            state: Mutex::new(State {
                body,
                frames: Vec::new(),
                size: 0,
                replayable: true,
            }),
            taken: AtomicBool::new(false),
        }))
    }

    pub(super) fn reader(&self) -> Body {
        Body::new(Reader {
            shared: self.clone(),
            next: 0,
        })
    }

    /// Whether any attempt took part of the body.
    pub(super) fn taken(&self) -> bool {
        self.0.taken.load(Ordering::Acquire)
    }

    /// Whether a new reader would send the whole request again.
    pub(super) fn replayable(&self) -> bool {
        self.0.state.lock().map(|s| s.replayable).unwrap_or(false)
    }
}

struct Reader {
    shared: SharedBody,
    /// The index in `frames` of the next frame this reader replays.
    next: usize,
}

impl HttpBody for Reader {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Reader { shared, next } = self.get_mut();
        let mut state = shared.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if *next < state.frames.len() {
            let frame = state.frames[*next].clone();
            *next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        let polled = Pin::new(&mut state.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            shared.0.taken.store(true, Ordering::Release);
            match frame.data_ref() {
                Some(data) if state.replayable && state.size + data.len() <= REPLAY_LIMIT => {
                    state.size += data.len();
                    state.frames.push(data.clone());
                }
                _ => {
                    state.replayable = false;
                    state.frames.clear();
                }
            }
            // This reader has seen every frame up to here, the one just taken included.
            *next = state.frames.len();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .0
            .state
            .lock()
            .map(|s| self.next >= s.frames.len() && s.body.is_end_stream())
            .unwrap_or(false)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.shared
            .0
            .state
            .lock()
            .map(|s| {
                let replay: usize = s.frames[self.next.min(s.frames.len())..]
                    .iter()
                    .map(Bytes::len)
                    .sum();
                let rest = s.body.size_hint();
                let replay = replay as u64;
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(rest.lower() + replay);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + replay);
                }
                hint
            })
            .unwrap_or_default()
    }
}
