//! One SSE connection's queue, shared by the dispatcher (which fills it) and the body (which
//! drains it into the socket).
//!
//! The queue is bounded in bytes. The dispatcher never waits: a live push that would pass the
//! bound marks the connection slow, drops what was queued and wakes the body, which ends the
//! response with an error so the socket is closed; the browser comes back with `Last-Event-ID`
//! and is replayed from history. Ids are the order: a connection remembers the last id it queued
//! and drops anything not newer, which is what makes replay plus live delivery exactly-once.
//!
//! Only a client that fell behind what it was sent is slow. Two kinds of push never make a
//! stream slow, since what they would overflow is in history and can be read again at the
//! client's pace:
//!
//! - A stream that has not started (its setup has not read history yet, as through an outage)
//!   buffers live frames up to the bound; past it, it drops them and remembers the drop (a
//!   [`Paging`] state with an empty held buffer and one overflow). Its setup then starts it as a
//!   paged replay whatever its first read brought: the next page is read after the drop, so
//!   what was dropped after the first read began is read again, and what was dropped before it
//!   was published before it, so the first read already has it.
//! - A live stream that a resume (the refill after a subscriber reconnection, and the live
//!   events held behind it) would overflow keeps what it queued and becomes a paged replay from
//!   its last queued id ([`Push::Replaying`]): the hub has a task read its pages (see `replay`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use tokio::time::Instant;

use crate::event::{Frame, FrameKind};
use crate::seen::{Offer, Seen};
use crate::transport::SlowWatch;
use bytes::{Bytes, BytesMut};

/// Why a connection's stream is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The client fell behind: close the socket at once.
    Slow,
    /// Send what is queued, then `retry: <ms>`; the reason is the server's shutdown, the end
    /// of the grant, or a reset of the broker's data during a paged replay.
    Retry(u64, EndReason),
}

/// Why a stream ended, as its last log line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The client closed the connection (or the stream's body was dropped).
    ClientClosed,
    /// The client fell behind its queue's bound and was disconnected.
    SlowClient,
    /// The server is shutting down.
    Shutdown,
    /// The token or callback grant expired: the client comes back with a fresh one.
    GrantExpired,
    /// Redis lost its data while the stream replayed in pages: the client resumes.
    BrokerReset,
    /// A long-polling stream ended its delay after its first event.
    LongPollDone,
}

impl EndReason {
    /// The word in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::SlowClient => "slow_client",
            EndReason::Shutdown => "shutdown",
            EndReason::GrantExpired => "grant_expired",
            EndReason::BrokerReset => "broker_reset",
            EndReason::LongPollDone => "long_poll_done",
        }
    }
}

/// Result of offering a frame to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Queued,
    /// Dropped: already delivered (id not newer), or the stream is ending.
    Skipped,
    /// This push made the connection slow.
    BecameSlow,
    /// This push (part of a resume) would have overflowed a live stream, which replays from its
    /// last queued id instead: someone must read its pages (see `replay::catch_up`).
    Replaying,
}

/// What [`Conn::start`] and [`Conn::start_paged`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Started {
    /// A reset came after the plan's snapshot: nothing started, the plan must be made again.
    Stale,
    /// Live (or gone: nothing to do).
    Live,
    /// A paged replay: the caller reads the next pages (see `replay::replay_pages`).
    Paging,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// Replay is done and the queue may be drained.
    ready: bool,
    /// The ids queued so far: the highest (or the client's position) and a window below it.
    seen: Seen,
    heartbeat_due: bool,
    /// One of a stream's connections other than its first, when its ids are per channel (a
    /// Redis Cluster: one connection per channel, see `compound`): not counted as a stream.
    /// (Here rather than beside the channels, where it would make every `Conn` 8 bytes larger.)
    part: bool,
    /// Id of the first live event (not a refill) received before the stream started.
    first_live: Option<u64>,
    /// Resets (Redis lost its data) seen so far: a stream whose history snapshot may predate
    /// one must read it again before it starts.
    resets: u64,
    end: Option<End>,
    /// The stream's body is gone (the client left or the response ended).
    gone: bool,
    /// The body's task, woken by every change.
    waker: Option<Waker>,
    /// A server blocked writing to this client, woken when it becomes slow (see
    /// [`SlowWatch`]); its own slot, as it may be another task than the body's.
    slow_waker: Option<Waker>,
    /// The stream's setup task, woken when the stream ends or its client leaves (so that a
    /// setup waiting for the broker lets go of everything at once), and while it replays in
    /// pages, when the body took frames from the queue.
    setup_waker: Option<Waker>,
    /// Set while a replay larger than one page is under way (boxed: most streams never page),
    /// and before the stream starts once its buffer overflowed.
    paging: Option<Box<Paging>>,
}

/// A replay in pages: the queue holds replay frames the body may drain, the setup task reads
/// the next page once there is room, and live frames wait here until the replay reaches them.
#[derive(Debug, Default)]
struct Paging {
    /// Live frames received meanwhile, bounded like the queue: when full they are dropped,
    /// since history holds them too, and a later page reads them.
    held: VecDeque<Frame>,
    held_bytes: usize,
    /// Times `held` was dropped: a page read before the last drop cannot be the last page.
    overflows: u64,
    /// When `held` was last dropped: a history read shared with another stream must have
    /// started after it to be this stream's last page.
    dropped_at: Option<Instant>,
    /// `missedevents` was sent during this replay: a loss is told once, not once per page.
    missed_sent: bool,
}

/// Where a paging replay stands, as [`Conn::replayed_to`] reads it before the next page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageFrom {
    /// The next page starts after this id.
    pub after: u64,
    overflows: u64,
    /// When live frames were last dropped (see [`Paging::dropped_at`]).
    pub dropped_at: Option<Instant>,
}

/// Why a paging stream ends when Redis loses its data: its client comes back with its
/// position after this many milliseconds and gets a plan made from the new ids.
const RESET_RETRY_MS: u64 = 1000;

/// The shared half of one connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Identifies the connection in the hub's registry and in logs.
    pub id: u64,
    /// The stream's channels, which its history reads name.
    pub channels: Box<[Arc<str>]>,
    /// Queued bytes past which the client is slow.
    max_bytes: usize,
    /// When the stream's grant ends (seconds since the Unix epoch; `u64::MAX`: never).
    expires_at: u64,
    state: Mutex<State>,
}

/// Queued frames taken in one poll, joined into one write.
pub(crate) struct Batch {
    pub bytes: Bytes,
    /// Frames in the batch.
    pub frames: usize,
    /// `missedevents` frames among them.
    pub missed: usize,
    /// Whether one of them is a real event (not `lastEventId`): starts the long-polling delay.
    pub real: bool,
    /// When the oldest live event among them arrived in the process (see [`Frame::arrived`]).
    pub arrived: Option<std::time::Instant>,
}

impl Batch {
    /// A batch of nothing yet.
    pub fn empty() -> Self {
        Batch {
            bytes: Bytes::new(),
            frames: 0,
            missed: 0,
            real: false,
            arrived: None,
        }
    }
}

/// What the body takes from the queue in one poll.
pub(crate) enum Drained {
    Frames(Batch),
    Heartbeat,
    Slow,
    Retry(u64),
    Nothing,
}

impl Conn {
    #[cfg(test)]
    pub fn new(id: u64, max_bytes: usize) -> Arc<Self> {
        Conn::until(id, Box::default(), max_bytes, None)
    }

    /// A connection on `channels` whose grant ends at `expires` (a token's `exp`).
    pub fn until(
        id: u64,
        channels: Box<[Arc<str>]>,
        max_bytes: usize,
        expires: Option<std::time::SystemTime>,
    ) -> Arc<Self> {
        Conn::build(id, channels, max_bytes, expires, false)
    }

    /// The connection of one channel of a stream whose ids are per channel; `part` for all but
    /// the stream's first (see [`Conn::part`]).
    pub fn per_channel(
        id: u64,
        channel: Arc<str>,
        max_bytes: usize,
        expires: Option<std::time::SystemTime>,
        part: bool,
    ) -> Arc<Self> {
        Conn::build(id, Box::new([channel]), max_bytes, expires, part)
    }

    fn build(
        id: u64,
        channels: Box<[Arc<str>]>,
        max_bytes: usize,
        expires: Option<std::time::SystemTime>,
        part: bool,
    ) -> Arc<Self> {
        let expires_at = expires.map_or(u64::MAX, |t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        Arc::new(Conn {
            id,
            channels,
            max_bytes,
            expires_at,
            state: Mutex::new(State {
                part,
                ..State::default()
            }),
        })
    }

    /// See [`State::part`].
    pub fn is_part(&self) -> bool {
        self.lock().part
    }

    /// Whether the stream started: its replay plan is in the queue (or the stream is gone).
    pub fn is_started(&self) -> bool {
        let st = self.lock();
        st.ready || st.gone
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the stream, so a poisoned lock is simply taken over.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a live frame. Never blocks beyond the queue's own short lock. `refill` marks an
    /// event read from history after a subscriber reconnection: it may be old, so it does not
    /// count as the first live event a stream received while being set up.
    pub fn push(&self, frame: &Frame, refill: bool) -> Push {
        self.offer(frame, refill, false)
    }

    /// Like [`Conn::push`] for a frame of a resume (the refill, or a live event held behind
    /// it): a live stream it would overflow becomes a paged replay ([`Push::Replaying`]).
    pub fn push_resumed(&self, frame: &Frame, refill: bool) -> Push {
        self.offer(frame, refill, true)
    }

    fn offer(&self, frame: &Frame, refill: bool, resumed: bool) -> Push {
        let mut st = self.lock();
        if st.end.is_some() || st.gone {
            return Push::Skipped;
        }
        if !st.ready && !refill && frame.id != 0 && st.first_live.is_none() {
            st.first_live = Some(frame.id);
        }
        // A late event (see `seen`) goes without its `id:` line, and never to history's pages:
        // they read after the last id, so none would bring it again.
        let is_late =
            st.ready && frame.id != 0 && frame.id < st.seen.last() && !st.seen.has(frame.id);
        if st.paging.is_some() {
            if is_late {
                st.seen.offer(frame.id);
                let late = frame.without_id();
                st.queued_bytes += late.bytes.len();
                st.queue.push_back(late);
                wake(st);
                return Push::Queued;
            }
            return hold(&mut st, frame, self.max_bytes);
        }
        if st.ready && frame.id != 0 && st.seen.has(frame.id) {
            return Push::Skipped;
        }
        let late;
        let frame = if is_late {
            late = frame.without_id();
            &late
        } else {
            frame
        };
        let fits = st.queued_bytes + frame.bytes.len() <= self.max_bytes;
        if !fits && is_late && resumed {
            // Past the bound by late events of a resume only (at most the window's): queued.
            st.seen.offer(frame.id);
            st.queued_bytes += frame.bytes.len();
            st.queue.push_back(frame.clone());
            wake(st);
            return Push::Queued;
        }
        if !fits && (!st.ready || resumed) {
            // History holds the frame and what follows it: read again at the client's pace.
            if !st.ready {
                st.queue = VecDeque::new();
                st.queued_bytes = 0;
            }
            st.paging = Some(Box::new(Paging {
                overflows: 1,
                dropped_at: Some(Instant::now()),
                ..Paging::default()
            }));
            return if st.ready {
                Push::Replaying
            } else {
                Push::Skipped
            };
        }
        if st.ready && frame.id != 0 {
            st.seen.offer(frame.id);
        }
        if !fits {
            st.queue = VecDeque::new();
            st.queued_bytes = 0;
            st.end = Some(End::Slow);
            let others = [st.slow_waker.take(), st.setup_waker.take()];
            wake(st);
            for w in others.into_iter().flatten() {
                w.wake();
            }
            return Push::BecameSlow;
        }
        st.queued_bytes += frame.bytes.len();
        st.queue.push_back(frame.clone());
        wake(st);
        Push::Queued
    }

    /// Ends the replay phase: `preamble` (control frames) and `replay` (history, ascending ids)
    /// go first, then the live frames buffered meanwhile that are newer than `position` and
    /// than every replayed id. Does nothing and returns [`Started::Stale`] when a reset came
    /// after [`Conn::resets`] returned `resets_seen`: the plan was made from ids that no longer
    /// exist. A stream that dropped live frames while waiting (its buffer overflowed) starts as
    /// a paged replay instead ([`Started::Paging`]): its next page reads them again.
    pub fn start(
        &self,
        preamble: Vec<Frame>,
        replay: Vec<Frame>,
        position: u64,
        resets_seen: u64,
    ) -> Started {
        self.begin(preamble, replay, position, resets_seen, None)
    }

    /// Like [`Conn::start`] for the first page of a replay larger than one, read up to
    /// `page_end`: the preamble and the page go to the queue, the live frames buffered so far
    /// wait (see [`Paging`]) until [`Conn::next_page`] brings the last page.
    pub fn start_paged(
        &self,
        preamble: Vec<Frame>,
        page: Vec<Frame>,
        position: u64,
        resets_seen: u64,
        page_end: u64,
    ) -> Started {
        self.begin(preamble, page, position, resets_seen, Some(page_end))
    }

    fn begin(
        &self,
        preamble: Vec<Frame>,
        replay: Vec<Frame>,
        position: u64,
        resets_seen: u64,
        page_end: Option<u64>,
    ) -> Started {
        let mut st = self.lock();
        if st.gone {
            // Nobody will read it: nothing to start.
            return Started::Live;
        }
        if st.resets != resets_seen {
            return Started::Stale;
        }
        // Live frames dropped while waiting (`paging` already set) are read again by a page
        // that begins after the drop: the stream pages even when this plan is whole.
        let mut overflowed = st.paging.take();
        let live = match &mut overflowed {
            Some(p) => std::mem::take(&mut p.held),
            None => std::mem::take(&mut st.queue),
        };
        let mut last = Seen::at(position);
        let mut queue: VecDeque<Frame> = preamble.into();
        let started = if page_end.is_some() || overflowed.is_some() {
            let missed_sent = queue.iter().any(|f| f.kind == FrameKind::MissedEvents);
            st.paging = Some(Box::new(Paging {
                held_bytes: live.iter().map(|f| f.bytes.len()).sum(),
                held: live,
                overflows: overflowed.as_ref().map_or(0, |p| p.overflows),
                dropped_at: overflowed.as_ref().and_then(|p| p.dropped_at),
                missed_sent,
            }));
            append_newer(&mut queue, &mut last, replay);
            // Entries up to the page's end that were refused were read all the same.
            last.advance(page_end.unwrap_or(0));
            Started::Paging
        } else {
            append_newer(&mut queue, &mut last, replay.into_iter().chain(live));
            Started::Live
        };
        st.queued_bytes = queue.iter().map(|f| f.bytes.len()).sum();
        st.queue = queue;
        st.seen = last;
        st.ready = true;
        wake(st);
        started
    }

    /// Where a paging replay stands, to read the next page from and pass back to
    /// [`Conn::next_page`].
    pub fn replayed_to(&self) -> PageFrom {
        let st = self.lock();
        PageFrom {
            after: st.seen.last(),
            overflows: st.paging.as_ref().map_or(0, |p| p.overflows),
            dropped_at: st.paging.as_ref().and_then(|p| p.dropped_at),
        }
    }

    /// Queues the next page of a paging replay, read from `from`: `missedevents` first when
    /// `missed` (once per replay), then its frames newer than the last queued; `page_end` is
    /// where the page stopped at its budget (`None`: it reached the end of history). The held
    /// live frames follow and the stream is live once a last page was read after the last
    /// drop of live frames and they all fit the queue's bound with it; otherwise another page
    /// follows. Returns whether the replay is over (or the stream gone).
    pub fn next_page(
        &self,
        missed: bool,
        page: Vec<Frame>,
        page_end: Option<u64>,
        from: PageFrom,
    ) -> bool {
        let mut st = self.lock();
        if st.end.is_some() || st.gone {
            return true;
        }
        let Some(mut paging) = st.paging.take() else {
            return true;
        };
        let mut seen = st.seen;
        let mut queue = std::mem::take(&mut st.queue);
        if missed && !paging.missed_sent {
            paging.missed_sent = true;
            queue.push_back(Frame::missed_events());
        }
        append_newer(&mut queue, &mut seen, page);
        seen.advance(page_end.unwrap_or(0));
        // What the replay now holds need not wait any more.
        paging.held.retain(|f| f.id == 0 || !seen.has(f.id));
        paging.held_bytes = paging.held.iter().map(|f| f.bytes.len()).sum();
        let queued: usize = queue.iter().map(|f| f.bytes.len()).sum();
        let done = page_end.is_none()
            && paging.overflows == from.overflows
            && queued + paging.held_bytes <= self.max_bytes;
        if done {
            append_newer(&mut queue, &mut seen, std::mem::take(&mut paging.held));
        } else {
            st.paging = Some(paging);
        }
        st.queued_bytes = queue.iter().map(|f| f.bytes.len()).sum();
        st.queue = queue;
        st.seen = seen;
        wake(st);
        done
    }

    /// The setup task is done: its waker must not keep the finished task's memory. While the
    /// stream pages, the slot is the task that reads its pages (a live stream that a resume
    /// turned into a replay gets one of its own), which replaces the waker when it waits.
    pub fn forget_setup(&self) {
        let mut st = self.lock();
        if st.paging.is_none() {
            st.setup_waker = None;
        }
    }

    /// Resolves once at most `bytes` are queued (or the stream is ending): a paging replay
    /// reads its next page then.
    pub async fn room(&self, bytes: usize) {
        self.setup_waits(|st| st.queued_bytes <= bytes).await
    }

    /// Resolves once the stream is ending, its client has left, or `done` holds; the setup
    /// task's waker is registered meanwhile (woken by every change it waits for).
    async fn setup_waits(&self, done: impl Fn(&State) -> bool) {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.end.is_some() || st.gone || done(&st) {
                return std::task::Poll::Ready(());
            }
            match &st.setup_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.setup_waker = Some(cx.waker().clone()),
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// The id of the first live event the stream received before it started, which the
    /// dispatcher offered after the stream registered; refills excepted.
    pub fn first_buffered(&self) -> Option<u64> {
        let st = self.lock();
        if st.ready {
            return None;
        }
        st.first_live
    }

    /// Resets seen so far, to pass to [`Conn::start`].
    pub fn resets(&self) -> u64 {
        self.lock().resets
    }

    /// Redis lost its data: ids start again from a lower value. Tells the client that events
    /// may be lost and accepts the new, lower ids. A stream still in its replay phase drops what
    /// it buffered (older ids, or ids its plan cannot place) and starts over from a new snapshot,
    /// whose plan sends `missedevents` and everything retained.
    pub fn reset(&self, missed: Frame) {
        let mut st = self.lock();
        if st.end.is_some() {
            return;
        }
        st.resets += 1;
        if !st.ready {
            // What it buffered or dropped has ids that no longer exist: its setup reads again.
            st.queue.clear();
            st.queued_bytes = 0;
            st.first_live = None;
            st.paging = None;
            return;
        }
        if st.paging.take().is_some() {
            // Part of the replay was sent with ids that no longer exist, and the rest cannot
            // be placed among the new ones: the client resumes with a plan made from them.
            st.end = Some(End::Retry(RESET_RETRY_MS, EndReason::BrokerReset));
            let setup = st.setup_waker.take();
            wake(st);
            if let Some(w) = setup {
                w.wake();
            }
            return;
        }
        st.seen = Seen::at(0);
        st.queued_bytes += missed.bytes.len();
        st.queue.push_back(missed);
        wake(st);
    }

    /// Whether the stream's grant has ended at `now` (seconds since the Unix epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }

    /// Asks for a heartbeat at the next poll.
    pub fn heartbeat(&self) {
        let mut st = self.lock();
        if !st.heartbeat_due && st.end.is_none() {
            st.heartbeat_due = true;
            wake(st);
        }
    }

    /// Ends the stream after what is queued, with a `retry:` hint.
    pub fn end_with_retry(&self, millis: u64, why: EndReason) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.end = Some(End::Retry(millis, why));
            let setup = st.setup_waker.take();
            wake(st);
            if let Some(w) = setup {
                w.wake();
            }
        }
    }

    /// Why the server ended the stream, if it did.
    pub fn end_reason(&self) -> Option<EndReason> {
        match self.lock().end? {
            End::Slow => Some(EndReason::SlowClient),
            End::Retry(_, why) => Some(why),
        }
    }

    /// Whether the stream is ending, or already gone.
    pub fn is_ending(&self) -> bool {
        let st = self.lock();
        st.end.is_some() || st.gone
    }

    /// The stream's body was dropped: nothing will read the queue again. Frees what is queued
    /// and wakes a server watching the stream and the setup task, so that they let go of it at
    /// once.
    pub fn leave(&self) {
        let mut st = self.lock();
        st.gone = true;
        st.queue = VecDeque::new();
        st.queued_bytes = 0;
        let slow_waker = st.slow_waker.take();
        let setup_waker = st.setup_waker.take();
        drop(st);
        for w in [slow_waker, setup_waker].into_iter().flatten() {
            w.wake();
        }
    }

    /// Resolves once the stream is ending or its client has left: what a setup task races
    /// against each of its waits.
    pub async fn ended(&self) {
        self.setup_waits(|_| false).await
    }

    /// Takes what the body should write next, or registers the waker.
    pub fn drain(&self, cx: &mut Context<'_>, max_batch_bytes: usize) -> Drained {
        self.drain_to(cx, max_batch_bytes, None)
    }

    /// Like [`Conn::drain`], with the frames handed over one by one in `out` (the batch's
    /// bytes empty), for a body that writes their `id:` lines itself.
    pub fn drain_frames(
        &self,
        cx: &mut Context<'_>,
        max_batch_bytes: usize,
        out: &mut Vec<Frame>,
    ) -> Drained {
        self.drain_to(cx, max_batch_bytes, Some(out))
    }

    fn drain_to(
        &self,
        cx: &mut Context<'_>,
        max_batch_bytes: usize,
        out: Option<&mut Vec<Frame>>,
    ) -> Drained {
        let mut st = self.lock();
        if st.end == Some(End::Slow) {
            return Drained::Slow;
        }
        if st.ready && !st.queue.is_empty() {
            let batch = take_batch(&mut st, max_batch_bytes, out);
            if st.paging.is_some()
                && let Some(setup) = st.setup_waker.take()
            {
                drop(st);
                setup.wake();
            }
            return Drained::Frames(batch);
        }
        // Ending: what was ready has been written above; a stream still waiting for its
        // replay ends too (its client resumes from the same position).
        if let Some(End::Retry(ms, _)) = st.end {
            return Drained::Retry(ms);
        }
        if st.heartbeat_due {
            st.heartbeat_due = false;
            return Drained::Heartbeat;
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Drained::Nothing
    }
}

/// For a writer blocked on a client that does not read, which must still notice it is too slow.
impl SlowWatch for Conn {
    fn is_finished(&self) -> bool {
        self.lock().gone
    }

    fn poll_slow(&self, cx: &mut Context<'_>) -> bool {
        let mut st = self.lock();
        if st.end == Some(End::Slow) {
            return true;
        }
        match &st.slow_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.slow_waker = Some(cx.waker().clone()),
        }
        false
    }
}

/// Appends the frames not queued yet (see [`Seen`]; a late one without its `id:` line) and
/// those without an id, recording them in `seen`.
fn append_newer(
    queue: &mut VecDeque<Frame>,
    seen: &mut Seen,
    frames: impl IntoIterator<Item = Frame>,
) {
    for frame in frames {
        if frame.id == 0 {
            queue.push_back(frame);
            continue;
        }
        match seen.offer(frame.id) {
            Offer::New => queue.push_back(frame),
            Offer::Late => queue.push_back(frame.without_id()),
            Offer::Seen => {}
        }
    }
}

/// A live frame offered while a replay is paging: kept for the end of the replay, unless the
/// replay already queued it; when the held frames would pass the bound they are all dropped
/// (history holds them, and the next page reads them).
fn hold(st: &mut State, frame: &Frame, max_bytes: usize) -> Push {
    if frame.id != 0 && st.seen.has(frame.id) {
        return Push::Skipped;
    }
    let Some(paging) = st.paging.as_mut() else {
        return Push::Skipped;
    };
    if paging.held_bytes + frame.bytes.len() > max_bytes {
        paging.held = VecDeque::new();
        paging.held_bytes = 0;
        paging.overflows += 1;
        paging.dropped_at = Some(Instant::now());
        return Push::Skipped;
    }
    paging.held_bytes += frame.bytes.len();
    paging.held.push_back(frame.clone());
    Push::Queued
}

/// Takes the queued frames up to `max_bytes` (at least one). A single frame, the usual case in a
/// fan-out, is handed on as it is: no allocation and no copy. With `out`, the frames are handed
/// over one by one there instead of joined (the batch's bytes stay empty): for a body that
/// writes each frame's `id:` line itself (see `merge`).
fn take_batch(st: &mut State, max_bytes: usize, mut out: Option<&mut Vec<Frame>>) -> Batch {
    let mut batch = Batch::empty();
    let mut joined: Option<BytesMut> = None;
    let mut taken = 0usize;
    while let Some(frame) = st.queue.front() {
        let len = frame.bytes.len();
        if batch.frames > 0 && taken + len > max_bytes {
            break;
        }
        let Some(frame) = st.queue.pop_front() else {
            break;
        };
        st.queued_bytes -= len;
        taken += len;
        batch.frames += 1;
        batch.missed += usize::from(frame.kind == FrameKind::MissedEvents);
        batch.real |= frame.kind != FrameKind::LastEventId;
        batch.arrived = batch.arrived.or(frame.arrived);
        if let Some(out) = &mut out {
            out.push(frame);
            continue;
        }
        match &mut joined {
            Some(j) => j.extend_from_slice(&frame.bytes),
            None if batch.frames == 1 => batch.bytes = frame.bytes,
            None => {
                let rest: usize = st.queue.iter().map(|f| f.bytes.len()).sum();
                let mut j =
                    BytesMut::with_capacity((batch.bytes.len() + len + rest).min(max_bytes));
                j.extend_from_slice(&std::mem::take(&mut batch.bytes));
                j.extend_from_slice(&frame.bytes);
                joined = Some(j);
            }
        }
    }
    if let Some(j) = joined {
        batch.bytes = j.freeze();
    }
    batch
}

fn wake(mut st: MutexGuard<'_, State>) {
    let waker = st.waker.take();
    drop(st);
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64) -> Frame {
        Frame::event(id, Bytes::from(format!("id: {id}\n\n")))
    }

    fn ids(conn: &Conn) -> Vec<u64> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut ids = Vec::new();
        // One frame per drain, so that each frame's id can be read back from its bytes.
        while let Drained::Frames(b) = conn.drain(&mut cx, 1) {
            let text = std::str::from_utf8(&b.bytes).unwrap();
            ids.push(
                text.strip_prefix("id: ")
                    .and_then(|t| t.split('\n').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            );
        }
        ids
    }

    #[test]
    fn replay_then_live_is_exactly_once_and_ordered() {
        let conn = Conn::new(1, 1 << 20);
        conn.push(&frame(5), false);
        conn.push(&frame(6), false);
        assert!(ids(&conn).is_empty(), "nothing flows before replay");
        assert_eq!(
            conn.start(vec![], vec![frame(3), frame(4), frame(5)], 2, 0),
            Started::Live
        );
        conn.push(&frame(6), false);
        conn.push(&frame(7), false);
        assert_eq!(ids(&conn), [3, 4, 5, 6, 7]);
    }

    fn missed() -> Frame {
        Frame {
            id: 0,
            bytes: Bytes::from_static(b"event: missedevents\ndata: \n\n"),
            kind: FrameKind::MissedEvents,
            arrived: None,
        }
    }

    #[test]
    fn a_reset_before_start_makes_the_plan_stale() {
        let conn = Conn::new(1, 1 << 20);
        let seen = conn.resets();
        conn.push(&frame(48), false);
        conn.reset(missed());
        conn.push(&frame(1), false);
        // The plan read before the reset (old ids) is refused, and the old buffered id is gone.
        assert_eq!(
            conn.start(vec![], vec![frame(47)], 40, seen),
            Started::Stale
        );
        assert!(ids(&conn).is_empty());
        // The plan read again after it: missedevents, what is retained, then live.
        assert_eq!(
            conn.start(vec![missed()], vec![frame(1)], 0, conn.resets()),
            Started::Live
        );
        conn.push(&frame(2), false);
        assert_eq!(ids(&conn), [0, 1, 2]);
    }

    #[test]
    fn refills_are_not_the_first_live_event() {
        let conn = Conn::new(1, 1 << 20);
        conn.push(&frame(3), true);
        assert_eq!(conn.first_buffered(), None);
        conn.push(&frame(7), false);
        conn.push(&frame(8), false);
        assert_eq!(conn.first_buffered(), Some(7));
        assert_eq!(conn.start(vec![], vec![], 6, 0), Started::Live);
        assert_eq!(conn.first_buffered(), None);
    }

    #[test]
    fn a_reset_of_a_live_stream_accepts_the_lower_ids() {
        let conn = Conn::new(1, 1 << 20);
        assert_eq!(conn.start(vec![], vec![], 50, 0), Started::Live);
        conn.push(&frame(51), false);
        conn.reset(missed());
        conn.push(&frame(1), false);
        assert_eq!(ids(&conn), [51, 0, 1]);
    }

    #[test]
    fn queued_frames_are_joined_up_to_the_batch_limit() {
        let conn = Conn::new(1, 1 << 20);
        assert_eq!(conn.start(vec![], vec![], 0, 0), Started::Live);
        for id in 1..=4 {
            conn.push(&frame(id), false);
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Each frame is 9 bytes: three fit in 27.
        let Drained::Frames(b) = conn.drain(&mut cx, 27) else {
            panic!("nothing drained")
        };
        assert_eq!((b.frames, b.missed, b.real), (3, 0, true));
        assert_eq!(&b.bytes[..], b"id: 1\n\nid: 2\n\nid: 3\n\n");
        let Drained::Frames(b) = conn.drain(&mut cx, 27) else {
            panic!("nothing drained")
        };
        assert_eq!(&b.bytes[..], b"id: 4\n\n");
        assert!(matches!(conn.drain(&mut cx, 27), Drained::Nothing));
        assert_eq!(conn.lock().queued_bytes, 0);
    }

    #[test]
    fn a_stream_whose_body_is_gone_takes_nothing_more_and_is_finished() {
        let conn = Conn::new(1, 1 << 20);
        assert_eq!(conn.start(vec![], vec![], 0, 0), Started::Live);
        conn.push(&frame(1), false);
        assert!(!conn.is_finished() && !conn.is_ending());
        conn.leave();
        // A server watching it lets go, its setup task stops, and nothing is queued any more,
        // whoever else still holds the connection.
        assert!(conn.is_finished());
        assert!(conn.is_ending());
        assert_eq!(conn.push(&frame(2), false), Push::Skipped);
        assert_eq!(conn.lock().queued_bytes, 0);
        assert!(conn.lock().queue.is_empty());
    }

    #[test]
    fn a_paged_replay_holds_live_frames_until_its_last_page() {
        let conn = Conn::new(1, 1 << 20);
        conn.push(&frame(5), false);
        assert_eq!(
            conn.start_paged(vec![], vec![frame(3), frame(4)], 2, 0, 4),
            Started::Paging
        );
        conn.push(&frame(6), false);
        assert_eq!(ids(&conn), [3, 4], "live frames wait for the replay");
        let from = conn.replayed_to();
        assert_eq!((from.after, from.overflows), (4, 0));
        // The last page overlaps the held frames: each id once, in order.
        assert!(conn.next_page(false, vec![frame(5), frame(6)], None, from));
        conn.push(&frame(7), false);
        assert_eq!(ids(&conn), [5, 6, 7]);
    }

    #[test]
    fn held_frames_past_the_bound_are_dropped_and_read_again() {
        // Each frame is 9 bytes: two fit in 20.
        let conn = Conn::new(1, 20);
        let before = conn.replayed_to();
        assert_eq!(
            conn.start_paged(vec![], vec![frame(1)], 0, 0, 1),
            Started::Paging
        );
        for id in 2..=4 {
            assert_ne!(conn.push(&frame(id), false), Push::BecameSlow);
        }
        let from = conn.replayed_to();
        assert_eq!((from.after, from.overflows), (1, 1));
        assert!(from.dropped_at.is_some());
        // A last page read before the drop is not the end; one read after it is.
        assert!(!conn.next_page(false, vec![frame(2)], None, before));
        assert_eq!(ids(&conn), [1, 2]);
        assert!(conn.next_page(false, vec![frame(3), frame(4)], None, from));
        assert_eq!(ids(&conn), [3, 4]);
        assert!(!conn.is_ending(), "never slow while paging");
    }

    #[test]
    fn a_page_of_refused_entries_still_moves_the_replay_on_and_a_loss_is_told_once() {
        let conn = Conn::new(1, 1 << 20);
        // The first page read up to 9 but every entry was refused: the next starts after 9.
        assert_eq!(conn.start_paged(vec![], vec![], 2, 0, 9), Started::Paging);
        let from = conn.replayed_to();
        assert_eq!(from.after, 9);
        assert!(!conn.next_page(true, vec![frame(10)], Some(12), from));
        let from = conn.replayed_to();
        assert_eq!(from.after, 12);
        assert!(conn.next_page(true, vec![frame(13)], None, from));
        assert_eq!(ids(&conn), [0, 10, 13], "one missedevents, then the events");
    }

    #[test]
    fn a_replay_goes_live_only_when_its_held_frames_fit_the_queue() {
        // Frames of 9 bytes, a bound of 30: a page of two and two held frames do not fit.
        let conn = Conn::new(1, 30);
        assert_eq!(
            conn.start_paged(vec![], vec![frame(1)], 0, 0, 1),
            Started::Paging
        );
        conn.push(&frame(4), false);
        conn.push(&frame(5), false);
        let from = conn.replayed_to();
        assert!(!conn.next_page(false, vec![frame(2), frame(3)], None, from));
        assert_eq!(ids(&conn), [1, 2, 3]);
        // Drained: the next (last) page and what is held fit, and the stream goes live.
        let from = conn.replayed_to();
        assert!(conn.next_page(false, vec![], None, from));
        assert_eq!(ids(&conn), [4, 5]);
        assert!(!conn.is_ending());
    }

    #[test]
    fn a_reset_while_paging_ends_the_stream_with_a_retry() {
        let conn = Conn::new(1, 1 << 20);
        assert_eq!(
            conn.start_paged(vec![], vec![frame(8)], 7, 0, 8),
            Started::Paging
        );
        conn.reset(missed());
        assert!(conn.is_ending());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(conn.drain(&mut cx, 1024), Drained::Frames(_)));
        assert!(matches!(
            conn.drain(&mut cx, 1024),
            Drained::Retry(RESET_RETRY_MS)
        ));
        assert_eq!(conn.end_reason(), Some(EndReason::BrokerReset));
    }

    #[test]
    fn a_stream_not_started_drops_its_overflow_and_starts_paged() {
        // Frames of 7 bytes, a bound of 25: three fit.
        let conn = Conn::new(1, 25);
        for id in 1..=3 {
            assert_eq!(conn.push(&frame(id), true), Push::Queued);
        }
        assert_eq!(
            conn.push(&frame(4), true),
            Push::Skipped,
            "dropped, not slow"
        );
        assert_eq!(
            conn.push(&frame(5), false),
            Push::Queued,
            "held after the drop"
        );
        // A whole plan, yet the stream pages: what was dropped is read again after the drop.
        assert_eq!(
            conn.start(vec![], vec![frame(1), frame(2)], 0, 0),
            Started::Paging
        );
        assert_eq!(ids(&conn), [1, 2]);
        let from = conn.replayed_to();
        assert_eq!((from.after, from.overflows), (2, 1));
        assert!(from.dropped_at.is_some());
        assert!(conn.next_page(false, vec![frame(3), frame(4), frame(5)], None, from));
        assert_eq!(ids(&conn), [3, 4, 5]);
        conn.push(&frame(6), false);
        assert_eq!(ids(&conn), [6]);
        assert!(!conn.is_ending());
    }

    #[test]
    fn a_reset_forgets_what_a_stream_not_started_dropped() {
        let conn = Conn::new(1, 20);
        for id in 40..=43 {
            conn.push(&frame(id), false);
        }
        conn.reset(missed());
        conn.push(&frame(1), false);
        assert_eq!(
            conn.start(vec![missed()], vec![], 0, conn.resets()),
            Started::Live
        );
        assert_eq!(ids(&conn), [0, 1]);
    }

    #[test]
    fn a_resume_that_would_overflow_a_live_stream_turns_it_into_a_replay() {
        // Frames of 7 bytes, a bound of 25: three fit.
        let conn = Conn::new(1, 25);
        assert_eq!(conn.start(vec![], vec![], 0, 0), Started::Live);
        for id in 1..=3 {
            assert_eq!(conn.push_resumed(&frame(id), true), Push::Queued);
        }
        assert_eq!(conn.push_resumed(&frame(4), true), Push::Replaying);
        assert_eq!(conn.push_resumed(&frame(5), false), Push::Queued, "held");
        assert_eq!(ids(&conn), [1, 2, 3]);
        let from = conn.replayed_to();
        assert_eq!((from.after, from.overflows), (3, 1));
        assert!(conn.next_page(false, vec![frame(4), frame(5)], None, from));
        conn.push(&frame(6), false);
        assert_eq!(ids(&conn), [4, 5, 6]);
        assert!(!conn.is_ending(), "never slow");
        // Live, a plain push past the bound is a slow client again.
        let big = Frame::event(7, Bytes::from(vec![b'x'; 26]));
        assert_eq!(conn.push(&big, false), Push::BecameSlow);
    }

    #[test]
    fn a_late_frame_is_never_left_to_the_pages() {
        // Paging after 10: a late 8, never sent, goes to the queue at once, without its id.
        let conn = Conn::new(1, 1 << 20);
        assert_eq!(
            conn.start_paged(vec![], vec![frame(10)], 0, 0, 10),
            Started::Paging
        );
        assert_eq!(conn.push(&frame(8), false), Push::Queued);
        assert_eq!(ids(&conn), [10, 0]);
        assert_eq!(conn.push(&frame(8), false), Push::Skipped, "once");
        // A resume's late frame that does not fit is queued too, rather than left to pages
        // that start after the last id (here: 12).
        let conn = Conn::new(1, 16);
        assert_eq!(conn.start(vec![], vec![frame(10)], 0, 0), Started::Live);
        assert_eq!(conn.push(&frame(12), false), Push::Queued);
        assert_eq!(conn.push_resumed(&frame(11), true), Push::Queued);
        assert_eq!(ids(&conn), [10, 12, 0]);
    }

    #[test]
    fn a_full_queue_makes_the_client_slow() {
        let conn = Conn::new(1, 40);
        assert_eq!(conn.start(vec![], vec![], 0, 0), Started::Live);
        assert_eq!(conn.push(&frame(1), false), Push::Queued);
        assert_eq!(conn.push(&frame(2), false), Push::Queued);
        let big = Frame::event(3, Bytes::from(vec![b'x'; 30]));
        assert_eq!(conn.push(&big, false), Push::BecameSlow);
        assert_eq!(conn.push(&frame(4), false), Push::Skipped);
        let waker = futures_util::task::noop_waker();
        assert!(matches!(
            conn.drain(&mut Context::from_waker(&waker), 1024),
            Drained::Slow
        ));
    }
}
