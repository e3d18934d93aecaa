//! The streaming response body: drains one connection's queue into the socket.
//!
//! It writes the shared, pre-encoded frames as they are (several queued frames are joined into
//! one write), heartbeats when the hub asks, closes a long-polling stream a delay after its first
//! real event, ends with `retry:` on shutdown, and ends with an error when the client was too
//! slow, which makes hyper close the socket (HTTP/1) or reset the stream (HTTP/2) instead of
//! waiting to write a final chunk to a client that does not read (a server blocked on such a
//! client watches the response's `transport::StreamHandle` instead). Dropping the body unregisters the connection.
//!
//! Each write with live events in it is timed from the oldest one's arrival in the process (the
//! delivery histogram), and a stream's end is one `info` line: its id, its number of channels
//! (never their names, which the client chose), how long it lasted, what it was sent and why it
//! ended.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame as BodyFrame, SizeHint};
use tokio::time::Sleep;

use crate::conn::{Batch, Drained, EndReason};
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
    /// Why the body ended itself, when it did (a long poll's delay, or the server's end).
    ended_by: Option<EndReason>,
    /// When the stream opened, and the events and bytes it was sent, for its last log line.
    opened: std::time::Instant,
    events: u64,
    bytes: u64,
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
                ended_by: None,
                opened: std::time::Instant::now(),
                events: 0,
                bytes: 0,
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
            self.ended_by = Some(EndReason::LongPollDone);
            return Poll::Ready(None);
        }
        let bytes = match self.reg.conn.drain(cx, MAX_BATCH_BYTES) {
            Drained::Nothing => return Poll::Pending,
            Drained::Heartbeat => Bytes::from_static(HEARTBEAT_FRAME),
            Drained::Slow => {
                tracing::info!(parent: &self.span, "slow client: ending its stream");
                self.ended = true;
                self.ended_by = Some(EndReason::SlowClient);
                return Poll::Ready(Some(Err(SlowClient)));
            }
            Drained::Retry(ms) => {
                self.ended = true;
                self.ended_by = self.reg.conn.end_reason();
                retry_frame(ms)
            }
            Drained::Frames(batch) => {
                self.count(&batch);
                batch.bytes
            }
        };
        self.bytes += bytes.len() as u64;
        self.reg.hub.metrics.bytes_sent.inc_by(bytes.len() as u64);
        Poll::Ready(Some(Ok(BodyFrame::data(bytes))))
    }

    /// Counts what is sent and arms the long-polling timer on the first real event.
    fn count(&mut self, batch: &Batch) {
        let metrics = &self.reg.hub.metrics;
        if let Some(arrived) = batch.arrived {
            metrics.delivered_after(arrived.elapsed());
        }
        self.events += batch.frames as u64;
        metrics.events_sent.inc_by(batch.frames as u64);
        if batch.missed > 0 {
            metrics.missed_sent.inc_by(batch.missed as u64);
        }
        if let Some((delay, timer @ None)) = &mut self.polling
            && batch.real
        {
            *timer = Some(Box::pin(tokio::time::sleep(*delay)));
        }
    }
}

/// The stream's last line and its duration, before its registration goes.
impl Drop for Stream {
    fn drop(&mut self) {
        let conn = &self.reg.conn;
        let reason = self
            .ended_by
            .or_else(|| conn.end_reason())
            .unwrap_or(EndReason::ClientClosed);
        let lasted = self.opened.elapsed();
        self.reg.hub.metrics.stream_ended_after(lasted);
        // A root event with the span's fields of its own: one line that says it all, in text
        // and in JSON alike.
        tracing::info!(
            parent: None,
            conn = conn.id,
            channels = conn.channels.len(),
            reason = reason.as_str(),
            duration_seconds = lasted.as_millis() as f64 / 1000.0,
            events = self.events,
            bytes = self.bytes,
            "stream ended"
        );
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
