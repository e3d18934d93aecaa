//! The streaming response body: drains one connection's queue into the socket.
//!
//! It writes the shared, pre-encoded frames as they are (several queued frames are joined into
//! one write), heartbeats when the hub asks, closes a long-polling stream a delay after its first
//! real event, ends with `retry:` on shutdown, and ends with an error when the client was too
//! slow, which makes hyper close the socket (HTTP/1) or reset the stream (HTTP/2) instead of
//! waiting to write a final chunk to a client that does not read (a server blocked on such a
//! client watches the response's `transport::StreamHandle` instead). Dropping the body unregisters the connection.
//!
//! A sample of the writes with live events in them (each stream's first, then one in
//! [`TIMED_WRITES`]) is timed from the oldest one's arrival in the process (the delivery
//! histogram), and a stream's end is one `info` line: its id, its number of channels
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
use crate::merge::Group;

/// Frames joined into one write at most.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// One write with live events in N is timed (each stream's first, then every Nth): a clock
/// read and a histogram update on every write added about 45 ns per delivery to an in-process
/// fan-out of about 60 ns (`cargo bench --bench fanout`, `deliver_to_every_stream`).
const TIMED_WRITES: u32 = 8;

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
    /// With ids per channel, the stream's other connections (see `merge`).
    group: Option<Box<Group>>,
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
    /// Writes with live events in them so far (one in [`TIMED_WRITES`] is timed).
    live_writes: u32,
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
        SseBody::with_group(reg, None, polling, span)
    }

    /// The body of a stream whose ids are per channel: one connection per channel, in sorted
    /// channel order, merged (see `merge`); `hash` is the channel list's and `seqs` where the
    /// client starts in each channel. `regs` is never empty.
    pub(crate) fn group(
        mut regs: Vec<Registration>,
        hash: u32,
        seqs: Vec<u64>,
        polling: Option<Duration>,
        span: tracing::Span,
    ) -> Self {
        let rest = regs.split_off(1);
        let Some(reg) = regs.pop() else {
            return SseBody::full(Bytes::new());
        };
        let group = Box::new(Group::new(rest, hash, seqs));
        SseBody::with_group(reg, Some(group), polling, span)
    }

    fn with_group(
        reg: Registration,
        group: Option<Box<Group>>,
        polling: Option<Duration>,
        span: tracing::Span,
    ) -> Self {
        SseBody {
            inner: Inner::Stream(Box::new(Stream {
                reg,
                group,
                span,
                polling: polling.map(|d| (d, None)),
                ended: false,
                ended_by: None,
                opened: std::time::Instant::now(),
                live_writes: 0,
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
        let drained = match &mut self.group {
            None => self.reg.conn.drain(cx, MAX_BATCH_BYTES),
            Some(group) => group.drain(&self.reg.conn, cx, MAX_BATCH_BYTES),
        };
        let bytes = match drained {
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
                self.ended_by = self.conn_end_reason();
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
            if self.live_writes.is_multiple_of(TIMED_WRITES) {
                metrics.delivered_after(arrived.elapsed());
            }
            self.live_writes = self.live_writes.wrapping_add(1);
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

impl Stream {
    /// Why the stream ended: as the body ended it, else as the server did (a slow client that
    /// a blocked server closed, a shutdown whose `retry:` was never written), else the client
    /// left.
    fn end_reason(&self) -> EndReason {
        self.ended_by
            .or_else(|| self.conn_end_reason())
            .unwrap_or(EndReason::ClientClosed)
    }

    /// Why the server ended the stream's connection (any of them, in a group).
    fn conn_end_reason(&self) -> Option<EndReason> {
        match &self.group {
            None => self.reg.conn.end_reason(),
            Some(group) => group.end_reason(&self.reg.conn),
        }
    }
}

/// The stream's last line and its duration, before its registration goes.
impl Drop for Stream {
    fn drop(&mut self) {
        let conn = &self.reg.conn;
        let reason = self.end_reason();
        let lasted = self.opened.elapsed();
        self.reg.hub.metrics.stream_ended_after(lasted);
        // A root event with the span's fields of its own: one line that says it all, in text
        // and in JSON alike.
        tracing::info!(
            parent: None,
            conn = conn.id,
            channels = conn.channels.len() + self.group.as_ref().map_or(0, |g| g.rest.len()),
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
    use std::sync::Arc;

    use super::*;
    use crate::conn::Conn;
    use crate::event::Frame;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    /// A stream body on one channel of a fresh hub, live, with a queue bound of `max_bytes`.
    fn open(max_bytes: usize, polling: Option<Duration>) -> (SseBody, Arc<Conn>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(metrics.clone(), None, false, max_bytes, 100));
        let channels: Box<[Arc<str>]> = vec![Arc::from("a")].into();
        let conn = Conn::until(1, channels, max_bytes, None);
        hub.register(&conn, &conn.channels).unwrap();
        conn.start(vec![], vec![], 0, 0);
        let reg = Registration {
            hub,
            conn: conn.clone(),
        };
        (
            SseBody::stream(reg, polling, tracing::Span::none()),
            conn,
            metrics,
        )
    }

    fn poll(body: &mut SseBody) -> Poll<Option<Result<BodyFrame<Bytes>, SlowClient>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        http_body::Body::poll_frame(Pin::new(body), &mut cx)
    }

    fn reason(body: &SseBody) -> EndReason {
        match &body.inner {
            Inner::Stream(s) => s.end_reason(),
            Inner::Full(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn a_stream_ends_with_the_reason_of_whoever_ended_it() {
        // The client left: nothing ended it.
        let (body, _, metrics) = open(1024, None);
        assert_eq!(reason(&body), EndReason::ClientClosed);
        drop(body);
        let text = metrics.render_prometheus();
        assert!(
            text.contains("redisse_stream_duration_seconds_count 1\n"),
            "{text}"
        );

        // Slow, seen by the body, or only by a server blocked on the socket.
        for polled in [true, false] {
            let (mut body, conn, _) = open(16, None);
            let big = Frame::event(1, Bytes::from(vec![b'x'; 32]));
            assert_eq!(conn.push(&big, false), crate::conn::Push::BecameSlow);
            if polled {
                assert!(matches!(
                    poll(&mut body),
                    Poll::Ready(Some(Err(SlowClient)))
                ));
            }
            assert_eq!(reason(&body), EndReason::SlowClient, "polled: {polled}");
        }

        // Shut down: after the `retry:` was written, or before.
        for polled in [true, false] {
            let (mut body, conn, _) = open(1024, None);
            conn.end_with_retry(500, EndReason::Shutdown);
            if polled {
                assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
            }
            assert_eq!(reason(&body), EndReason::Shutdown, "polled: {polled}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_ends_as_such_and_live_writes_are_timed() {
        let (mut body, conn, metrics) = open(1024, Some(Duration::from_millis(10)));
        conn.push(&Frame::live(1, Bytes::from_static(b"id: 1\n\n")), false);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        let text = metrics.render_prometheus();
        assert!(
            text.contains("redisse_event_delivery_seconds_count 1\n"),
            "{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert_eq!(reason(&body), EndReason::LongPollDone);
    }

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
