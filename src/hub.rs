//! The local registry of connections by channel, and the dispatcher that fans events out.
//!
//! One dispatcher task per process receives every event for locally subscribed channels, in id
//! order (from the in-memory broker, or from the single Redis pub/sub connection), and offers the
//! event's pre-encoded frame to each listening connection's queue with a non-blocking push. The
//! hub also tells the broker when a channel gets its first local listener and loses its last
//! one, sends the heartbeats, and ends every stream on shutdown.
//!
//! After a Redis reconnection the refill and the live events held behind it are offered as a
//! resume: a live stream they would overflow is not made slow but replays from history
//! (`conn`'s rule), and the dispatcher hands it to the replayer it was started with, which has
//! a task read its pages (`replay::catch_up`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::time::Instant;

use crate::conn::{Conn, EndReason, Push};
use crate::dispatch::{Dispatch, DispatchReceiver, SubCommand, SubSender};
use crate::event::Frame;
use crate::logtext::{Escaped, escaped};
use crate::metrics::Metrics;

#[derive(Default)]
struct Registry {
    channels: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    conns: HashMap<u64, Arc<Conn>>,
    /// Entries in all the channels' lists: the streams' channel subscriptions together.
    subscriptions: usize,
    /// Streams: connections that are not a part of another's (see `Conn::part`).
    streams: usize,
}

/// Why a stream was not registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotRegistered {
    /// The server is shutting down.
    Closing,
    /// The process-wide bound on subscriptions would be passed.
    Full { max: usize },
}

/// The hub shared by the HTTP layer, the broker and the dispatcher.
pub(crate) struct Hub {
    registry: Mutex<Registry>,
    /// Where subscription changes go (the Redis subscriber); `None` in memory.
    subscriptions: Option<SubSender>,
    pub metrics: Arc<Metrics>,
    closing: AtomicBool,
    next_conn_id: AtomicU64,
    verbose: bool,
    /// A connection's queue limit: an event larger than it could only make every listener slow.
    max_queue_bytes: usize,
    /// The bound on all streams' channel subscriptions together.
    max_subscriptions: usize,
    /// When a reset (Redis lost its data) last reached the connections.
    last_reset: Mutex<Option<Instant>>,
}

impl Hub {
    pub fn new(
        metrics: Arc<Metrics>,
        subscriptions: Option<SubSender>,
        verbose: bool,
        max_queue_bytes: usize,
        max_subscriptions: usize,
    ) -> Self {
        Hub {
            registry: Mutex::default(),
            subscriptions,
            metrics,
            closing: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            verbose,
            max_queue_bytes,
            max_subscriptions,
            last_reset: Mutex::new(None),
        }
    }

    /// `ready`, or the instant the last reset reached the connections if that came later: a
    /// history read shared between streams must postdate both (see `broker::redis::shared_reads`).
    pub fn after_last_reset(&self, ready: Instant) -> Instant {
        let last = *self.last_reset.lock().unwrap_or_else(|e| e.into_inner());
        last.map_or(ready, |at| ready.max(at))
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Relaxed)
    }

    /// Open streams.
    pub fn connections(&self) -> usize {
        self.lock().streams
    }

    /// Channels with at least one local listener.
    pub fn channel_count(&self) -> usize {
        self.lock().channels.len()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// Adds a connection to its channels, unless shutting down or past the subscription bound.
    pub fn register(&self, conn: &Arc<Conn>, channels: &[Arc<str>]) -> Result<(), NotRegistered> {
        let mut reg = self.lock();
        self.admits(&reg, channels.len())?;
        self.insert(&mut reg, conn, channels);
        Ok(())
    }

    /// Adds the connections of one stream at once, each to its own channels (a stream whose
    /// ids are per channel: one connection per channel), or none of them: a stream refused
    /// halfway would otherwise count as one that opened and ended.
    pub fn register_all(&self, conns: &[Arc<Conn>]) -> Result<(), NotRegistered> {
        let mut reg = self.lock();
        self.admits(&reg, conns.iter().map(|c| c.channels.len()).sum())?;
        for conn in conns {
            self.insert(&mut reg, conn, &conn.channels);
        }
        Ok(())
    }

    /// Whether `adding` more channel subscriptions may be registered now.
    fn admits(&self, reg: &Registry, adding: usize) -> Result<(), NotRegistered> {
        if self.is_closing() {
            return Err(NotRegistered::Closing);
        }
        if reg.subscriptions + adding > self.max_subscriptions {
            return Err(NotRegistered::Full {
                max: self.max_subscriptions,
            });
        }
        Ok(())
    }

    fn insert(&self, reg: &mut Registry, conn: &Arc<Conn>, channels: &[Arc<str>]) {
        reg.subscriptions += channels.len();
        reg.conns.insert(conn.id, conn.clone());
        for channel in channels {
            match reg.channels.entry(channel.clone()) {
                Entry::Occupied(mut e) => e.get_mut().push(conn.clone()),
                Entry::Vacant(e) => {
                    e.insert(vec![conn.clone()]);
                    self.send_subscription(SubCommand::Subscribe(channel.clone()));
                }
            }
        }
        self.metrics.subscriptions.set(reg.channels.len() as u64);
        self.metrics
            .stream_subscriptions
            .set(reg.subscriptions as u64);
        if !conn.is_part() {
            reg.streams += 1;
            self.metrics.connected.inc();
        }
    }

    /// Removes a connection; the last listener of a channel unsubscribes it.
    pub fn unregister(&self, conn_id: u64, channels: &[Arc<str>]) {
        let mut reg = self.lock();
        let Some(conn) = reg.conns.remove(&conn_id) else {
            return;
        };
        reg.subscriptions = reg.subscriptions.saturating_sub(channels.len());
        for channel in channels {
            if let Entry::Occupied(mut e) = reg.channels.entry(channel.clone()) {
                let list = e.get_mut();
                if let Some(pos) = list.iter().position(|c| c.id == conn_id) {
                    list.swap_remove(pos);
                }
                if list.is_empty() {
                    e.remove();
                    self.send_subscription(SubCommand::Unsubscribe(channel.clone()));
                }
            }
        }
        self.metrics.subscriptions.set(reg.channels.len() as u64);
        self.metrics
            .stream_subscriptions
            .set(reg.subscriptions as u64);
        if !conn.is_part() {
            reg.streams = reg.streams.saturating_sub(1);
            self.metrics.connected.dec();
            self.metrics.served.inc();
        }
    }

    fn send_subscription(&self, cmd: SubCommand) {
        if let Some(tx) = &self.subscriptions {
            // The subscriber task lives as long as the broker; a send can only fail during
            // process teardown, when nothing listens anymore.
            let _ = tx.send(cmd);
        }
    }

    /// Offers one frame to every listener of `channel`; with `replaying` (a resume's frames),
    /// the live streams it would overflow are added there to replay from history instead.
    fn fan_out(
        &self,
        channel: &str,
        frame: &Frame,
        refill: bool,
        replaying: Option<&mut Vec<Arc<Conn>>>,
    ) {
        let reg = self.lock();
        let Some(conns) = reg.channels.get(channel) else {
            return;
        };
        let mut slow = 0;
        let mut replaying = replaying;
        for conn in conns {
            let push = match &mut replaying {
                Some(_) => conn.push_resumed(frame, refill),
                None => conn.push(frame, refill),
            };
            match push {
                Push::BecameSlow => {
                    slow += 1;
                    tracing::info!(conn = conn.id, "slow client disconnected");
                }
                Push::Replaying => {
                    tracing::debug!(conn = conn.id, "resume larger than the queue: paging it");
                    if let Some(list) = &mut replaying {
                        list.push(conn.clone());
                    }
                }
                Push::Queued | Push::Skipped => {}
            }
        }
        drop(reg);
        if slow > 0 {
            self.metrics.slow_disconnects.inc_by(slow);
        }
    }

    /// Offers an event to the channel's listeners; `refill` marks events read from history
    /// after a subscriber reconnection (see [`Conn::push`]), `replaying` a resume's frames (see
    /// [`Hub::fan_out`]).
    fn deliver(
        &self,
        rx: &DispatchReceiver,
        channel: &str,
        frame: Frame,
        refill: bool,
        replaying: Option<&mut Vec<Arc<Conn>>>,
    ) {
        rx.delivered(channel, &frame);
        if frame.bytes.len() > self.max_queue_bytes {
            // Written by another publisher (ours refuse such events): no queue can hold it, so
            // offering it would disconnect every listener. Skipped, counted, and logged.
            self.metrics.oversized.inc();
            tracing::warn!(
                channel = %escaped(channel),
                id = frame.id,
                bytes = frame.bytes.len(),
                max = self.max_queue_bytes,
                "skipping an event larger than a subscriber's queue"
            );
            return;
        }
        self.metrics.received.inc();
        if self.verbose {
            tracing::info!(channel = %escaped(channel), "Sending: {}", Escaped(&frame.bytes));
        }
        self.fan_out(channel, &frame, refill, replaying);
    }

    /// Sends `missedevents` to every listener of the given channels (once per connection), or
    /// to everybody after a reset.
    fn signal_missed(&self, channels: &[Arc<str>], reset: bool) {
        let reg = self.lock();
        let frame = Frame::missed_events();
        if reset {
            // Written before the connections count the reset: a stream that sees the new count
            // (`Conn::resets`) then sees this instant too.
            *self.last_reset.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            for conn in reg.conns.values() {
                conn.reset(frame.clone());
            }
            return;
        }
        let mut told = std::collections::HashSet::new();
        for channel in channels {
            for conn in reg.channels.get(channel).into_iter().flatten() {
                if told.insert(conn.id) {
                    conn.push(&frame, false);
                }
            }
        }
    }

    /// Where ids are per channel: the sequences of `channels` went backwards, so their
    /// listeners' connections (one channel each) are reset as after a data loss (see
    /// [`Conn::reset`]).
    fn reset_channels(&self, channels: &[Arc<str>]) {
        let reg = self.lock();
        *self.last_reset.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let frame = Frame::missed_events();
        for channel in channels {
            for conn in reg.channels.get(channel).into_iter().flatten() {
                conn.reset(frame.clone());
            }
        }
    }

    /// The dispatcher task: runs until every sender is gone or the hub is dropped. It holds the
    /// hub weakly, so that dropping the last [`crate::Redisse`] stops every task. `replay` is
    /// given each live stream that a resume turned into a replay from history, to read its
    /// pages (it must not block: it spawns a task).
    pub async fn dispatch(hub: Weak<Self>, mut rx: DispatchReceiver, replay: impl Fn(Arc<Conn>)) {
        let mut held: Option<Held> = None;
        while let Some(msg) = rx.recv().await {
            let Some(this) = hub.upgrade() else {
                return;
            };
            for conn in this.handle(&rx, msg, &mut held) {
                replay(conn);
            }
        }
    }

    /// Handles one message; returns the streams that now replay from history.
    fn handle(
        &self,
        rx: &DispatchReceiver,
        msg: Dispatch,
        held: &mut Option<Held>,
    ) -> Vec<Arc<Conn>> {
        let mut replaying = Vec::new();
        match msg {
            Dispatch::Live { channel, frame } => match held {
                Some(held) if held.holds(&channel) => held.push(channel, frame),
                _ => self.deliver(rx, &channel, frame, false, None),
            },
            Dispatch::Hold => {
                held.get_or_insert_with(Held::default).all = true;
            }
            Dispatch::HoldChannels(channels) => {
                held.get_or_insert_with(Held::default).channels = channels.into_iter().collect();
            }
            Dispatch::Barrier { tx, at } => {
                let _ = tx.send(at);
            }
            Dispatch::Resume(mut resume) => {
                let held = match (resume.release.take(), held.as_mut()) {
                    (Some(channels), Some(h)) => h.release(&channels),
                    (Some(_), None) => Held::default(),
                    (None, _) => held.take().unwrap_or_default(),
                };
                // Channels whose held events were dropped: told like a history that no longer
                // reaches back (the events are in history; a resume brings them).
                resume
                    .missed
                    .extend(held.dropped.into_iter().map(Arc::from));
                if resume.reset {
                    rx.reset();
                }
                if resume.reset || !resume.missed.is_empty() {
                    self.signal_missed(&resume.missed, resume.reset);
                }
                if !resume.reset_channels.is_empty() {
                    self.reset_channels(&resume.reset_channels);
                }
                for (channel, frame) in resume.events {
                    self.deliver(rx, &channel, frame, true, Some(&mut replaying));
                }
                for (channel, frame) in held.frames {
                    self.deliver(rx, &channel, frame, false, Some(&mut replaying));
                }
            }
        }
        replaying
    }

    /// Asks every stream for a heartbeat, and ends those whose grant has expired with a
    /// jittered `retry:` (the client comes back with a fresh credential and its position).
    pub fn heartbeat_all(&self, retry: impl Fn(u64) -> u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for conn in self.lock().conns.values() {
            if conn.expired(now) {
                conn.end_with_retry(retry(conn.id), EndReason::GrantExpired);
            } else {
                conn.heartbeat();
            }
        }
    }

    /// Stops new registrations and ends every stream with a jittered `retry:`.
    pub fn shutdown(&self, retry: impl Fn(u64) -> u64) {
        let reg = self.lock();
        self.closing.store(true, Relaxed);
        for conn in reg.conns.values() {
            conn.end_with_retry(retry(conn.id), EndReason::Shutdown);
        }
    }
}

/// The most bytes of live events held while a Redis subscriber reconnects. On one Redis none
/// arrive meanwhile but those already on their way; on a cluster only the recovering shard's
/// channels are held, from their new subscription until their refill is read.
const MAX_HELD_BYTES: usize = 64 << 20;

/// Live events held until the resume (see [`Dispatch::Hold`]), bounded by [`MAX_HELD_BYTES`]:
/// past it an event is dropped and its channel remembered, so that its listeners are told
/// `missedevents` at the resume (bounded by the channels with listeners). Every channel's
/// events are held (`all`, one Redis) or those of `channels` alone (the shards of a Redis
/// Cluster being recovered; bounded by the subscribed channels).
#[derive(Default)]
struct Held {
    all: bool,
    channels: HashSet<Arc<str>>,
    frames: Vec<(String, Frame)>,
    bytes: usize,
    dropped: std::collections::BTreeSet<String>,
}

impl Held {
    fn holds(&self, channel: &str) -> bool {
        self.all || self.channels.contains(channel)
    }

    /// Lets `channels` go: no longer held, and their held events (and drops) taken out, in
    /// order, to deliver after their refill; the other channels' stay.
    fn release(&mut self, channels: &[Arc<str>]) -> Held {
        let set: HashSet<&str> = channels.iter().map(|c| &**c).collect();
        self.channels.retain(|c| !set.contains(&**c));
        let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.frames)
            .into_iter()
            .partition(|(c, _)| set.contains(c.as_str()));
        self.frames = kept;
        let bytes: usize = out.iter().map(|(_, f)| f.bytes.len()).sum();
        self.bytes -= bytes;
        let dropped = self
            .dropped
            .iter()
            .filter(|c| set.contains(c.as_str()))
            .cloned()
            .collect();
        self.dropped.retain(|c| !set.contains(c.as_str()));
        Held {
            frames: out,
            bytes,
            dropped,
            ..Held::default()
        }
    }

    fn push(&mut self, channel: String, frame: Frame) {
        if self.bytes + frame.bytes.len() > MAX_HELD_BYTES {
            if !self.dropped.contains(&channel) {
                tracing::warn!(
                    channel = %escaped(&channel),
                    max_bytes = MAX_HELD_BYTES,
                    "too many live events held during a Redis recovery: dropping them, their \
                     streams get missedevents"
                );
                self.dropped.insert(channel);
            }
            return;
        }
        self.bytes += frame.bytes.len();
        self.frames.push((channel, frame));
    }
}

/// A connection's place in the hub; dropping it unregisters the connection.
pub(crate) struct Registration {
    pub hub: Arc<Hub>,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conn.leave();
        self.hub.unregister(self.conn.id, &self.conn.channels);
        if self.hub.verbose {
            tracing::info!(conn = self.conn.id, "Unsubscribing");
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dispatch::{Resume, channel};

    #[test]
    fn held_events_are_bounded_and_what_was_dropped_is_told() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics, None, false, 2 << 20, 100);
        let conn = Conn::new(1, 200 << 20);
        hub.register(&conn, &[Arc::from("a")]).unwrap();
        conn.start(vec![], vec![], 0, 0);
        let (_tx, rx) = channel();
        let mut held = None;
        hub.handle(&rx, Dispatch::Hold, &mut held);
        // One MiB frames (sharing one buffer): 64 fit, the next ones are dropped.
        let big = Bytes::from(vec![b'x'; 1 << 20]);
        for id in 1..=70 {
            let frame = Frame::live(id, big.clone());
            hub.handle(
                &rx,
                Dispatch::Live {
                    channel: "a".into(),
                    frame,
                },
                &mut held,
            );
        }
        let h = held.as_ref().unwrap();
        assert_eq!(h.frames.len(), 64);
        assert!(h.dropped.contains("a"));
        hub.handle(&rx, Dispatch::Resume(Resume::default()), &mut held);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut kinds = Vec::new();
        while let crate::conn::Drained::Frames(_) = conn.drain_frames(&mut cx, 1, &mut kinds) {}
        assert_eq!(kinds.len(), 65, "missedevents, then the 64 held");
        assert_eq!(kinds[0].kind, crate::event::FrameKind::MissedEvents);
        assert!(held.is_none());
    }

    /// Holding a cluster shard's channels holds their events alone: another channel's event
    /// is delivered at once, the held one after the refill the resume brings.
    #[test]
    fn holding_some_channels_lets_the_others_through() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(metrics, None, false, 2 << 20, 100);
        let conn = Conn::new(1, 1 << 20);
        hub.register(&conn, &[Arc::from("a"), Arc::from("b")])
            .unwrap();
        conn.start(vec![], vec![], 0, 0);
        let (_tx, rx) = channel();
        let mut held = None;
        let live = |channel: &str, id: u64| Dispatch::Live {
            channel: channel.into(),
            frame: Frame::live(id, Bytes::from(format!("data: {channel}{id}\n\n"))),
        };
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut drained = |conn: &Conn| {
            let mut frames = Vec::new();
            while let crate::conn::Drained::Frames(_) = conn.drain_frames(&mut cx, 1, &mut frames) {
            }
            frames
                .iter()
                .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
                .collect::<Vec<_>>()
        };
        hub.handle(&rx, Dispatch::HoldChannels(vec![Arc::from("a")]), &mut held);
        hub.handle(&rx, live("a", 3), &mut held);
        hub.handle(&rx, live("b", 7), &mut held);
        assert_eq!(drained(&conn), ["data: b7\n\n"], "b is not held");
        let refill = Resume {
            events: vec![(Arc::from("a"), Frame::live(2, Bytes::from("data: a2\n\n")))],
            ..Resume::default()
        };
        hub.handle(&rx, Dispatch::Resume(refill), &mut held);
        assert_eq!(
            drained(&conn),
            ["data: a2\n\n", "data: a3\n\n"],
            "a's refill, then its held event"
        );
        assert!(held.is_none());
        hub.handle(&rx, live("a", 4), &mut held);
        assert_eq!(drained(&conn), ["data: a4\n\n"], "no longer held");
        // Each hold replaces the one before: a channel left out is no longer held.
        hub.handle(&rx, Dispatch::HoldChannels(vec![Arc::from("a")]), &mut held);
        hub.handle(&rx, Dispatch::HoldChannels(vec![Arc::from("b")]), &mut held);
        hub.handle(&rx, live("a", 5), &mut held);
        hub.handle(&rx, live("b", 8), &mut held);
        assert_eq!(drained(&conn), ["data: a5\n\n"], "b held, a not");
        // A resume of some channels lets theirs go; the others stay held until the last one.
        hub.handle(
            &rx,
            Dispatch::HoldChannels(vec![Arc::from("a"), Arc::from("b")]),
            &mut held,
        );
        hub.handle(&rx, live("a", 6), &mut held);
        let a_only = Resume {
            release: Some(vec![Arc::from("a")]),
            ..Resume::default()
        };
        hub.handle(&rx, Dispatch::Resume(a_only), &mut held);
        assert_eq!(drained(&conn), ["data: a6\n\n"], "a let go, b8 still held");
        // (One stream here, so ids of one space: on a cluster each channel has its own.)
        hub.handle(&rx, live("a", 10), &mut held);
        hub.handle(&rx, live("b", 11), &mut held);
        assert_eq!(drained(&conn), ["data: a10\n\n"]);
        hub.handle(&rx, Dispatch::Resume(Resume::default()), &mut held);
        assert_eq!(
            drained(&conn),
            ["data: b8\n\n", "data: b11\n\n"],
            "the last resume lets the rest go, in order"
        );
        assert!(held.is_none());
    }
}
