//! The streaming response body: drains one connection's queue into the socket.
//!
//! It writes the shared, pre-encoded frames as they are (several queued frames are joined into
//! one write), heartbeats when the hub asks, closes a long-polling stream a delay after its first
//! real event, ends with `retry:` on shutdown, and ends with an error when the client was too
//! slow, which makes hyper close the socket (HTTP/1) or reset the stream (HTTP/2) instead of
//! waiting to write a final chunk to a client that does not read (a server blocked on such a
//! client watches the response's `transport::StreamHandle` instead). Dropping the body unregisters the connection.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame as BodyFrame, SizeHint};
use tokio::time::Sleep;

use crate::conn::{Batch, Drained};
use crate::event::{HEARTBEAT_FRAME, retry_frame};
use crate::hub::Registration;

/// Frames joined into one write at most.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The body of every response of the SSE endpoint: a stream that drains one connection's
/// queue, or a complete body (errors, stats, `retry:`).
pub struct SseBody {
    inner: Inner,
}

enum Inner {
    /// A complete body (errors, stats, and the overload answer).
    Full(Option<Bytes>),
    Stream(Box<Stream>),
}

struct Stream {
    reg: Registration,
    /// The connection's span: the parent of what the body logs. It is not entered on every
    /// poll: with a subscriber, entering and leaving a span costs more than the poll itself
    /// (about 9% of the server's CPU in a fan-out to 2,000 streams, measured with perf).
    span: tracing::Span,
    /// Long polling: how long to stay open after the first event, and the armed timer.
    polling: Option<(Duration, Option<Pin<Box<Sleep>>>)>,
    ended: bool,
}

/// The stream ended because the client did not read fast enough.
#[derive(Debug, thiserror::Error)]
#[error("slow client: its queue reached the limit; disconnected")]
pub struct SlowClient;

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Full(b) => f
                .debug_struct("SseBody")
                .field("full", &b.as_ref().map(|b| b.len()))
                .finish(),
            Inner::Stream(s) => f
                .debug_struct("SseBody")
                .field("conn", &s.reg.conn.id)
                .finish(),
        }
    }
}

impl SseBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        SseBody {
            inner: Inner::Full(Some(bytes.into())),
        }
    }

    pub(crate) fn stream(
        reg: Registration,
        polling: Option<Duration>,
        span: tracing::Span,
    ) -> Self {
        SseBody {
            inner: Inner::Stream(Box::new(Stream {
                reg,
                span,
                polling: polling.map(|d| (d, None)),
                ended: false,
            })),
        }
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = SlowClient;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, SlowClient>>> {
        match &mut self.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(BodyFrame::data(b)))),
            Inner::Stream(stream) => stream.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Stream(stream) => stream.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

impl Stream {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame<Bytes>, SlowClient>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some((_, Some(timer))) = &mut self.polling
            && timer.as_mut().poll(cx).is_ready()
        {
            self.ended = true;
            return Poll::Ready(None);
        }
        let bytes = match self.reg.conn.drain(cx, MAX_BATCH_BYTES) {
            Drained::Nothing => return Poll::Pending,
            Drained::Heartbeat => Bytes::from_static(HEARTBEAT_FRAME),
            Drained::Slow => {
                tracing::info!(parent: &self.span, "slow client: ending its stream");
                self.ended = true;
                return Poll::Ready(Some(Err(SlowClient)));
            }
            Drained::Retry(ms) => {
                self.ended = true;
                retry_frame(ms)
            }
            Drained::Frames(batch) => {
                self.count(&batch);
                batch.bytes
            }
        };
        self.reg
            .hub
            .metrics
            .bytes_sent
            .fetch_add(bytes.len() as u64, Relaxed);
        Poll::Ready(Some(Ok(BodyFrame::data(bytes))))
    }

    /// Counts what is sent and arms the long-polling timer on the first real event.
    fn count(&mut self, batch: &Batch) {
        let metrics = &self.reg.hub.metrics;
        metrics.events_sent.fetch_add(batch.frames as u64, Relaxed);
        if batch.missed > 0 {
            metrics.missed_sent.fetch_add(batch.missed as u64, Relaxed);
        }
        if let Some((delay, timer @ None)) = &mut self.polling
            && batch.real
        {
            *timer = Some(Box::pin(tokio::time::sleep(*delay)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// What every open stream keeps besides hyper's connection: printed for BENCHMARKS.md
    /// (`cargo test --lib per_stream_state -- --nocapture`), bounded so it stays small.
    #[test]
    fn per_stream_state_is_small() {
        let body = size_of::<super::SseBody>();
        let stream = size_of::<super::Stream>();
        let conn = size_of::<crate::conn::Conn>();
        println!("SseBody {body} B, its boxed Stream {stream} B, Conn {conn} B (in an Arc: +16 B)");
        assert!(body <= 64, "SseBody is {body} B");
        assert!(stream <= 128, "Stream is {stream} B");
        // The channel list lives in the Conn (the replay task that a resume may start reads it
        // there), no longer in the Stream's registration: 16 B moved from one to the other.
        assert!(conn <= 208, "Conn is {conn} B");
    }
}
