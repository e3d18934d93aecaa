//! Sharded pub/sub on a Redis Cluster: one connection per primary that serves subscribed channels,
//! supervised by one task.
//!
//! The task learns the slot map (`CLUSTER SLOTS`, asked of any seed or known node), and when the
//! hub reports a channel's first local listener it `SSUBSCRIBE`s the channel's shard channel (its
//! history key, see `layout`) on the connection to its slot's primary, made when first needed;
//! `SUNSUBSCRIBE` when the last listener leaves. Barriers are answered once a `PING` on every
//! connection came back after the commands before them, through the dispatcher as on one Redis;
//! while the task recovers, a stream's barrier (which names the stream's channels) is answered
//! after an attempt in which each of its channels was subscribed on a connection that answered the
//! attempt's PING and is not held, so that a stream opened on a healthy shard does not wait for
//! another shard's failover. The PINGs go to every connection at once; one that was sent nothing to
//! confirm and serves no channel a barrier waits for is waited for [`ASIDE_WAIT`] only, so that a
//! node that stopped answering, not yet noticed by the watchdog, stalls nobody else; outside a
//! recovery, one that a barrier waits for and is slower than that is waited for beside the loop's
//! other work (a [`Deferred`] confirmation: that barrier is answered when the node answers, or
//! left to the recovery when it does not), and a first connection to a node is waited for
//! [`CONNECT_WAIT`] only, its channels then placed by a recovery attempt. Each message
//! goes to the dispatcher as a live event of the user's channel, its frame without the `id:` line
//! (ids are per channel: streams write their own compound ids), and the channel's last dispatched
//! sequence is remembered, for active channels only.
//!
//! A connection is lost when it closes, a command on it fails, a `PING` of the watchdog goes
//! unanswered (the watchdog's PINGs go to every connection at once and are awaited beside the
//! loop's other work: the hub's subscriptions are not held behind a node that stopped answering),
//! the node answers an error (`MOVED`: the slot left), or pushes an event of a channel with a lower
//! sequence than its previous one (the node lost its data with the connection up: a `FLUSHALL`, the
//! keys deleted; that event is not dispatched); or when a PING that a recovery or a new
//! subscription passed over finds its oldest request unanswered for the request timeout (the
//! watchdog does not run during a recovery). Then its shard is counted recovering
//! (`redisse_broker_shards_recovering`; the broker is marked down only while no primary answers,
//! see `primary_answered`) and until it succeeds (with backoff, while the cluster fails over): the
//! slot map is read again, each channel of the lost connection (and any whose slot moved) has its
//! live events held, is subscribed on its slot's primary, and has its history read after the last
//! sequence dispatched for it. The other shards' channels are not held: their events go on arriving
//! while one shard fails over (ids are per channel, so nothing orders them after the recovering
//! shard's). A node that ends a subscription still wanted (a `sunsubscribe` push: Redis sends one
//! for each shard channel of a slot that moved) loses that channel alone: it is placed again the
//! same way, held, subscribed where its slot went and refilled, while the connection goes on
//! serving the node's other channels and the broker stays up (unless placing it fails). An attempt
//! that places some channels and fails for others (a shard still failing over) refills and lets go
//! those it placed, so that a channel moved or reconnected meanwhile on a healthy shard does not
//! wait for the failed one; the others wait for the next attempt. Nor do they wait behind a node
//! that stopped answering (its host gone: connections to it hang until their timeout): an attempt
//! asks the slot map on a connection that is up first, and starts every connection it has to make
//! at once and waits [`CONNECT_WAIT`] for them, leaving a slower one to go on in the background for
//! a later attempt (and the pause between attempts is cut short when a stream waits); a first
//! connection to a node not failing that is still being made (a slot's new owner slow to accept)
//! makes the attempt fail without an outage: the broker stays up and nothing is counted, unless the
//! connection then fails. The resume carries those events, the channels whose history no longer
//! reaches back that far (`missed`, the rule of `history`), and the channels whose sequence is now
//! below it (`reset_channels`: the failover lost writes; their sequence is raised past the known
//! one first, and their floor with it, so new ids pass the lost ones).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ClusterStore;
use super::layout;
use super::node::{Access, Answer, LostSender, NodeConn, PushHandler, Reply};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::dispatch::{Dispatch, DispatchSender, Ready, Resume, SubCommand};
use crate::error::BrokerError;
use crate::event::{Frame, MAX_EVENT_ID};
use crate::history::channel_may_have_lost;
use crate::logtext::Escaped;
use crate::metrics::Metrics;
use crate::stored::parse_stored;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// As on one Redis: back within a quarter second of the cluster answering again.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Failed recovery attempts between two warnings.
const WARN_EVERY: u64 = 8;
/// Commands taken from the hub's queue at once.
const MAX_BATCH: usize = 4096;
/// Shard channels per `SSUBSCRIBE` (all of one slot: Redis refuses a command across slots).
const SUBSCRIBE_CHUNK: usize = 256;
/// How long a connection attempt to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a recovery attempt waits for a connection it started: one still being made then
/// (a node whose host stopped answering, which accepts nothing or answers nothing until the
/// timeout) goes on in the background, picked up by a later attempt, so that the channels of
/// the other shards are not held behind it.
const CONNECT_WAIT: Duration = Duration::from_millis(100);
/// How long a recovery waits for an answer on a connection up that it sent nothing to be
/// confirmed (the slot map asked, the PING after an attempt): one slower than that (a node
/// that stopped answering, not yet noticed by the watchdog) is passed over, not dropped.
const ASIDE_WAIT: Duration = Duration::from_millis(250);
/// Channels whose histories a refill reads at once (on the cluster connection, which
/// pipelines them): one at a time, the refill of a node's 1,000 channels took 0.6 s, 64 at a
/// time 0.09 s (BENCHMARKS.md, run 16).
const REFILL_AT_ONCE: usize = 64;

/// What a connection reports of a slot that moved away from its node.
#[derive(Debug)]
enum Moved {
    /// The node ended the subscription of this channel (a `sunsubscribe` push).
    Channel(Arc<str>),
    /// The node answered `MOVED` to a subscription of a channel of this slot (the slot map
    /// was stale): none of the slot's channels sent there is subscribed.
    Slot(u16),
}

/// The watchdog's PINGs in flight (see [`Watched`]).
type Watch = Pin<Box<dyn Future<Output = Watched> + Send>>;

/// What a round of the watchdog found.
#[derive(Default)]
struct Watched {
    /// The connections whose PING failed: the node, the connection's id, why.
    failed: Vec<(String, u64, String)>,
    /// With no connection to watch, whether some primary answered a PING of its own
    /// connection (`Err` saying why not).
    probed: Option<Result<(), String>>,
}

/// Where a connection reports a slot that moved away: its id and what moved.
type MovedSender = mpsc::UnboundedSender<(u64, Moved)>;

/// Where a connection's push handler reports to the task.
struct Reports {
    lost: LostSender,
    moved: MovedSender,
}

/// What the task shares with the connections' push handlers.
#[derive(Debug, Default)]
struct Seen {
    /// The active channels and the last sequence dispatched for each, raised by the handlers:
    /// `None` while nothing is known (not yet read once its subscription was active), which is
    /// not a sequence of 0 (a channel nobody published on yet, whose first events a refill
    /// must read).
    last: HashMap<Arc<str>, Option<u64>>,
    /// Channels whose `SUNSUBSCRIBE` this task sent and whose confirmation has not arrived: the
    /// connection (its id) it was sent on, and how many: a channel ended and wanted again in
    /// one batch is active when its confirmation comes, which must not be taken for Redis ending
    /// it. Only a push on that connection confirms; the entries of a lost connection are
    /// dropped with it (their confirmations never come, and a stale one would make Redis's own
    /// `sunsubscribe` of a moved slot pass for ours). Also emptied once every connection
    /// answered a PING after them.
    ending: HashMap<Arc<str>, (u64, u32)>,
    /// For each active channel, the connection (its id) that last pushed one of its events,
    /// and that event's sequence. Pushes of one channel on one connection come in publishing
    /// order, so a lower sequence after a higher one means the channel's sequence went back
    /// with the connection up (the node's data flushed, its keys deleted): a loss, which no
    /// lost connection will tell (see `forward_push`).
    pushed: HashMap<Arc<str>, (u64, u64)>,
}

type LastSeen = Arc<Mutex<Seen>>;

/// A barrier not answered yet, and the channels it waits for (all when `None`).
struct Waiting {
    tx: Ready,
    on: Option<Vec<Arc<str>>>,
}

/// A PING that a barrier waits for and that its node did not answer within [`ASIDE_WAIT`]:
/// waited for beside the loop, until the connection's request timeout.
struct Slow {
    addr: String,
    /// The connection's id.
    id: u64,
    answer: Answer,
    until: Instant,
    timeout: Duration,
}

/// The rest of a batch's confirmation, waiting for nodes slower than [`ASIDE_WAIT`] (see
/// [`Confirming`]): the barriers that wait for them, and the new channels placed on them
/// whose sequence is to be noted then.
struct Deferred {
    id: u64,
    waiting: Vec<Waiting>,
    new: Vec<Arc<str>>,
}

/// The slow PINGs of a [`Deferred`] confirmation, awaited beside the loop's other work (as
/// the watchdog's are): its id and the connections that failed (node, connection id, why).
type Confirming = Pin<Box<dyn Future<Output = (u64, Vec<(String, u64, String)>)> + Send>>;

impl Seen {
    /// The channel is no longer active.
    fn forget(&mut self, ch: &str) {
        self.last.remove(ch);
        self.pushed.remove(ch);
    }
}

/// Which primary serves each slot: ranges `start..=end` and the node's `host:port`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SlotMap {
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// The primary of `slot`.
    pub fn node_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, addr)| addr.as_str())
    }

    /// The map's nodes (its primaries, in slot order), then the `seeds`, each once (a primary
    /// whose slots are not one range is named by each of its ranges, not always next to each
    /// other).
    fn nodes_then(&self, seeds: &[String]) -> Vec<String> {
        let mut nodes: Vec<String> = Vec::new();
        let named = self.ranges.iter().map(|(_, _, a)| a.as_str());
        for addr in named.chain(seeds.iter().map(String::as_str)) {
            if !nodes.iter().any(|n| n == addr) {
                nodes.push(addr.to_owned());
            }
        }
        nodes
    }

    /// Each primary's `host:port`, once each, in slot order.
    pub fn primaries(&self) -> Vec<String> {
        self.nodes_then(&[])
    }

    /// Reads a `CLUSTER SLOTS` reply of the node at `asked` (a primary's empty host means
    /// that node's); refuses a map that leaves a slot without a primary.
    pub fn parse(reply: &Reply, asked: &str) -> Result<SlotMap, String> {
        let Reply::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        let asked_host = asked_host.trim_start_matches('[').trim_end_matches(']');
        let mut out = Vec::new();
        for range in ranges {
            let Reply::Array(fields) = range else {
                return Err("CLUSTER SLOTS: a range that is not an array".into());
            };
            let (Some(Reply::Int(start)), Some(Reply::Int(end)), Some(Reply::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err("CLUSTER SLOTS: a range without its primary".into());
            };
            let host = primary
                .first()
                .and_then(Reply::bytes)
                .and_then(|h| std::str::from_utf8(h).ok())
                .ok_or("CLUSTER SLOTS: a primary without a host")?;
            let Some(Reply::Int(port)) = primary.get(1) else {
                return Err("CLUSTER SLOTS: a primary without a port".into());
            };
            let host = if host.is_empty() || host == "?" {
                asked_host
            } else {
                host
            };
            let (Ok(start), Ok(end), Ok(port)) = (
                u16::try_from(*start),
                u16::try_from(*end),
                u16::try_from(*port),
            ) else {
                return Err("CLUSTER SLOTS: a slot or port out of range".into());
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            out.push((start, end, addr));
        }
        out.sort_by_key(|r| r.0);
        let mut next: u32 = 0;
        for (start, end, _) in &out {
            if u32::from(*start) != next || end < start {
                return Err(format!("the cluster serves no slot {next} (failing over?)"));
            }
            next = u32::from(*end) + 1;
        }
        if next != 16384 {
            return Err(format!("the cluster serves no slot {next} (failing over?)"));
        }
        Ok(SlotMap { ranges: out })
    }
}

/// The subscriber task's state; built by `ClusterBroker::start`.
pub(super) struct ClusterSubscriber {
    /// Seeds' `host:port`, asked for the slot map beside the nodes already known.
    seeds: Vec<String>,
    access: Access,
    store: Arc<ClusterStore>,
    metrics: Arc<Metrics>,
    dispatch: DispatchSender,
    commands: mpsc::UnboundedReceiver<SubCommand>,
    history_size: usize,
    ping_interval: Duration,
    ping_timeout: Duration,
    slots: SlotMap,
    /// The connections, by node address.
    nodes: HashMap<String, NodeConn>,
    /// Connections a recovery started and did not wait for (see [`CONNECT_WAIT`]), by node
    /// address: at most one per node of the slot map.
    connecting: HashMap<String, JoinHandle<Result<NodeConn, String>>>,
    /// During a recovery, the nodes whose connection could not be made: an attempt that cannot
    /// reach one of them (or a node whose connection was lost) is an outage, where one still
    /// making a first connection to another node is not.
    failing: HashSet<String>,
    /// During a recovery, the nodes sent commands that their next PING confirms.
    touched: HashSet<String>,
    /// The nodes whose connection answered the last recovery attempt's PING: only barriers on
    /// their channels are answered after it.
    answered: HashSet<String>,
    /// Whether a primary answered in the last recovery attempt (the slot map, or the attempt's
    /// PING, late or not, as long as it is not stalled): then an outage is of some shards only
    /// (`redisse_broker_up` stays 1, `/health` says degraded). A replica's answer does not count: with every primary gone nothing is
    /// served, whatever the replicas say.
    primary_answered: bool,
    /// Whether the last recovery attempt failed as an outage (anything but a first connection
    /// to a node, not failing, still being made: a slot's new owner slow to accept).
    outage: bool,
    /// Each subscribed channel's node.
    placed: HashMap<Arc<str>, String>,
    last: LastSeen,
    lost_tx: LostSender,
    lost_rx: mpsc::UnboundedReceiver<(u64, String)>,
    /// Where the push handlers report a channel whose subscription the node ended (its slot
    /// moved): the connection's id and the channel.
    moved_tx: MovedSender,
    moved_rx: mpsc::UnboundedReceiver<(u64, Moved)>,
    /// Nodes whose connection was lost, not yet recovered.
    lost: HashSet<String>,
    /// Set when a channel could not be placed (no slot map, a node that cannot be reached).
    unplaced: bool,
    /// While recovering, the channels whose live events are held (the hub's set).
    held: HashSet<Arc<str>>,
    barriers: Vec<Waiting>,
    /// Confirmations of the normal loop waiting for slow nodes (see [`Deferred`]).
    deferred: Vec<Deferred>,
    /// New channels placed on a node slower than [`ASIDE_WAIT`] whose confirmation was left to
    /// a recovery: it refills them (which notes their sequence) once their node confirmed them.
    /// (Left unnoted, a channel's later refill read nothing, and the events published while its
    /// connection was lost were never delivered.)
    noting: Vec<Arc<str>>,
    next_id: u64,
}

impl ClusterSubscriber {
    pub fn new(
        seeds: Vec<String>,
        access: Access,
        store: Arc<ClusterStore>,
        metrics: Arc<Metrics>,
        dispatch: DispatchSender,
        commands: mpsc::UnboundedReceiver<SubCommand>,
        config: &Config,
    ) -> Self {
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let (moved_tx, moved_rx) = mpsc::unbounded_channel();
        ClusterSubscriber {
            seeds,
            access,
            store,
            metrics,
            dispatch,
            commands,
            history_size: config.history_size,
            ping_interval: config.redis_ping_interval,
            ping_timeout: config.redis_ping_timeout,
            slots: SlotMap::default(),
            nodes: HashMap::new(),
            connecting: HashMap::new(),
            failing: HashSet::new(),
            touched: HashSet::new(),
            answered: HashSet::new(),
            outage: true,
            primary_answered: false,
            placed: HashMap::new(),
            last: LastSeen::default(),
            lost_tx,
            lost_rx,
            moved_tx,
            moved_rx,
            lost: HashSet::new(),
            unplaced: true,
            held: HashSet::new(),
            barriers: Vec::new(),
            deferred: Vec::new(),
            noting: Vec::new(),
            next_id: 0,
        }
    }

    pub async fn run(mut self) {
        let mut first = true;
        loop {
            if first || self.unplaced || !self.lost.is_empty() {
                // Confirmations still waiting for a slow node are the recovery's to answer.
                for d in std::mem::take(&mut self.deferred) {
                    self.barriers.extend(d.waiting);
                    self.noting.extend(d.new);
                }
                if !self.recover(first).await {
                    return;
                }
                first = false;
            }
            let mut ping = tokio::time::interval(self.ping_interval);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            // The watchdog's PINGs, while their answers are awaited (one round at a time).
            let mut watch: Option<Watch> = None;
            let mut confirming: FuturesUnordered<Confirming> = FuturesUnordered::new();
            while self.lost.is_empty() && !self.unplaced {
                tokio::select! {
                    cmd = self.commands.recv() => {
                        let Some(first) = cmd else { return };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH
                            && let Ok(cmd) = self.commands.try_recv()
                        {
                            batch.push(cmd);
                        }
                        if let Some(slow) = self.apply(batch).await {
                            confirming.push(slow);
                        }
                    }
                    Some((id, failed)) = confirming.next(), if !confirming.is_empty() => {
                        self.confirmed(id, failed).await;
                    }
                    report = self.lost_rx.recv() => {
                        if let Some((id, why)) = report {
                            self.connection_lost(id, &why);
                        }
                    }
                    report = self.moved_rx.recv() => {
                        if let Some((id, moved)) = report {
                            self.channel_moved(id, moved);
                        }
                    }
                    _ = ping.tick(), if watch.is_none() => watch = Some(self.watchdog().await),
                    Some(found) = async {
                        match watch.as_mut() {
                            Some(w) => Some(w.await),
                            None => None,
                        }
                    }, if watch.is_some() => {
                        watch = None;
                        self.watchdog_found(found);
                    }
                }
            }
        }
    }

    /// The node that connection `id` is to, while it is the current one.
    fn address_of(&self, id: u64) -> Option<String> {
        self.nodes
            .iter()
            .find(|(_, c)| c.id == id)
            .map(|(a, _)| a.clone())
    }

    /// Takes a connection's report of its loss (older connections' reports are ignored).
    fn connection_lost(&mut self, id: u64, why: &str) {
        let Some(addr) = self.address_of(id) else {
            return;
        };
        tracing::warn!(node = %addr, reason = %why, "redis cluster subscriber connection lost");
        self.drop_node(&addr);
    }

    /// A slot that moved away from the node on connection `id`: a channel whose subscription
    /// the node ended, or every channel of a slot the node answered `MOVED` for, is to be
    /// placed again (where the slot map now puts its slot), alone; the connection goes on
    /// serving the others.
    fn channel_moved(&mut self, id: u64, moved: Moved) {
        let Some(addr) = self.address_of(id) else {
            return;
        };
        match moved {
            Moved::Channel(channel) => {
                if self.placed.get(&channel) == Some(&addr) {
                    tracing::info!(
                        node = %addr,
                        channel = %Escaped(channel.as_bytes()),
                        "the node ended a channel's subscription (its slot moved): subscribing \
                         it where the slot went"
                    );
                    self.placed.remove(&channel);
                    self.unplaced = true;
                }
            }
            Moved::Slot(slot) => {
                let before = self.placed.len();
                self.placed
                    .retain(|ch, a| *a != addr || layout::slot(ch) != slot);
                if self.placed.len() < before {
                    tracing::info!(
                        node = %addr,
                        slot,
                        channels = before - self.placed.len(),
                        "the node answered MOVED to a subscription (the slot map was stale): \
                         subscribing the slot's channels where it went"
                    );
                    self.unplaced = true;
                }
            }
        }
    }

    /// Takes the connections' reports of slots that moved.
    fn take_moves(&mut self) {
        while let Ok((id, moved)) = self.moved_rx.try_recv() {
            self.channel_moved(id, moved);
        }
    }

    /// Forgets a node's connection: its channels are to be placed again.
    fn drop_node(&mut self, addr: &str) {
        if let Some(con) = self.nodes.remove(addr) {
            self.lost.insert(addr.to_owned());
            lock(&self.last).ending.retain(|_, (on, _)| *on != con.id);
        }
        self.placed.retain(|_, a| a != addr);
    }

    /// Sends the watchdog's PING on every connection, each to be answered within the request
    /// timeout. The answers are waited for beside the loop's other work (see [`Watch`]), so
    /// that a node that stopped answering stalls nobody's subscriptions while its PING waits.
    async fn watchdog(&mut self) -> Watch {
        if self.nodes.is_empty() {
            return self.probe();
        }
        let mut failed = Vec::new();
        let mut answers = Vec::new();
        for (addr, con) in &mut self.nodes {
            match con.send(&[b"PING"]).await {
                Ok(answer) => answers.push((addr.clone(), con.id, con.timeout(), answer)),
                Err(e) => failed.push((addr.clone(), con.id, e)),
            }
        }
        Box::pin(async move {
            let waits = answers
                .into_iter()
                .map(|(addr, id, timeout, answer)| async move {
                    let why = unanswered(answer, timeout, timeout).await?;
                    Some((addr, id, why))
                });
            failed.extend(
                futures_util::future::join_all(waits)
                    .await
                    .into_iter()
                    .flatten(),
            );
            Watched {
                failed,
                probed: None,
            }
        })
    }

    /// The watchdog's round when no channel is followed (no connection to watch): each primary
    /// of the slot map is asked a PING on a connection of its own, all at once, so that a
    /// cluster whose primaries all stopped answering is told (`redisse_broker_up` 0, `/health`
    /// 503) before a stream needs it. One connection per primary per round, only while idle.
    fn probe(&self) -> Watch {
        let primaries = self.slots.primaries();
        let access = self.access.clone();
        let timeout = CONNECT_TIMEOUT.max(self.ping_timeout);
        Box::pin(async move {
            let asks: Vec<_> = primaries
                .iter()
                .map(|addr| {
                    let access = &access;
                    Box::pin(async move {
                        ask_once(addr, access, timeout, &[b"PING"])
                            .await
                            .map_err(|e| format!("{addr}: {e}"))
                    })
                })
                .collect();
            let probed = if asks.is_empty() {
                Err("no primary known".to_owned())
            } else {
                futures_util::future::select_ok(asks).await.map(drop)
            };
            Watched {
                failed: Vec::new(),
                probed: Some(probed),
            }
        })
    }

    /// Takes what the watchdog found: connections whose PING failed are lost, unless already
    /// replaced; with none to watch, the broker is up while a primary answers.
    fn watchdog_found(&mut self, found: Watched) {
        for (addr, id, why) in found.failed {
            if self.nodes.get(&addr).is_some_and(|c| c.id == id) {
                tracing::warn!(node = %addr, reason = %why, "redis cluster subscriber watchdog PING failed");
                self.drop_node(&addr);
            }
        }
        // A connection made meanwhile (a stream came) is watched from now on instead.
        if let Some(probed) = found.probed
            && self.nodes.is_empty()
        {
            let was_up = self.metrics.broker_up();
            match probed {
                Ok(()) => {
                    if !was_up {
                        tracing::info!("redis cluster answers again");
                    }
                    self.metrics.set_broker_up(true);
                }
                Err(why) => {
                    if was_up {
                        tracing::warn!(reason = %why, "no redis cluster primary answers");
                    }
                    self.metrics.set_broker_up(false);
                }
            }
        }
    }

    /// The nodes whose PING must be waited for in full for `waiting` to be answered: those its
    /// channels are placed on, and with `every`, all of them for a barrier on every
    /// subscription (one a recovery answers only once it is over).
    fn barrier_nodes(&self, waiting: &[Waiting], every: bool) -> HashSet<String> {
        let mut nodes = HashSet::new();
        for w in waiting {
            match &w.on {
                None if every => nodes.extend(self.nodes.keys().cloned()),
                None => {}
                Some(on) => nodes.extend(on.iter().filter_map(|c| self.placed.get(c).cloned())),
            }
        }
        nodes
    }

    /// How many primaries, as the slot map says, serve these channels.
    fn shards_of<'a>(&self, channels: impl Iterator<Item = &'a Arc<str>>) -> usize {
        channels
            .filter_map(|c| self.slots.node_of(layout::slot(c)))
            .collect::<HashSet<_>>()
            .len()
    }

    /// The handler of a new connection's pushes.
    fn push_handler(&self, id: u64) -> PushHandler {
        let dispatch = self.dispatch.clone();
        let metrics = self.metrics.clone();
        let last = self.last.clone();
        let reports = Reports {
            lost: self.lost_tx.clone(),
            moved: self.moved_tx.clone(),
        };
        Arc::new(move |items: Vec<Reply>| {
            forward_push(items, id, &dispatch, &metrics, &last, &reports);
        })
    }

    /// Starts making the connection to `addr` in the background, unless it is up or being
    /// made: a recovery starts every connection it needs at once, so that its wait for them
    /// ([`CONNECT_WAIT`]) is paid once, not once per node that does not answer.
    fn start_connecting(&mut self, addr: &str) {
        if self.nodes.contains_key(addr) || self.connecting.contains_key(addr) {
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        let handler = self.push_handler(id);
        let (node, access, lost) = (addr.to_owned(), self.access.clone(), self.lost_tx.clone());
        let timeout = CONNECT_TIMEOUT.max(self.ping_timeout);
        let handle = tokio::spawn(async move {
            NodeConn::connect(&node, id, &access, timeout, handler, lost).await
        });
        self.connecting.insert(addr.to_owned(), handle);
    }

    /// The connection to `addr`, made when missing: waited for whole, or until `deadline` at
    /// most, the attempt going on in the background when it is not made by then (a later call
    /// takes it up).
    async fn node(
        &mut self,
        addr: &str,
        deadline: Option<Instant>,
    ) -> Result<&mut NodeConn, String> {
        if !self.nodes.contains_key(addr) {
            self.start_connecting(addr);
            let Some(mut connecting) = self.connecting.remove(addr) else {
                return Err("no connection".to_owned());
            };
            let made = match deadline {
                None => (&mut connecting).await,
                Some(deadline) => match tokio::time::timeout_at(deadline, &mut connecting).await {
                    Ok(made) => made,
                    Err(_) => {
                        self.connecting.insert(addr.to_owned(), connecting);
                        return Err(format!(
                            "no connection within {CONNECT_WAIT:?} (still trying)"
                        ));
                    }
                },
            };
            let con = made.map_err(|e| e.to_string())??;
            self.nodes.insert(addr.to_owned(), con);
        }
        self.nodes
            .get_mut(addr)
            .ok_or_else(|| "no connection".to_owned())
    }

    /// Stops the connection attempts to nodes that serve nothing wanted now.
    fn forget_connecting(&mut self, keep: impl Fn(&str) -> bool) {
        self.connecting.retain(|addr, handle| {
            let kept = keep(addr);
            if !kept {
                handle.abort();
            }
            kept
        });
    }

    /// Reads the slot map from the first node that answers: on a connection up (no connection
    /// to make, and a node that stopped answering is not asked first), else the known nodes,
    /// then the seeds (those lost or failing in this recovery last), asked a quarter second
    /// apart ([`ask_in_turn`]). Returns the node that answered.
    async fn refresh_slots(&mut self) -> Result<String, String> {
        let mut last_error = "no node to ask".to_owned();
        let mut tried = Vec::new();
        for (addr, con) in &mut self.nodes {
            let reply = con
                .request_waiting(&[b"CLUSTER", b"SLOTS"], ASIDE_WAIT)
                .await;
            let reply =
                reply.and_then(|r| r.ok_or_else(|| format!("no reply within {ASIDE_WAIT:?}")));
            match reply.and_then(|r| SlotMap::parse(&r, addr)) {
                Ok(map) => {
                    let by = addr.clone();
                    self.take_slots(map);
                    return Ok(by);
                }
                Err(e) => {
                    last_error = format!("{addr}: {e}");
                    tried.push(addr.clone());
                }
            }
        }
        let mut candidates = self.slots.nodes_then(&self.seeds);
        candidates.retain(|a| !tried.contains(a));
        // The nodes lost or failing in this recovery last: each may cost the whole connect
        // timeout (a host that stopped answering), before nodes that may answer at once.
        candidates.sort_by_key(|a| self.lost.contains(a) || self.failing.contains(a));
        if candidates.is_empty() {
            return Err(last_error);
        }
        let (by, map) = ask_in_turn(
            &candidates,
            &self.access,
            CONNECT_TIMEOUT,
            &[b"CLUSTER", b"SLOTS"],
            SlotMap::parse,
        )
        .await?;
        self.take_slots(map);
        Ok(by)
    }

    fn take_slots(&mut self, map: SlotMap) {
        if map != self.slots {
            tracing::debug!(?map, "redis cluster slot map read");
        }
        self.slots = map;
    }

    /// Applies a batch of the hub's commands (see the module documentation). A failure marks
    /// the node lost; the barriers then wait for the recovery.
    async fn apply(&mut self, batch: Vec<SubCommand>) -> Option<Confirming> {
        let mut waiting = Vec::new();
        let mut new: Vec<Arc<str>> = Vec::new();
        let mut touched: HashSet<String> = HashSet::new();
        for cmd in batch {
            match cmd {
                SubCommand::Barrier { tx, on } => waiting.push(Waiting { tx, on }),
                SubCommand::Subscribe(ch) => {
                    let mut seen = lock(&self.last);
                    if !seen.last.contains_key(&ch) {
                        seen.last.insert(ch.clone(), None);
                        new.push(ch);
                    }
                }
                SubCommand::Unsubscribe(ch) => {
                    lock(&self.last).forget(&ch);
                    new.retain(|c| *c != ch);
                    if let Some(addr) = self.placed.remove(&ch)
                        && let Some(con) = self.nodes.get_mut(&addr)
                    {
                        unsubscribe(con, &self.last, &ch);
                        touched.insert(addr);
                    }
                }
            }
        }
        // A first connection to a node is waited for `CONNECT_WAIT` at most, as in a recovery:
        // one still being made then (a node that stopped answering accepts but never answers
        // `HELLO`) goes on in the background and a recovery attempt places its channels, while
        // the other shards' streams start. (Waited for whole, its connect timeout held every
        // stream opened meanwhile on any shard.)
        let groups = self.group_by_node(&new);
        let deadline = Instant::now() + CONNECT_WAIT;
        for addr in groups.keys() {
            self.start_connecting(addr);
        }
        for (addr, channels) in groups {
            match self.subscribe_on(&addr, &channels, Some(deadline)).await {
                Ok(()) => {
                    touched.insert(addr);
                }
                Err(e) if self.connecting.contains_key(&addr) => {
                    tracing::debug!(node = %addr, reason = %e, "redis cluster subscriber still connecting");
                    self.unplaced = true;
                }
                Err(e) => {
                    tracing::warn!(node = %addr, reason = %e, "redis cluster subscriber cannot subscribe");
                    self.drop_node(&addr);
                    self.unplaced = true;
                }
            }
        }
        // A PING on every connection when something waits for the subscriptions (a barrier, or
        // the sequence read of new channels below); otherwise the commands are only written.
        // The PINGs go to every connection at once; those that were sent nothing and serve no
        // channel a barrier waits for are waited for a while only (see `confirm`), so that a node
        // that stopped answering, not yet noticed by the watchdog, does not stall other shards'
        // streams.
        let everywhere = !waiting.is_empty() || !new.is_empty();
        let mut answered = true;
        let mut slow = Vec::new();
        if everywhere {
            let mut must = touched;
            must.extend(self.barrier_nodes(&waiting, true));
            let confirmed;
            (confirmed, slow) = self.confirm_aside(&must).await;
            for (addr, answer) in confirmed {
                match answer {
                    // A node answers: up again, if the watchdog's probe had found none
                    // answering while no channel was followed.
                    Ok(true) => self.metrics.set_broker_up(true),
                    Ok(false) => answered = false,
                    Err(e) => {
                        tracing::warn!(node = %addr, reason = %e, "redis cluster subscriber connection failed");
                        self.drop_node(&addr);
                    }
                }
            }
        } else {
            for addr in touched {
                let Some(con) = self.nodes.get_mut(&addr) else {
                    continue;
                };
                if let Err(e) = con.flush().await {
                    tracing::warn!(node = %addr, reason = %e, "redis cluster subscriber connection failed");
                    self.drop_node(&addr);
                }
            }
        }
        // A `MOVED` answer to a subscription came before its connection's PONG: the barriers
        // wait for those channels to be placed where their slot went.
        self.take_moves();
        if !self.lost.is_empty() || self.unplaced {
            self.barriers.extend(waiting);
            // The new channels placed and confirmed are active: their sequence is noted as
            // below, or a later refill of theirs would read nothing (`refill_channel`). Those on
            // a node that has not answered are the recovery's to note: a read of their sequence
            // here would wait for that node, holding the task.
            for ch in new {
                match self.placed.get(&ch) {
                    Some(addr) if slow.iter().any(|s| s.addr == *addr) => self.noting.push(ch),
                    Some(_) => self.note_sequence(&ch).await,
                    None => {}
                }
            }
            return None;
        }
        // What waits for a node slower than `ASIDE_WAIT` (stopped, not yet noticed) waits beside
        // the loop, so that the other shards' streams start meanwhile: the barriers on its
        // channels (or on every subscription), and its new channels' sequence reads.
        let deferred = (!slow.is_empty()).then(|| {
            let late: HashSet<&str> = slow.iter().map(|s: &Slow| s.addr.as_str()).collect();
            let (held, now): (Vec<Waiting>, Vec<Waiting>) =
                std::mem::take(&mut waiting).into_iter().partition(|w| {
                    self.barrier_nodes(std::slice::from_ref(w), true)
                        .iter()
                        .any(|a| late.contains(a.as_str()))
                });
            waiting = now;
            let (later, sooner): (Vec<Arc<str>>, Vec<Arc<str>>) =
                std::mem::take(&mut new).into_iter().partition(|ch| {
                    self.placed
                        .get(ch)
                        .is_some_and(|a| late.contains(a.as_str()))
                });
            new = sooner;
            (held, later)
        });
        let confirming = deferred.map(|(held, later)| {
            self.next_id += 1;
            let id = self.next_id;
            self.deferred.push(Deferred {
                id,
                waiting: held,
                new: later,
            });
            answered = false;
            let waits = slow.into_iter().map(|s| async move {
                let left = s.until.saturating_duration_since(Instant::now());
                let why = unanswered(s.answer, left, s.timeout).await?;
                Some((s.addr, s.id, why))
            });
            let confirming: Confirming = Box::pin(async move {
                let failed = futures_util::future::join_all(waits).await;
                (id, failed.into_iter().flatten().collect())
            });
            confirming
        });
        if everywhere && answered {
            // Every connection answered after the confirmations of what it was sent.
            lock(&self.last).ending.clear();
        }
        let at = Instant::now();
        for w in waiting {
            self.dispatch.send(Dispatch::Barrier { tx: w.tx, at });
        }
        // Where each new channel's sequence stood once its subscription was active: a later
        // refill reads its history after that at least.
        for ch in new {
            self.note_sequence(&ch).await;
        }
        confirming
    }

    /// The end of a [`Deferred`] confirmation: a connection that failed is lost (its
    /// barriers then wait for the recovery); else its barriers are answered and its new
    /// channels' sequences noted.
    async fn confirmed(&mut self, id: u64, failed: Vec<(String, u64, String)>) {
        let Some(i) = self.deferred.iter().position(|d| d.id == id) else {
            return;
        };
        let done = self.deferred.swap_remove(i);
        for (addr, conn, why) in failed {
            if self.nodes.get(&addr).is_some_and(|c| c.id == conn) {
                tracing::warn!(node = %addr, reason = %why, "redis cluster subscriber connection failed");
                self.drop_node(&addr);
            }
        }
        if !self.lost.is_empty() || self.unplaced {
            self.barriers.extend(done.waiting);
            self.noting.extend(done.new);
            return;
        }
        let at = Instant::now();
        for w in done.waiting {
            self.dispatch.send(Dispatch::Barrier { tx: w.tx, at });
        }
        for ch in done.new {
            if self.placed.contains_key(&ch) {
                self.note_sequence(&ch).await;
            }
        }
    }

    /// Raises the channel's last known sequence to its sequence now. When it cannot be read,
    /// a channel with nothing known is taken as at 0: a later refill then reads all its
    /// history, which each stream's own position deduplicates, rather than none of it.
    async fn note_sequence(&self, ch: &Arc<str>) {
        let seq = match self.store.sequence(ch).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a channel's sequence");
                0
            }
        };
        if let Some(v) = lock(&self.last).last.get_mut(ch) {
            raise(v, seq);
        }
    }

    /// `channels` by the node that serves their slot, then by slot; marks the subscriber
    /// unplaced when a slot has no node.
    fn group_by_node(&mut self, channels: &[Arc<str>]) -> HashMap<String, Vec<Arc<str>>> {
        let mut by_node: HashMap<String, Vec<Arc<str>>> = HashMap::new();
        for ch in channels {
            match self.slots.node_of(layout::slot(ch)) {
                Some(addr) => by_node.entry(addr.to_owned()).or_default().push(ch.clone()),
                None => self.unplaced = true,
            }
        }
        for list in by_node.values_mut() {
            list.sort_by_key(|c| layout::slot(c));
        }
        by_node
    }

    /// Queues and writes the `SSUBSCRIBE`s of `channels` (sorted by slot) on `addr`, and
    /// records them placed there.
    async fn subscribe_on(
        &mut self,
        addr: &str,
        channels: &[Arc<str>],
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let con = self.node(addr, deadline).await?;
        for group in channels.chunk_by(|a, b| layout::slot(a) == layout::slot(b)) {
            for chunk in group.chunks(SUBSCRIBE_CHUNK) {
                let keys: Vec<String> = chunk.iter().map(|c| layout::history_key(c)).collect();
                let mut args: Vec<&[u8]> = vec![b"SSUBSCRIBE"];
                args.extend(keys.iter().map(|k| k.as_bytes()));
                con.queue(&args);
            }
        }
        con.flush().await?;
        for ch in channels {
            self.placed.insert(ch.clone(), addr.to_owned());
        }
        Ok(())
    }

    /// Sleeps while still taking the hub's commands, [`MIN_BACKOFF`] at most once a stream
    /// waits (a barrier came): its channels may be on a healthy shard, placed by the next
    /// attempt. (Waiting out the whole backoff, a stream opened during another shard's
    /// failover started up to a second late.) Returns `false` when told to stop.
    async fn wait(&mut self, delay: Duration) -> bool {
        let started = Instant::now();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(cmd) => {
                        let barrier = matches!(cmd, SubCommand::Barrier { .. });
                        self.record(cmd);
                        if barrier {
                            let sooner = (started + MIN_BACKOFF).min(sleep.deadline());
                            sleep.as_mut().reset(sooner);
                        }
                    }
                },
            }
        }
    }

    /// Takes a command while recovering: the subscription is made by the recovery.
    fn record(&mut self, cmd: SubCommand) {
        match cmd {
            SubCommand::Subscribe(ch) => {
                lock(&self.last).last.entry(ch).or_insert(None);
            }
            SubCommand::Unsubscribe(ch) => {
                lock(&self.last).forget(&ch);
                if let Some(addr) = self.placed.remove(&ch)
                    && let Some(con) = self.nodes.get_mut(&addr)
                {
                    unsubscribe(con, &self.last, &ch);
                    self.touched.insert(addr);
                }
            }
            SubCommand::Barrier { tx, on } => {
                // Answered after the next attempt's PINGs at the earliest (`answer_served`):
                // what the nodes pushed before them has then reached the dispatcher, which a
                // stream's flush before its start relies on.
                let waiting = Waiting { tx, on };
                // Barriers of streams that left are forgotten (see the one-Redis subscriber).
                if self.barriers.len() >= 64 && self.barriers.len().is_power_of_two() {
                    self.barriers.retain(|b| !b.tx.is_closed());
                }
                self.barriers.push(waiting);
            }
        }
    }

    /// Whether a barrier can be answered while recovering, after an attempt: it names its
    /// channels, and each is subscribed (and confirmed: an attempt keeps only the channels whose
    /// connection answered a PING after their subscription) on a connection that answered the
    /// attempt's PING, and is not held.
    fn serves(&self, waiting: &Waiting) -> bool {
        waiting.on.as_ref().is_some_and(|on| {
            on.iter().all(|ch| {
                self.placed
                    .get(ch)
                    .is_some_and(|addr| self.answered.contains(addr))
                    && !self.held.contains(ch)
            })
        })
    }

    /// Answers the barriers whose channels are served now (after a recovery attempt that let
    /// some channels go), behind that attempt's resume.
    fn answer_served(&mut self) {
        let (ready, waiting): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.barriers)
            .into_iter()
            .partition(|w| self.serves(w));
        self.barriers = waiting;
        let at = Instant::now();
        for w in ready {
            self.dispatch.send(Dispatch::Barrier { tx: w.tx, at });
        }
    }

    /// Holds live events, places every active channel again on the connections that the
    /// slot map names (after lost ones, or at the start), refills the dispatcher from each
    /// moved channel's history and resumes. Retries with backoff until it succeeds; returns
    /// `false` when told to stop.
    async fn recover(&mut self, first: bool) -> bool {
        // Channels whose slot moved, with every connection up, are placed again without the
        // broker being down, unless placing them fails.
        let mut reconnecting = false;
        // The last sequence dispatched for each channel to refill, taken before any of them is
        // subscribed again (live events of the new subscriptions raise `last`, and are held).
        let mut from: HashMap<Arc<str>, Option<u64>> = HashMap::new();
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut failures = 0u64;
        loop {
            while let Ok((id, why)) = self.lost_rx.try_recv() {
                self.connection_lost(id, &why);
            }
            self.take_moves();
            if !reconnecting && (first || !self.lost.is_empty()) {
                reconnecting = true;
                // Down until the first attempt says the cluster answers (then the other
                // shards serve: degraded, not down); a lost connection is one shard's until
                // then.
                if first {
                    self.metrics.set_broker_up(false);
                } else {
                    self.metrics.set_shards_recovering(self.lost.len().max(1));
                }
            }
            loop {
                match self.commands.try_recv() {
                    Ok(cmd) => self.record(cmd),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return false,
                }
            }
            match self.recover_once(&mut from).await {
                Ok(resume) => {
                    if reconnecting && !first {
                        self.metrics.broker_reconnects.inc();
                        tracing::info!("redis cluster subscriber recovered");
                    }
                    self.lost.clear();
                    self.unplaced = false;
                    self.held.clear();
                    self.failing.clear();
                    self.touched.clear();
                    self.forget_connecting(|_| false);
                    self.dispatch.send(Dispatch::Resume(resume));
                    self.metrics.set_broker_up(true);
                    self.metrics.set_shards_recovering(0);
                    let at = Instant::now();
                    for w in self.barriers.drain(..) {
                        self.dispatch.send(Dispatch::Barrier { tx: w.tx, at });
                    }
                    return true;
                }
                Err(e) => {
                    // What is still held is what is left to refill; the streams on the rest
                    // start.
                    self.held = from.keys().cloned().collect();
                    self.answer_served();
                    // A move that could not be placed at once is an outage like a lost
                    // connection: down meanwhile, and counted and logged when it is over
                    // (unless all that failed is a first connection still being made).
                    let delay = backoff.next_delay();
                    if self.outage {
                        reconnecting = true;
                        // Down only when no primary answered; else the shards of the channels
                        // still to place are recovering, and the others serve.
                        self.metrics.set_broker_up(self.primary_answered);
                        self.metrics
                            .set_shards_recovering(self.shards_of(from.keys()).max(1));
                        if failures.is_multiple_of(WARN_EVERY) {
                            tracing::warn!(error = %e, attempts = failures + 1, retry_in = ?delay, "redis cluster subscriber cannot recover");
                        }
                    } else {
                        tracing::debug!(error = %e, "redis cluster subscriber still connecting");
                    }
                    failures += 1;
                    if !self.wait(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// One attempt of [`ClusterSubscriber::recover`].
    async fn recover_once(
        &mut self,
        from: &mut HashMap<Arc<str>, Option<u64>>,
    ) -> Result<Resume, String> {
        // Until this attempt says otherwise, a failure is an outage; and no connection answered.
        self.outage = true;
        self.answered.clear();
        self.primary_answered = false;
        let by = self.refresh_slots().await?;
        let primaries = self.slots.primaries();
        self.primary_answered = primaries.contains(&by);
        self.forget_connecting(|a| primaries.iter().any(|p| p == a));
        let active: Vec<(Arc<str>, Option<u64>)> = lock(&self.last)
            .last
            .iter()
            .map(|(c, v)| (c.clone(), *v))
            .collect();
        // Channels to subscribe: not placed, or placed on a node that no longer serves them.
        let mut moving: Vec<Arc<str>> = Vec::new();
        for (ch, seen) in &active {
            let wanted = self.slots.node_of(layout::slot(ch)).map(str::to_owned);
            match self.placed.get(ch) {
                Some(addr) if Some(addr) == wanted.as_ref() => continue,
                Some(addr) => {
                    if let Some(con) = self.nodes.get_mut(addr) {
                        unsubscribe(con, &self.last, ch);
                        self.touched.insert(addr.clone());
                    }
                    self.placed.remove(ch);
                }
                None => {}
            }
            from.entry(ch.clone()).or_insert(*seen);
            moving.push(ch.clone());
        }
        // New channels whose confirmation the normal loop left to this recovery: refilled once
        // their node confirmed them (it is waited for as one sent something to confirm).
        for ch in std::mem::take(&mut self.noting) {
            if let Some((_, seen)) = active.iter().find(|(a, _)| *a == ch) {
                if let Some(addr) = self.placed.get(&ch) {
                    self.touched.insert(addr.clone());
                }
                from.entry(ch).or_insert(*seen);
            }
        }
        from.retain(|c, _| active.iter().any(|(a, _)| a == c));
        // Their live events wait for their refill, those of every channel to refill since the
        // recovery began (the whole set each time: the hub keeps only it, so a channel that
        // left meanwhile is not held on); the other channels' go on. Sent before any of them is
        // subscribed again: what a new subscription pushes is held.
        if !from.is_empty() {
            self.dispatch
                .send(Dispatch::HoldChannels(from.keys().cloned().collect()));
        }
        self.unplaced = false;
        let groups = self.group_by_node(&moving);
        let mut failed = self
            .unplaced
            .then(|| "a subscribed channel's slot has no primary".to_owned());
        let mut outage = failed.is_some();
        // Every connection to make is started now and waited for until one deadline.
        let deadline = Instant::now() + CONNECT_WAIT;
        for addr in groups.keys() {
            self.start_connecting(addr);
        }
        for (addr, channels) in groups {
            self.touched.insert(addr.clone());
            let failing = self.lost.contains(&addr) || self.failing.contains(&addr);
            if let Err(e) = self.subscribe_on(&addr, &channels, Some(deadline)).await {
                self.drop_node(&addr);
                // A first connection still being made (in the background) is no outage yet:
                // the node may only be slow to accept. One that failed is.
                if failing || !self.connecting.contains_key(&addr) {
                    outage = true;
                    self.failing.insert(addr.clone());
                }
                failed.get_or_insert(format!("{addr}: {e}"));
            }
        }
        // Every connection confirms what was sent to it, all at once; one sent nothing, serving
        // no channel a barrier waits for, is waited for a while only, and passed over if slower
        // (see `ASIDE_WAIT`).
        let mut must = self.touched.clone();
        must.extend(self.barrier_nodes(&self.barriers, false));
        let confirmed = self.confirm(&must).await;
        let mut everywhere = true;
        for (addr, answer) in confirmed {
            match answer {
                Ok(true) => {
                    self.touched.remove(&addr);
                    self.primary_answered |= primaries.contains(&addr);
                    self.answered.insert(addr);
                }
                // Slower than the attempt waits, but not stalled (that is an `Err`): a primary
                // that answers late still serves.
                Ok(false) => {
                    everywhere = false;
                    self.primary_answered |= primaries.contains(&addr);
                }
                Err(e) => {
                    self.drop_node(&addr);
                    self.touched.remove(&addr);
                    outage = true;
                    failed.get_or_insert(format!("{addr}: {e}"));
                }
            }
        }
        // A node that answered `MOVED` (before its PONG): the slot map read was already stale;
        // those channels wait for the next attempt, after a pause.
        self.take_moves();
        if self.unplaced {
            outage = true;
            failed.get_or_insert("a node answered MOVED: the slot map changed".to_owned());
        }
        if let Some(why) = failed {
            // The channels placed and confirmed are refilled and let go now: a shard that is
            // still failing over does not hold those of the others (a slot that moved, a
            // connection lost and made again meanwhile). The rest wait for the next attempt.
            let ready: HashMap<Arc<str>, Option<u64>> = from
                .iter()
                .filter(|(ch, _)| self.placed.contains_key(*ch))
                .map(|(ch, seen)| (ch.clone(), *seen))
                .collect();
            if !ready.is_empty() {
                let mut resume = self.refill(&ready).await.map_err(|e| e.to_string())?;
                resume.release = Some(ready.keys().cloned().collect());
                from.retain(|ch, _| !ready.contains_key(ch));
                self.dispatch.send(Dispatch::Resume(resume));
            }
            self.outage = outage;
            return Err(why);
        }
        // Every confirmation of a SUNSUBSCRIBE sent on a live connection has arrived (unless one
        // was passed over: then at the next PING on every connection).
        if everywhere {
            lock(&self.last).ending.clear();
        }
        // Idle connections to nodes that serve nothing subscribed are closed.
        let used: HashSet<&String> = self.placed.values().collect();
        let idle: Vec<String> = self
            .nodes
            .keys()
            .filter(|a| !used.contains(a))
            .cloned()
            .collect();
        for addr in idle {
            if let Some(con) = self.nodes.remove(&addr) {
                lock(&self.last).ending.retain(|_, (on, _)| *on != con.id);
            }
        }
        let resume = self.refill(from).await.map_err(|e| e.to_string())?;
        from.clear();
        Ok(resume)
    }

    /// A PING on every connection, all at once: `Ok(true)` when it was answered, `Ok(false)`
    /// when a connection not in `must` (nothing sent to it to confirm) was slower than
    /// [`ASIDE_WAIT`], `Err` when the connection failed (or one in `must` did not answer
    /// within its timeout).
    ///
    /// A connection passed over whose oldest request has gone unanswered for its whole request
    /// timeout (the watchdog's criterion) fails too, so that a node that stopped answering is
    /// taken for lost while the watchdog does not run (during a recovery), rather than passed
    /// over for ever; one that answers late but answers is not.
    async fn confirm(&mut self, must: &HashSet<String>) -> Vec<(String, Result<bool, String>)> {
        let pings = self.nodes.iter_mut().map(|(addr, con)| async move {
            let answer = if must.contains(addr) {
                con.request(&[b"PING"]).await.map(|_| true)
            } else {
                match con.request_waiting(&[b"PING"], ASIDE_WAIT).await {
                    Ok(None) if con.stalled() => {
                        Err(format!("no reply within {:?}", con.timeout()))
                    }
                    answer => answer.map(|r| r.is_some()),
                }
            };
            (addr.clone(), answer)
        });
        futures_util::future::join_all(pings).await
    }

    /// [`ClusterSubscriber::confirm`] for the normal loop: a PING on every connection, all at
    /// once, each waited for [`ASIDE_WAIT`]; one in `must` slower than that is returned as
    /// [`Slow`], to be waited for beside the loop, rather than waited for here.
    async fn confirm_aside(
        &mut self,
        must: &HashSet<String>,
    ) -> (Vec<(String, Result<bool, String>)>, Vec<Slow>) {
        let pings = self.nodes.iter_mut().map(|(addr, con)| async move {
            let mut answer = match con.send(&[b"PING"]).await {
                Ok(answer) => answer,
                Err(e) => return ((addr.clone(), Err(e)), None),
            };
            let until = Instant::now() + con.timeout();
            match answer.wait(ASIDE_WAIT).await {
                Ok(None) if con.stalled() => (
                    (
                        addr.clone(),
                        Err(format!("no reply within {:?}", con.timeout())),
                    ),
                    None,
                ),
                Ok(None) if must.contains(addr) => {
                    let slow = Slow {
                        addr: addr.clone(),
                        id: con.id,
                        answer,
                        until,
                        timeout: con.timeout(),
                    };
                    ((addr.clone(), Ok(false)), Some(slow))
                }
                answer => ((addr.clone(), answer.map(|r| r.is_some())), None),
            }
        });
        let (confirmed, slow): (Vec<_>, Vec<_>) = futures_util::future::join_all(pings)
            .await
            .into_iter()
            .unzip();
        (confirmed, slow.into_iter().flatten().collect())
    }

    /// Each moved channel's history after the last sequence dispatched for it (see the
    /// module documentation), [`REFILL_AT_ONCE`] channels at a time.
    async fn refill(&self, from: &HashMap<Arc<str>, Option<u64>>) -> Result<Resume, BrokerError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        // The futures are made before the stream (they are lazy: still at most
        // `REFILL_AT_ONCE` run at once): with the closure inside it, rustc cannot prove the
        // task's future `Send`.
        let reads: Vec<_> = from
            .iter()
            .map(|(ch, &seen)| self.refill_channel(ch, seen))
            .collect();
        let refills: Vec<Option<Refilled>> = stream::iter(reads)
            .buffer_unordered(REFILL_AT_ONCE)
            .try_collect()
            .await?;
        let mut resume = Resume::default();
        let mut seen = lock(&self.last);
        for r in refills.into_iter().flatten() {
            if r.reset {
                resume.reset_channels.push(r.channel.clone());
            } else if r.missed {
                resume.missed.push(r.channel.clone());
            }
            if let Some(v) = seen.last.get_mut(&r.channel) {
                raise(v, r.newest);
            }
            for frame in r.events {
                resume.events.push((r.channel.clone(), frame));
            }
        }
        Ok(resume)
    }

    /// One channel's part of [`Subscriber::refill`]: `None` for a channel nothing was known of
    /// (its sequence is noted instead).
    async fn refill_channel(
        &self,
        ch: &Arc<str>,
        seen: Option<u64>,
    ) -> Result<Option<Refilled>, BrokerError> {
        let Some(seen) = seen else {
            // Nothing known for it (subscribed while recovering, so no stream on it has
            // started yet): no position to refill from; from now on, its sequence.
            self.note_sequence(ch).await;
            return Ok(None);
        };
        let mut snap = self.store.snapshot(ch, Some(seen), 0).await?;
        if snap.malformed > 0 {
            self.metrics.malformed.inc_by(snap.malformed);
        }
        let sequence = snap.counter.unwrap_or(0);
        let mut refilled = Refilled {
            channel: ch.clone(),
            events: Vec::new(),
            reset: false,
            missed: false,
            newest: seen,
        };
        // Another process that saw the same loss first raised the floor past what this one
        // dispatched (and the sequence with it): the same reset, already raised.
        let raised_elsewhere = snap.floor.is_some_and(|f| f > seen);
        if sequence < seen || raised_elsewhere {
            let (now, floor) = if raised_elsewhere {
                (sequence, snap.floor.unwrap_or(0))
            } else {
                self.store.raise(ch, seen).await?
            };
            tracing::warn!(
                channel = %Escaped(ch.as_bytes()),
                sequence,
                known = seen,
                raised_to = now,
                floor,
                "a channel's sequence went back (writes lost in a failover, or a flush): its \
                 streams get missedevents, new ids start above the floor"
            );
            // Past any sequence: every retained event.
            snap = self.store.snapshot(ch, Some(MAX_EVENT_ID), 0).await?;
            refilled.reset = true;
            refilled.newest = now;
        } else if channel_may_have_lost(seen, 0, &snap, self.history_size) {
            refilled.missed = true;
        }
        for history in snap.channels {
            for frame in history.events {
                refilled.newest = refilled.newest.max(frame.id);
                refilled.events.push(frame.without_id());
            }
        }
        Ok(Some(refilled))
    }
}

/// What a refill read of one channel: its events after the last sequence dispatched, whether
/// its streams are reset or told `missedevents`, and the newest sequence it knows now.
struct Refilled {
    channel: Arc<str>,
    events: Vec<Frame>,
    reset: bool,
    missed: bool,
    newest: u64,
}

/// Sends one command to `addr` on a connection of its own, made for it and closed after (not
/// subscribed to anything: its pushes and its loss are nobody's concern), and returns the reply.
async fn ask_once(
    addr: &str,
    access: &Access,
    timeout: Duration,
    args: &[&[u8]],
) -> Result<Reply, String> {
    let (tx, _rx) = mpsc::unbounded_channel();
    let quiet: PushHandler = Arc::new(|_| {});
    let mut con = NodeConn::connect(addr, 0, access, timeout, quiet, tx).await?;
    con.request(args).await
}

/// Why `answer` failed, waited for `wait` at most (`None` when it came): the connection
/// failing, or no reply within the request `timeout` it stands for.
async fn unanswered(mut answer: Answer, wait: Duration, timeout: Duration) -> Option<String> {
    match answer.wait(wait).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!("no reply within {timeout:?}")),
        Err(e) => Some(e),
    }
}

/// Asks `candidates` on connections of their own, in turn, each [`ASIDE_WAIT`] after the one
/// before (at once when all asked so far failed), and returns the first node whose answer
/// `accept` takes, with what it made of it. A node that does not answer (its host stopped:
/// each such connection waits its whole `timeout`) no longer holds up those after it: with
/// every node of a cluster cut off, asking six in turn took 12 s, in which `/health` said
/// `degraded`; now the last is given up `timeout` after it was asked.
async fn ask_in_turn<T>(
    candidates: &[String],
    access: &Access,
    timeout: Duration,
    args: &[&[u8]],
    accept: impl Fn(&Reply, &str) -> Result<T, String>,
) -> Result<(String, T), String> {
    type Asking<'a> = Pin<Box<dyn Future<Output = (&'a str, Result<Reply, String>)> + Send + 'a>>;
    let mut asking: FuturesUnordered<Asking<'_>> = FuturesUnordered::new();
    let mut rest = candidates.iter();
    let mut last_error = "no node to ask".to_owned();
    let mut turn = Instant::now();
    loop {
        let more = rest.len() > 0;
        tokio::select! {
            Some((addr, answer)) = asking.next(), if !asking.is_empty() => {
                match answer.and_then(|reply| accept(&reply, addr)) {
                    Ok(made) => return Ok((addr.to_owned(), made)),
                    Err(e) => {
                        last_error = format!("{addr}: {e}");
                        if asking.is_empty() {
                            turn = Instant::now();
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(turn), if more => {
                if let Some(addr) = rest.next() {
                    asking.push(Box::pin(async move {
                        (addr.as_str(), ask_once(addr, access, timeout, args).await)
                    }));
                }
                turn = Instant::now() + ASIDE_WAIT;
            }
            else => return Err(last_error),
        }
    }
}

/// The shared state, locked (a handler that panicked left nothing half-written that matters).
fn lock(seen: &LastSeen) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises a channel's last known sequence to `seq` (from nothing known, to it).
fn raise(last: &mut Option<u64>, seq: u64) {
    *last = Some(last.map_or(seq, |l| l.max(seq)));
}

/// Queues the `SUNSUBSCRIBE` of `ch` on `con`, its confirmation expected.
fn unsubscribe(con: &mut NodeConn, seen: &LastSeen, ch: &Arc<str>) {
    let mut seen = lock(seen);
    let pending = seen.ending.entry(ch.clone()).or_insert((con.id, 0));
    if pending.0 != con.id {
        // Sent on a connection since lost: its confirmation never comes.
        *pending = (con.id, 0);
    }
    pending.1 += 1;
    drop(seen);
    let key = layout::history_key(ch);
    con.queue(&[b"SUNSUBSCRIBE", key.as_bytes()]);
}

/// Runs on a connection's reader task: must never block.
fn forward_push(
    items: Vec<Reply>,
    id: u64,
    dispatch: &DispatchSender,
    metrics: &Metrics,
    last: &LastSeen,
    reports: &Reports,
) {
    let lost = &reports.lost;
    let mut items = items.into_iter();
    let Some(kind) = items.next() else { return };
    if let Reply::Error(e) = &kind {
        // A `MOVED <slot> <host:port>` answer to a subscription (see `node`).
        if let Some(slot) = e
            .strip_prefix("MOVED ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|s| s.parse::<u16>().ok())
        {
            let _ = reports.moved.send((id, Moved::Slot(slot)));
        }
        return;
    }
    match kind.bytes() {
        Some(b"smessage") => {
            let (Some(Reply::Bulk(shard)), Some(Reply::Bulk(payload))) =
                (items.next(), items.next())
            else {
                return;
            };
            let Some(channel) = std::str::from_utf8(&shard)
                .ok()
                .and_then(layout::channel_of)
            else {
                metrics.malformed.inc();
                tracing::warn!(
                    shard_channel = %Escaped(&shard),
                    "skipping a sharded message on a shard channel that is not a redisse channel's"
                );
                return;
            };
            match parse_stored(payload) {
                Ok((seq, bytes)) => {
                    let frame = Frame::live(seq, bytes).without_id();
                    let mut seen = lock(last);
                    if let Some(&(on, before)) = seen.pushed.get(channel)
                        && on == id
                        && seq < before
                    {
                        // Not dispatched: the recovery reads it from history, after raising
                        // the sequence and telling the streams.
                        drop(seen);
                        let _ = lost.send((
                            id,
                            format!(
                                "the sequence of {} went back from {before} to {seq} with the \
                                 connection up (the node's data was flushed?)",
                                Escaped(channel.as_bytes())
                            ),
                        ));
                        return;
                    }
                    let Seen {
                        last: known,
                        pushed,
                        ..
                    } = &mut *seen;
                    if let Some(name) = known.get_key_value(channel).map(|(n, _)| n.clone()) {
                        pushed.insert(name, (id, seq));
                    }
                    if let Some(v) = known.get_mut(channel) {
                        raise(v, seq);
                    }
                    drop(seen);
                    dispatch.send(Dispatch::Live {
                        channel: channel.to_owned(),
                        frame,
                    });
                }
                Err((why, payload)) => {
                    metrics.malformed.inc();
                    tracing::warn!(
                        channel = %Escaped(channel.as_bytes()),
                        reason = %why,
                        payload = %Escaped(&payload),
                        "skipping a sharded message that is not one SSE event"
                    );
                }
            }
        }
        Some(b"sunsubscribe") => {
            // One for a channel still active that this task did not end is Redis's: its slot
            // moved.
            let Some(Reply::Bulk(shard)) = items.next() else {
                return;
            };
            let channel = std::str::from_utf8(&shard)
                .ok()
                .and_then(layout::channel_of);
            let active = channel.and_then(|c| {
                let mut seen = lock(last);
                match seen.ending.get_mut(c) {
                    // The confirmation of ours, on the connection it was sent on.
                    Some((on, n)) if *on == id && *n > 1 => {
                        *n -= 1;
                        None
                    }
                    Some((on, _)) if *on == id => {
                        seen.ending.remove(c);
                        None
                    }
                    _ => seen.last.get_key_value(c).map(|(name, _)| name.clone()),
                }
            });
            if let Some(channel) = active {
                // That channel alone moves; the connection serves the others on.
                let _ = reports.moved.send((id, Moved::Channel(channel)));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: i64, end: i64, host: &str, port: i64) -> Reply {
        Reply::Array(vec![
            Reply::Int(start),
            Reply::Int(end),
            Reply::Array(vec![
                Reply::Bulk(host.as_bytes().to_vec()),
                Reply::Int(port),
                Reply::Bulk(b"id".to_vec()),
            ]),
        ])
    }

    #[test]
    fn the_nodes_to_ask_for_the_slot_map_are_named_once_each() {
        // A primary with two ranges apart (a slot of the middle moved away by a resharding).
        let reply = Reply::Array(vec![
            range(0, 100, "127.0.0.1", 7000),
            range(101, 101, "127.0.0.1", 7001),
            range(102, 16383, "127.0.0.1", 7000),
        ]);
        let map = SlotMap::parse(&reply, "127.0.0.1:7000").unwrap();
        let seeds = ["127.0.0.1:7001".to_owned(), "127.0.0.1:7002".to_owned()];
        assert_eq!(
            map.nodes_then(&seeds),
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
    }

    #[test]
    fn a_slot_map_is_read_whole_or_refused() {
        let reply = Reply::Array(vec![
            range(5461, 10922, "127.0.0.1", 7001),
            range(0, 5460, "", 7000),
            range(10923, 16383, "127.0.0.1", 7002),
        ]);
        let map = SlotMap::parse(&reply, "10.0.0.9:7000").unwrap();
        assert_eq!(map.node_of(0), Some("10.0.0.9:7000"));
        assert_eq!(map.node_of(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.node_of(16383), Some("127.0.0.1:7002"));
        assert_eq!(map.node_of(16384), None);
        // A slot without a primary (a failover under way) is not a map to act on.
        let holed = Reply::Array(vec![
            range(0, 5460, "127.0.0.1", 7000),
            range(10923, 16383, "127.0.0.1", 7002),
        ]);
        assert!(SlotMap::parse(&holed, "h:1").unwrap_err().contains("5461"));
        let short = Reply::Array(vec![range(0, 100, "127.0.0.1", 7000)]);
        assert!(SlotMap::parse(&short, "h:1").is_err());
        assert!(SlotMap::parse(&Reply::Int(1), "h:1").is_err());
        let bad_port = Reply::Array(vec![range(0, 16383, "127.0.0.1", 70000)]);
        assert!(SlotMap::parse(&bad_port, "h:1").is_err());
    }

    #[test]
    fn the_primaries_are_read_from_the_slot_map_once_each() {
        let slots = Reply::Array(vec![
            range(0, 5000, "10.0.0.1", 7000),
            range(5001, 9000, "", 7001),
            range(9001, 12000, "10.0.0.1", 7000),
            range(12001, 16383, "fe80::1", 7002),
        ]);
        let map = SlotMap::parse(&slots, "seed.example:7000").unwrap();
        assert_eq!(
            map.primaries(),
            ["10.0.0.1:7000", "seed.example:7001", "[fe80::1]:7002"]
        );
        assert!(SlotMap::parse(&Reply::Null, "h:1").is_err());
        let asked_v6 = Reply::Array(vec![range(0, 16383, "", 7003)]);
        assert_eq!(
            SlotMap::parse(&asked_v6, "[::1]:7003").unwrap().primaries(),
            ["[::1]:7003"]
        );
    }
}
