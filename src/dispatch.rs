//! The messages between the brokers and the hub: what the dispatcher receives, and what the
//! hub asks of the Redis subscriber.
//!
//! This is the protocol only. The brokers send [`Dispatch`] messages (events in id order, and
//! around a Redis reconnection a hold, the refill and barriers); the hub's dispatcher task
//! receives them and fans events out. The hub sends [`SubCommand`]s, in the order its registry
//! changed, to whoever keeps the broker's subscriptions (the Redis subscriber; nobody in memory).
//!
//! The channel carries one cursor, the highest event id the dispatcher has delivered: a Redis
//! subscriber that reconnects refills from history after it. Beside it, the newest event the
//! dispatcher delivered, as it was: a Redis that came back from an older save may have given
//! that id to another event, which the counter alone cannot show.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::event::Frame;

/// Messages to the dispatcher task. (Without the `redis` feature only the in-memory broker
/// sends, and it never holds or resumes.)
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Dispatch {
    /// An event for a channel, already encoded.
    Live { channel: String, frame: Frame },
    /// The broker lost its subscriber connection: hold live events until [`Dispatch::Resume`].
    Hold,
    /// A Redis Cluster shard's channels are being subscribed again (their connection was lost,
    /// or their slot moved): hold the live events of these channels until
    /// [`Dispatch::Resume`], and go on delivering the others'. Ids are per channel there, so
    /// the other shards' events need not wait for this one's failover. Each replaces the set
    /// before it (the recovery sends every channel it has to refill, each attempt), so the set
    /// is never larger than the channels subscribed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    HoldChannels(Vec<Arc<str>>),
    /// The subscriber is back: deliver what was published meanwhile, then the held events.
    Resume(Resume),
    /// Answered once every message before it is handled, so that a stream that waits for its
    /// subscriptions reads history only after any reset before them reached its connection.
    Barrier { tx: Ready, at: Instant },
}

/// Answered with the instant from which the subscriptions before a barrier were known active
/// (the reply to the PING that followed them), which streams' history reads are compared with
/// (see `broker::redis::shared_reads`).
pub(crate) type Ready = oneshot::Sender<Instant>;

/// What the broker found in history after a subscriber reconnection.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// Events published while disconnected, ascending ids, with their channel.
    pub events: Vec<(Arc<str>, Frame)>,
    /// Channels whose history no longer reaches back to the last id seen.
    pub missed: Vec<Arc<str>>,
    /// The id counter went backwards: Redis lost its data.
    pub reset: bool,
    /// Redis Cluster (ids per channel): the channels whose sequence went back below the last
    /// id dispatched for them (writes lost in a failover). Their sequence was raised above it
    /// and their floor set to the raised value before this was sent; their events in `events`
    /// are everything retained. (Only the Redis Cluster broker sets it.)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub reset_channels: Vec<Arc<str>>,
    /// Redis Cluster: the resume of these channels alone (their shard recovered while another
    /// still fails over): only their held events are let go, the others stay held. `None`
    /// lets everything go and ends the hold.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub release: Option<Vec<Arc<str>>>,
}

/// Subscription changes for the broker, sent in the order the registry changed. (Nobody
/// receives them without the `redis` feature.)
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum SubCommand {
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
    /// Answered once every command sent before it is in effect on the broker; with `on`, once
    /// those of these channels are (Redis Cluster: the channels of a stream on a healthy shard
    /// need not wait for another shard's failover).
    Barrier {
        tx: Ready,
        on: Option<Vec<Arc<str>>>,
    },
}

/// The newest event this process knows: its id, channel and bytes (as `stored::parse_stored`
/// gives them, so an entry read back from history compares equal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Newest {
    pub id: u64,
    pub channel: String,
    pub bytes: Bytes,
}

/// Where a [`Newest`] is kept: written by the dispatcher for each event it delivers (a lock
/// nobody else holds but a reconnecting subscriber, and a copy of the channel name into a
/// reused buffer: no allocation once the name fits), and by the Redis publisher in a cell of
/// its own.
#[derive(Debug, Default)]
pub(crate) struct NewestCell(Mutex<Option<Newest>>);

impl NewestCell {
    /// Remembers the event if its id is the highest so far.
    pub fn offer(&self, id: u64, channel: &str, bytes: &Bytes) {
        let mut newest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *newest {
            Some(n) if n.id >= id => {}
            Some(n) => {
                n.id = id;
                n.channel.clear();
                n.channel.push_str(channel);
                n.bytes = bytes.clone();
            }
            None => {
                *newest = Some(Newest {
                    id,
                    channel: channel.to_owned(),
                    bytes: bytes.clone(),
                })
            }
        }
    }

    /// The newest event known, if any since the start or the last reset.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn get(&self) -> Option<Newest> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the event (ids start again after a data loss).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A new dispatch channel: the brokers' sending side and the dispatcher's receiving side.
pub(crate) fn channel() -> (DispatchSender, DispatchReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let delivered = Arc::new(AtomicU64::new(0));
    let newest = Arc::new(NewestCell::default());
    (
        DispatchSender {
            tx,
            delivered: delivered.clone(),
            newest: newest.clone(),
        },
        DispatchReceiver {
            rx,
            delivered,
            newest,
        },
    )
}

/// Where the dispatcher's messages go; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct DispatchSender {
    tx: mpsc::UnboundedSender<Dispatch>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by the Redis subscriber
    delivered: Arc<AtomicU64>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // read by the Redis subscriber
    newest: Arc<NewestCell>,
}

impl DispatchSender {
    /// Sends a message. The dispatcher lives as long as the instance, so a send only fails
    /// during teardown, when nobody listens anymore: it is then dropped.
    pub fn send(&self, msg: Dispatch) {
        let _ = self.tx.send(msg);
    }

    /// Waits until the dispatcher has handled every message sent before.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        let at = Instant::now();
        if self.tx.send(Dispatch::Barrier { tx, at }).is_ok() {
            let _ = rx.await;
        }
    }

    /// The highest event id delivered so far (0 after a reset).
    #[cfg(feature = "redis")]
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// The newest event the dispatcher delivered (see [`NewestCell`]). It does not move while
    /// live events are held, so a subscriber back from an outage reads what was delivered
    /// before it.
    #[cfg(feature = "redis")]
    pub fn newest(&self) -> &Arc<NewestCell> {
        &self.newest
    }
}

/// The dispatcher's side of the channel.
#[derive(Debug)]
pub(crate) struct DispatchReceiver {
    rx: mpsc::UnboundedReceiver<Dispatch>,
    delivered: Arc<AtomicU64>,
    newest: Arc<NewestCell>,
}

impl DispatchReceiver {
    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Dispatch> {
        self.rx.recv().await
    }

    /// Records that `frame` was delivered on `channel`.
    pub fn delivered(&self, channel: &str, frame: &Frame) {
        if frame.id != 0 {
            self.delivered.fetch_max(frame.id, Relaxed);
            self.newest.offer(frame.id, channel, &frame.bytes);
        }
    }

    /// Ids start again from a lower value (Redis lost its data).
    pub fn reset(&self) {
        self.delivered.store(0, Relaxed);
        self.newest.clear();
    }
}

/// Where the hub's subscription changes go.
pub(crate) type SubSender = mpsc::UnboundedSender<SubCommand>;

/// Sends a barrier behind every subscription change sent so far (of the channels `on` when
/// given) and waits for its answer: the instant from which they were known active.
/// (Unanswered only during teardown, when nothing is shared anyway: then now.)
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) async fn barrier(subscriptions: &SubSender, on: Option<&[Arc<str>]>) -> Instant {
    let (tx, rx) = oneshot::channel();
    let on = on.map(<[Arc<str>]>::to_vec);
    let _ = subscriptions.send(SubCommand::Barrier { tx, on });
    rx.await.unwrap_or_else(|_| Instant::now())
}
