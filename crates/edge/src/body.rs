//! Body wrappers: count bytes, capture a bounded prefix, enforce a size
//! limit and a deadline, all while streaming.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::{Error, ErrorKind};

/// Boxed error type carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type flowing through the engine in both directions.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed()
}

/// A bounded copy of the first bytes of a body.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// The bytes kept, at most the capture limit.
    pub data: Bytes,
    /// Whether the body was longer than what was kept.
    pub truncated: bool,
}

/// Shared counters for one direction of one exchange.
#[derive(Debug, Default)]
pub struct Tap {
    bytes: AtomicU64,
    capture_limit: usize,
    capture: Mutex<(BytesMut, bool)>,
    over_limit: AtomicBool,
    failure: Mutex<Option<Error>>,
}

impl Tap {
    /// A tap keeping up to `capture_limit` bytes (0 keeps nothing).
    pub fn new(capture_limit: usize) -> Arc<Self> {
        Arc::new(Tap {
            capture_limit,
            ..Default::default()
        })
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the body went past its size limit.
    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

    /// Adds bytes that bypassed a body (an upgraded connection's traffic).
    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The first error the body hit while streaming, if any.
    pub fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fail(&self, err: Error) -> BoxError {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err.clone());
        }
        Box::new(err)
    }

    /// The captured prefix, when capture is on.
    pub fn captured(&self) -> Option<Captured> {
        if self.capture_limit == 0 {
            return None;
        }
        let guard = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        Some(Captured {
            data: guard.0.clone().freeze(),
            truncated: guard.1,
        })
    }

    fn observe(&self, chunk: &Bytes) -> u64 {
        let total =
            self.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if self.capture_limit > 0 {
            let mut guard = self.capture.lock().unwrap_or_else(|p| p.into_inner());
            let room = self.capture_limit.saturating_sub(guard.0.len());
            let take = room.min(chunk.len());
            guard.0.extend_from_slice(&chunk[..take]);
            if take < chunk.len() {
                guard.1 = true;
            }
        }
        total
    }
}

/// Wraps a body: every data frame goes through `tap`; past `limit` bytes the
/// body fails with [`ErrorKind::BodyTooLarge`]; past `deadline` it fails with
/// [`ErrorKind::RequestTimeout`]. `keep` is held until the body is dropped,
/// which is how the engine learns that an exchange is over.
pub struct Tapped<B, K> {
    inner: B,
    tap: Arc<Tap>,
    limit: Option<u64>,
    deadline: Option<tokio::time::Instant>,
    /// The deadline's timer, armed the first time the body has to wait:
    /// most bodies are already buffered and never need one.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stream_error: ErrorKind,
    _keep: K,
}

impl<B, K> Tapped<B, K> {
    /// See the type's documentation. `stream_error` names the side blamed
    /// when the inner body itself fails.
    pub fn new(
        inner: B,
        tap: Arc<Tap>,
        limit: Option<u64>,
        deadline: Option<tokio::time::Instant>,
        stream_error: ErrorKind,
        keep: K,
    ) -> Self {
        Tapped {
            inner,
            tap,
            limit,
            deadline,
            timer: None,
            stream_error,
            _keep: keep,
        }
    }
}

impl<B, K> HttpBody for Tapped<B, K>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    K: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(timer) = this.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(this.tap.fail(Error::new(
                    ErrorKind::RequestTimeout,
                    "body still streaming at the request deadline",
                )))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.tap.observe(data);
                    if this.limit.is_some_and(|l| total > l) {
                        this.tap.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(this.tap.fail(Error::new(
                            ErrorKind::BodyTooLarge,
                            format!("body passed {} bytes", this.limit.unwrap_or(0)),
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                this.tap
                    .fail(Error::new(this.stream_error.clone(), e.to_string()));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let (None, Some(deadline)) = (&this.timer, this.deadline) {
                    let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(this.tap.fail(Error::new(
                            ErrorKind::RequestTimeout,
                            "body still streaming at the request deadline",
                        )))));
                    }
                    this.timer = Some(timer);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
