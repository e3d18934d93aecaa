//! The local registry of connections by channel, and the dispatcher that fans events out.
//!
//! One dispatcher task per process receives every event for locally subscribed channels, in id
//! order (from the in-memory broker, or from the single Redis pub/sub connection), and offers the
//! event's pre-encoded frame to each listening connection's queue with a non-blocking push. The
//! hub also tells the broker when a channel gets its first local listener and loses its last
//! one, sends the heartbeats, and ends every stream on shutdown.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::mpsc;

use crate::conn::{Conn, Frame, FrameKind, Push};
use crate::event::missed_events_frame;
use crate::metrics::Metrics;

/// Messages to the dispatcher task.
#[derive(Debug)]
pub(crate) enum Dispatch {
    /// An event for a channel, already encoded.
    Live { channel: String, frame: Frame },
    /// The broker lost its subscriber connection: hold live events until [`Dispatch::Resume`].
    Hold,
    /// The subscriber is back: deliver what was published meanwhile, then the held events.
    Resume(Resume),
    /// Answered once every message before it is handled, so that a stream that waits for its
    /// subscriptions reads history only after any reset before them reached its connection.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// What the broker found in history after a subscriber reconnection.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// Events published while disconnected, ascending ids, with their channel.
    pub events: Vec<(Arc<str>, Frame)>,
    /// Channels whose history no longer reaches back to the last id seen.
    pub missed: Vec<Arc<str>>,
    /// The id counter went backwards: Redis lost its data.
    pub reset: bool,
}

/// Subscription changes for the broker, sent in the order the registry changed.
#[derive(Debug)]
pub(crate) enum SubCommand {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
    /// Answered once every command sent before it is in effect on the broker.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

#[derive(Default)]
struct Registry {
    channels: HashMap<Arc<str>, Vec<Arc<Conn>>>,
    conns: HashMap<u64, Arc<Conn>>,
}

/// The hub shared by the HTTP layer, the broker and the dispatcher.
pub(crate) struct Hub {
    registry: Mutex<Registry>,
    /// Where subscription changes go (the Redis subscriber); `None` in memory.
    subscriptions: Option<mpsc::UnboundedSender<SubCommand>>,
    pub metrics: Arc<Metrics>,
    /// Highest event id dispatched, where a reconnected subscriber resumes.
    pub last_seen: Arc<AtomicU64>,
    /// Highest id counter read by a stream's history snapshot: streams start from it even when
    /// no event was dispatched here, so a reconnected subscriber that finds a lower counter
    /// knows that Redis lost its data (see [`Resume::reset`]).
    pub counter_seen: Arc<AtomicU64>,
    closing: AtomicBool,
    next_conn_id: AtomicU64,
    verbose: bool,
}

impl Hub {
    pub fn new(
        metrics: Arc<Metrics>,
        subscriptions: Option<mpsc::UnboundedSender<SubCommand>>,
        verbose: bool,
    ) -> Self {
        Hub {
            registry: Mutex::default(),
            subscriptions,
            metrics,
            last_seen: Arc::new(AtomicU64::new(0)),
            counter_seen: Arc::new(AtomicU64::new(0)),
            closing: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            verbose,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Relaxed)
    }

    /// Open streams.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Channels with at least one local listener.
    pub fn channel_count(&self) -> usize {
        self.lock().channels.len()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// Adds a connection to its channels. Returns `false` when shutting down.
    pub fn register(&self, conn: &Arc<Conn>, channels: &[Arc<str>]) -> bool {
        let mut reg = self.lock();
        if self.is_closing() {
            return false;
        }
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
        self.metrics
            .subscriptions
            .store(reg.channels.len() as u64, Relaxed);
        self.metrics.connected.fetch_add(1, Relaxed);
        true
    }

    /// Removes a connection; the last listener of a channel unsubscribes it.
    pub fn unregister(&self, conn_id: u64, channels: &[Arc<str>]) {
        let mut reg = self.lock();
        if reg.conns.remove(&conn_id).is_none() {
            return;
        }
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
        self.metrics
            .subscriptions
            .store(reg.channels.len() as u64, Relaxed);
        self.metrics.connected.fetch_sub(1, Relaxed);
        self.metrics.served.fetch_add(1, Relaxed);
    }

    fn send_subscription(&self, cmd: SubCommand) {
        if let Some(tx) = &self.subscriptions {
            // The subscriber task lives as long as the broker; a send can only fail during
            // process teardown, when nothing listens anymore.
            let _ = tx.send(cmd);
        }
    }

    /// Offers one frame to every listener of `channel`.
    fn fan_out(&self, channel: &str, frame: &Frame, refill: bool) {
        let reg = self.lock();
        let Some(conns) = reg.channels.get(channel) else {
            return;
        };
        let mut slow = 0;
        for conn in conns {
            if conn.push(frame, refill) == Push::BecameSlow {
                slow += 1;
                tracing::info!(conn = conn.id, "slow client disconnected");
            }
        }
        drop(reg);
        if slow > 0 {
            self.metrics.slow_disconnects.fetch_add(slow, Relaxed);
        }
    }

    /// Offers an event to the channel's listeners; `refill` marks events read from history
    /// after a subscriber reconnection (see [`Conn::push`]).
    fn deliver(&self, channel: &str, frame: Frame, refill: bool) {
        if frame.id != 0 {
            self.last_seen.fetch_max(frame.id, Relaxed);
        }
        self.metrics.received.fetch_add(1, Relaxed);
        if self.verbose {
            tracing::info!(
                channel,
                "Sending:\n{}",
                String::from_utf8_lossy(&frame.bytes)
            );
        }
        self.fan_out(channel, &frame, refill);
    }

    /// Sends `missedevents` to every listener of the given channels (once per connection), or
    /// to everybody after a reset.
    fn signal_missed(&self, channels: &[Arc<str>], reset: bool) {
        let reg = self.lock();
        let frame = Frame {
            id: 0,
            bytes: missed_events_frame(),
            kind: FrameKind::MissedEvents,
        };
        if reset {
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

    /// The dispatcher task: runs until every sender is gone or the hub is dropped. It holds the
    /// hub weakly, so that dropping the last [`crate::Redisse`] stops every task.
    pub async fn dispatch(hub: Weak<Self>, mut rx: mpsc::UnboundedReceiver<Dispatch>) {
        let mut held: Option<Vec<(String, Frame)>> = None;
        while let Some(msg) = rx.recv().await {
            let Some(this) = hub.upgrade() else {
                return;
            };
            this.handle(msg, &mut held);
        }
    }

    fn handle(&self, msg: Dispatch, held: &mut Option<Vec<(String, Frame)>>) {
        match msg {
            Dispatch::Live { channel, frame } => match held {
                Some(buffer) => buffer.push((channel, frame)),
                None => self.deliver(&channel, frame, false),
            },
            Dispatch::Hold => {
                held.get_or_insert_with(Vec::new);
            }
            Dispatch::Barrier(tx) => {
                let _ = tx.send(());
            }
            Dispatch::Resume(resume) => {
                if resume.reset {
                    self.last_seen.store(0, Relaxed);
                    self.counter_seen.store(0, Relaxed);
                }
                if resume.reset || !resume.missed.is_empty() {
                    self.signal_missed(&resume.missed, resume.reset);
                }
                for (channel, frame) in resume.events {
                    self.deliver(&channel, frame, true);
                }
                for (channel, frame) in held.take().unwrap_or_default() {
                    self.deliver(&channel, frame, false);
                }
            }
        }
    }

    /// Asks every stream for a heartbeat.
    pub fn heartbeat_all(&self) {
        for conn in self.lock().conns.values() {
            conn.heartbeat();
        }
    }

    /// Stops new registrations and ends every stream with a jittered `retry:`.
    pub fn shutdown(&self, retry: impl Fn(u64) -> u64) {
        let reg = self.lock();
        self.closing.store(true, Relaxed);
        for conn in reg.conns.values() {
            conn.end_with_retry(retry(conn.id));
        }
    }
}

/// A connection's place in the hub; dropping it unregisters the connection.
pub(crate) struct Registration {
    pub hub: Arc<Hub>,
    pub conn: Arc<Conn>,
    pub channels: Box<[Arc<str>]>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.conn.id, &self.channels);
        if self.hub.verbose {
            tracing::info!(conn = self.conn.id, "Unsubscribing");
        }
    }
}
