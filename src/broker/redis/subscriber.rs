//! The process's one Redis pub/sub connection, supervised.
//!
//! A single task owns the connection (RESP3, so messages arrive as pushes beside command
//! replies). It subscribes to a channel when the hub reports its first local listener and
//! unsubscribes when the last one leaves, in the order the hub changed. It answers barriers once
//! the subscriptions before them are active, which is how a new stream knows that a history read
//! will overlap the live events; the answer goes through the dispatcher, so that whatever the
//! dispatcher received before (a refill, a reset) has reached the stream's connection first.
//!
//! When the connection dies (a disconnection push, a failed command, or a PING that times out on
//! a half-open socket) the task marks the broker down, reconnects with exponential backoff
//! (capped at a quarter second, so that the process is back within that of Redis answering
//! again), resubscribes every active channel, and refills the dispatcher from history after the
//! last id this process saw, because pub/sub drops what is published while nobody listens. The
//! command connections still hold their dead sockets then: the refill's read is made again at
//! once on a new one (see `HistoryReader`), and the streams' connection is woken by a PING as
//! soon as the subscriber is connected, so that neither the first stream read nor the first
//! publish after an outage fails on it. Live events of the new connection are held behind that
//! refill so ids stay in order.
//!
//! Redis lost its data when the counter is below an id this process knew, or when the data-loss
//! floor (`redisse:lostBelow`, which the first connection creates) is gone or went down: then
//! the refill raises the counter above every id this process knew and the floor with it (see
//! [`super::HistoryReader::raise`]), so that new ids pass the old ones, and tells every stream
//! `missedevents` before everything retained. A floor that another process raised means the same
//! loss (that process saw it first): the streams are told, the counter is left as it is. The
//! connection survives a `FLUSHALL`, so the watchdog's reading of the counter and the floor
//! checks the same signs, and on any of them starts over as after a lost connection.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::HistoryReader;
use super::primary::{Commands, Primary};
use crate::backoff::Backoff;
use crate::dispatch::{Dispatch, DispatchSender, Newest, NewestCell, Ready, Resume, SubCommand};
use crate::error::BrokerError;
use crate::event::{Frame, MAX_EVENT_ID};
use crate::history::channel_may_have_lost;
use crate::logtext::Escaped;
use crate::metrics::Metrics;
use crate::seen::LATE_WINDOW;
use crate::stored::parse_stored;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// One connection attempt per process every quarter second at most during an outage: what
/// Redis sees of a few hundred processes is a few hundred refused connections a second, and a
/// process is back within a quarter second of Redis answering.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Failed connection attempts of one outage between two warnings (about 2 s at the cap).
const WARN_EVERY: u64 = 8;
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const SUBSCRIBE_CHUNK: usize = 512;
/// Commands taken from the hub's queue at once.
const MAX_BATCH: usize = 4096;
/// How far past the highest counter this process has read a live event's id may be. Every
/// publisher takes its id from the counter before publishing, so a real id is at most the
/// counter at that moment; the counter is read at each connection, each stream's history read
/// and each watchdog tick, so a real id leads the last reading only by what was published
/// since (ten million ids in one ping interval is far beyond what one Redis can publish). An id
/// further ahead was written by a client that does not take ids from the counter: delivering
/// it would move every position it reaches (a stream's last id, the refill's cursor) past the
/// real events, so it is refused and counted as malformed.
pub(crate) const MAX_ID_LEAD: u64 = 10_000_000;

/// The subscriber task's state; built and started by [`super::RedisBroker::start`].
pub(super) struct Subscriber {
    /// Where to connect: resolved again at each connection (Sentinel).
    pub primary: Arc<Primary>,
    pub metrics: Arc<Metrics>,
    /// The highest counter streams started from (their positions may be past the highest id
    /// delivered, the dispatch channel's cursor).
    pub counter_seen: Arc<AtomicU64>,
    /// The newest event published here (the dispatcher keeps the newest delivered).
    pub published: Arc<NewestCell>,
    pub dispatch: DispatchSender,
    pub commands: mpsc::UnboundedReceiver<SubCommand>,
    /// On a connection of its own, so a refill never waits behind streams' reads.
    pub history: HistoryReader,
    /// The streams' and the publisher's command connection, woken at each reconnection.
    pub streams_commands: Commands,
    pub history_size: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// The data-loss floor as this process last read it (`None` until its first connection
    /// made sure it exists): a different one means a loss this process has not handled.
    pub floor_seen: Option<u64>,
    /// The Redis server's `run_id` at the last connection that was handled to the end (`None`
    /// before, or when it cannot be read): the same one means Redis did not restart, so it
    /// cannot have come back from an older save.
    pub run_id: Option<String>,
    /// The address of the server the pub/sub connection is to (as the client displays it).
    pub connected: Option<String>,
}

/// The counter and the data-loss floor, read together.
struct Marks {
    counter: Option<u64>,
    floor: Option<u64>,
}

/// Why the connected loop ended.
enum Exit {
    /// The broker was dropped: stop for good.
    Stop,
    /// The connection failed: reconnect.
    Lost(String),
}

impl Subscriber {
    pub async fn run(mut self) {
        let mut active: HashSet<Arc<str>> = HashSet::new();
        let mut barriers: Vec<Ready> = Vec::new();
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut connected_before = false;
        let mut failures = 0u64;
        loop {
            let lost = Arc::new(Notify::new());
            let mut con = match self.connect(lost.clone()).await {
                Ok(con) => con,
                Err(e) => {
                    let delay = backoff.next_delay();
                    if failures.is_multiple_of(WARN_EVERY) {
                        tracing::warn!(error = %e, attempts = failures + 1, retry_in = ?delay, "redis subscriber cannot connect");
                    }
                    failures += 1;
                    if !self.wait(delay, &mut active, &mut barriers).await {
                        return;
                    }
                    continue;
                }
            };
            failures = 0;
            if connected_before && let Ok(con) = self.streams_commands.get().await {
                wake_up(con);
            }
            if !self.apply_pending(&mut active, &mut barriers) {
                return;
            }
            self.dispatch.send(Dispatch::Hold);
            if let Err(e) = self.resubscribe(&mut con, &active, connected_before).await {
                tracing::warn!(error = %e, "redis subscriber could not resubscribe");
                // Live events stay held: releasing them without the refill would move
                // the delivered cursor past events published during the outage, which the next
                // refill would then skip.
                if !self
                    .wait(backoff.next_delay(), &mut active, &mut barriers)
                    .await
                {
                    return;
                }
                continue;
            }
            if connected_before {
                self.metrics.broker_reconnects.inc();
                tracing::info!("redis subscriber reconnected");
            }
            connected_before = true;
            backoff.reset();
            self.metrics.set_broker_up(true);
            let at = Instant::now();
            for tx in barriers.drain(..) {
                self.dispatch.send(Dispatch::Barrier { tx, at });
            }
            match self
                .serve(&mut con, &lost, &mut active, &mut barriers)
                .await
            {
                Exit::Stop => return,
                Exit::Lost(why) => {
                    tracing::warn!(reason = %why, "redis subscriber connection lost");
                    self.metrics.set_broker_up(false);
                }
            }
        }
    }

    async fn connect(&mut self, lost: Arc<Notify>) -> Result<MultiplexedConnection, BrokerError> {
        let dispatch = self.dispatch.clone();
        let metrics = self.metrics.clone();
        let counter_seen = self.counter_seen.clone();
        let sender = move |push: PushInfo| -> Result<(), ()> {
            forward_push(push, &dispatch, &metrics, &counter_seen, &lost);
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(self.ping_timeout))
            .set_push_sender(sender);
        let client = self.primary.resolve().await.map_err(BrokerError::redis)?;
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(BrokerError::redis)?;
        self.connected = Some(client.get_connection_info().addr().to_string());
        if self.primary.moves() {
            // The command connections follow before anything reads: the refill's and the
            // streams' reads, and publishes, go to the primary this connection found.
            let moved = self.history.commands.point_at(&client)?;
            self.streams_commands.point_at(&client)?;
            if moved {
                tracing::info!(
                    address = %client.get_connection_info().addr(),
                    "redis primary found through Sentinel"
                );
            }
        }
        // Before any subscription: the counter that live ids are checked against. (A counter
        // below what this process knew is left to the refill, which compares.)
        let marks = read_marks(&mut con).await.map_err(BrokerError::redis)?;
        self.counter_seen
            .fetch_max(marks.counter.unwrap_or(0), Relaxed);
        Ok(con)
    }

    /// Why the watchdog's reading means that Redis lost its data, if it does: the counter is
    /// below `known` (what this process knew before it asked), or the floor is not the one it
    /// last read.
    fn lost_data(&self, marks: &Marks, known: u64) -> Option<String> {
        let counter = marks.counter.unwrap_or(0);
        if counter < known {
            return Some(format!(
                "the id counter went back from {known} to {counter}"
            ));
        }
        match self.floor_seen {
            Some(seen) if marks.floor != Some(seen) => Some(format!(
                "the data-loss floor changed from {seen} to {:?}",
                marks.floor
            )),
            _ => None,
        }
    }

    /// Sleeps while still taking subscription changes. Returns `false` when told to stop.
    async fn wait(
        &mut self,
        delay: Duration,
        active: &mut HashSet<Arc<str>>,
        barriers: &mut Vec<Ready>,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(cmd) => record(cmd, active, barriers),
                },
            }
        }
    }

    /// Takes the changes that arrived while disconnected.
    fn apply_pending(&mut self, active: &mut HashSet<Arc<str>>, barriers: &mut Vec<Ready>) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => record(cmd, active, barriers),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Subscribes every active channel, then (after a reconnection) refills from history and
    /// releases the held live events.
    async fn resubscribe(
        &mut self,
        con: &mut MultiplexedConnection,
        active: &HashSet<Arc<str>>,
        refill: bool,
    ) -> Result<(), BrokerError> {
        let channels: Vec<Arc<str>> = active.iter().cloned().collect();
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            let names: Vec<&str> = chunk.iter().map(|c| &**c).collect();
            con.subscribe(names).await.map_err(BrokerError::redis)?;
        }
        let resume = if refill {
            // With no active channel too: a data loss must still raise the counter, for the
            // clients that come back later.
            self.refill(&channels).await?
        } else {
            // The first connection: from now on, the floor's disappearance is a sign of loss.
            let (_, floor) = self.history.raise(0).await?;
            self.floor_seen = Some(floor);
            self.run_id = self.history.run_id().await;
            Resume::default()
        };
        self.dispatch.send(Dispatch::Resume(resume));
        Ok(())
    }

    /// What was published on the active channels after the last id this process saw. A
    /// counter below an id this process knew (dispatched, or a stream's starting counter), or a
    /// floor gone or lower than this process last read, means Redis lost its data: then the
    /// counter is raised past every id this process knew, and every retained event is new. A
    /// floor that another process raised means the same loss, already raised.
    async fn refill(&mut self, channels: &[Arc<str>]) -> Result<Resume, BrokerError> {
        let last = self.dispatch.delivered();
        let known = last.max(self.counter_seen.load(Relaxed));
        // From a window before the last id delivered: an event a racing gem publisher
        // published late, while this connection was down, is still offered (each connection
        // delivers what it has not, see `seen`).
        let from = last.saturating_sub(LATE_WINDOW);
        let mut snap = self.history.snapshot(channels, Some(from), 0).await?;
        if snap.malformed > 0 {
            self.metrics.malformed.inc_by(snap.malformed);
        }
        let counter = snap.counter.unwrap_or(0);
        let floor_gone = match (self.floor_seen, snap.floor) {
            (Some(_), None) => true,
            (Some(seen), Some(floor)) => floor < seen,
            (None, _) => false,
        };
        // Only a restarted Redis can have come back from an older save; on the same server (a
        // lost connection, a partition) an event missing from history is a gem publisher's
        // `ZADD` still on its way, not a loss.
        let run_id = self.history.run_id().await;
        let restarted = match (&self.run_id, &run_id) {
            (Some(before), Some(now)) => before != now,
            _ => true,
        };
        let replaced = if counter < known || floor_gone || !restarted {
            None
        } else {
            self.newest_gone().await?
        };
        if let Some(why) = &replaced {
            tracing::warn!(
                "{why}: Redis lost writes it had acknowledged (back from an older save?)"
            );
        }
        let raise = counter < known || floor_gone || replaced.is_some();
        let reset = raise || (self.floor_seen.is_some() && snap.floor != self.floor_seen);
        let mut raised = counter;
        if reset {
            if raise {
                (raised, _) = self.history.raise(known).await?;
            }
            // Read again past any counter, which returns every retained event.
            snap = self
                .history
                .snapshot(channels, Some(MAX_EVENT_ID), 0)
                .await?;
        }
        let missed = if reset {
            Vec::new()
        } else {
            (0..channels.len())
                .filter(|&i| channel_may_have_lost(last, i, &snap, self.history_size))
                .map(|i| channels[i].clone())
                .collect()
        };
        let mut events: Vec<(Arc<str>, Frame)> = channels
            .iter()
            .zip(snap.channels)
            .flat_map(|(name, h)| h.events.into_iter().map(move |f| (name.clone(), f)))
            .collect();
        events.sort_by_key(|(_, f)| f.id);
        if reset {
            let floor = snap.floor.unwrap_or(0);
            tracing::warn!(
                counter,
                known,
                raised_to = raise.then_some(raised),
                floor,
                "redis lost its data: streams get missedevents, new ids start above the floor"
            );
            // Only now that the refill is read: if a read above failed, the next attempt must
            // still see the old marks, or it would not know of the reset (a second raise for
            // the same loss finds the floor above `known` and changes nothing). From here the
            // new ids are the ones to compare with.
            self.counter_seen
                .store(raised.max(snap.counter.unwrap_or(0)), Relaxed);
            self.floor_seen = Some(floor);
            // The events known before the loss are not to be looked for again.
            self.dispatch.newest().clear();
            self.published.clear();
        }
        // Only now that the refill is read (as for the marks above).
        self.run_id = run_id;
        Ok(Resume {
            events,
            missed,
            reset,
            ..Resume::default()
        })
    }

    /// Whether Redis no longer holds, as they were, the newest event the dispatcher delivered
    /// or the newest published here: another event under its id, or no event under it in a
    /// history that should still have it (no recorded trim removed it, and it is not older than
    /// every retained entry). A Redis back from an older save loses the writes made after it;
    /// when publishers elsewhere then take the counter past every id this process knew before
    /// its subscriber is back, the counter looks right, but the ids were given again: only the
    /// events themselves show it. The delivered one does not move during the outage (live
    /// events are held); the published one may have been overtaken by a publish made here
    /// after Redis came back, and then shows nothing. (A gem publisher stopped between its
    /// `PUBLISH` and its `ZADD` looks the same: a loss for whoever missed the `PUBLISH`.)
    async fn newest_gone(&self) -> Result<Option<String>, BrokerError> {
        let delivered = self.dispatch.newest().get();
        let published = self.published.get();
        for newest in [delivered, published].into_iter().flatten() {
            if let Some(why) = self.gone(&newest).await? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// Whether `newest` is gone from Redis (see [`Subscriber::newest_gone`]).
    async fn gone(&self, newest: &Newest) -> Result<Option<String>, BrokerError> {
        let channel: Arc<str> = newest.channel.as_str().into();
        let snap = self
            .history
            .snapshot(&[channel], Some(newest.id - 1), 0)
            .await?;
        let Some(history) = snap.channels.first() else {
            return Ok(None);
        };
        let name = Escaped(newest.channel.as_bytes());
        Ok(match history.events.iter().find(|f| f.id == newest.id) {
            Some(f) if f.bytes == newest.bytes => None,
            Some(_) => Some(format!(
                "the event {} of {name} is another event now",
                newest.id
            )),
            None if history.trimmed >= newest.id
                || history.oldest.is_some_and(|o| o > newest.id) =>
            {
                None
            }
            None => Some(format!("the event {} of {name} is gone", newest.id)),
        })
    }

    /// The connected loop: subscription changes, barriers and the PING watchdog.
    async fn serve(
        &mut self,
        con: &mut MultiplexedConnection,
        lost: &Notify,
        active: &mut HashSet<Arc<str>>,
        barriers: &mut Vec<Ready>,
    ) -> Exit {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(first) = cmd else { return Exit::Stop };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH
                        && let Ok(cmd) = self.commands.try_recv()
                    {
                        batch.push(cmd);
                    }
                    if let Err(e) = self.apply(con, batch, active, barriers).await {
                        return Exit::Lost(e.to_string());
                    }
                }
                _ = ping.tick() => {
                    if let Some(why) = self.primary_moved().await {
                        return Exit::Lost(why);
                    }
                    // The watchdog's command reads the counter: a reply proves the connection
                    // alive, and the reading keeps live ids' plausibility check current.
                    // What this process knew before the reading: a publish or a stream's read
                    // that ends meanwhile may raise it past the counter the reading saw.
                    let known = self.counter_seen.load(Relaxed);
                    let pong = tokio::time::timeout(self.ping_timeout, read_marks(con));
                    match pong.await {
                        Ok(Ok(marks)) => {
                            if let Some(why) = self.lost_data(&marks, known) {
                                // Handled as after a lost connection: the refill raises the
                                // counter and tells the streams.
                                return Exit::Lost(format!("redis lost its data: {why}"));
                            }
                            self.counter_seen
                                .fetch_max(marks.counter.unwrap_or(0), Relaxed);
                        }
                        Ok(Err(e)) => return Exit::Lost(format!("watchdog GET failed: {e}")),
                        Err(_) => return Exit::Lost("watchdog GET timed out".into()),
                    }
                }
                _ = lost.notified() => return Exit::Lost("disconnected".into()),
            }
        }
    }
}

impl Subscriber {
    /// Through Sentinel, whether the sentinels now name another primary than the one this
    /// connection is to (a switch-over leaves the old one up, accepting writes, until it is
    /// demoted): then the subscriber starts over there. Asks them at most every
    /// `primary::RECHECK` (the streams' commands ask too, and share the answer).
    async fn primary_moved(&self) -> Option<String> {
        if !self.primary.moves() {
            return None;
        }
        let connected = self.connected.clone();
        // A cheap call when the answer is fresh: it only asks when it is not.
        let _ = self.streams_commands.get().await;
        let named = self.streams_commands.addr();
        if named.is_some() && named != connected {
            Some(format!(
                "Sentinel names another primary: {}",
                named.unwrap_or_default()
            ))
        } else {
            None
        }
    }

    /// Applies a batch of queued commands in order: consecutive subscriptions go as one
    /// `SUBSCRIBE` (consecutive removals as one `UNSUBSCRIBE`), so that a burst of new streams
    /// costs a few round trips rather than two each; then one PING answers every barrier of the
    /// batch. Its reply follows every message Redis pushed before it, and the answers go through
    /// the dispatcher, so a barrier is answered once those messages reached the connections. A
    /// barrier answered after later changes too is still correct: what it waits for is in effect.
    /// On failure, the changes are recorded for the resubscription and the barriers wait for the
    /// reconnection.
    async fn apply(
        &mut self,
        con: &mut MultiplexedConnection,
        batch: Vec<SubCommand>,
        active: &mut HashSet<Arc<str>>,
        barriers: &mut Vec<Ready>,
    ) -> redis::RedisResult<()> {
        let mut waiting = Vec::new();
        let mut run: Vec<Arc<str>> = Vec::new();
        let mut run_subscribes = true;
        let mut failed = None;
        for cmd in batch {
            if failed.is_some() {
                record(cmd, active, barriers);
                continue;
            }
            let (ch, subscribe) = match cmd {
                // One Redis serves every channel: a barrier waits for all.
                SubCommand::Barrier { tx, .. } => {
                    waiting.push(tx);
                    continue;
                }
                SubCommand::Subscribe(ch) => (ch, true),
                SubCommand::Unsubscribe(ch) => (ch, false),
            };
            if subscribe != run_subscribes || run.len() >= SUBSCRIBE_CHUNK {
                if let Err(e) = send_run(con, &run, run_subscribes).await {
                    failed = Some(e);
                }
                run.clear();
                run_subscribes = subscribe;
            }
            if subscribe {
                active.insert(ch.clone());
            } else {
                active.remove(&ch);
            }
            run.push(ch);
        }
        if failed.is_none()
            && let Err(e) = send_run(con, &run, run_subscribes).await
        {
            failed = Some(e);
        }
        if failed.is_none()
            && !waiting.is_empty()
            && let Err(e) = redis::cmd("PING").query_async::<Value>(con).await
        {
            failed = Some(e);
        }
        if let Some(e) = failed {
            barriers.extend(waiting);
            return Err(e);
        }
        let at = Instant::now();
        for tx in waiting {
            self.dispatch.send(Dispatch::Barrier { tx, at });
        }
        Ok(())
    }
}

/// Sends a PING on a command connection that may still hold the socket of a Redis that went
/// away, in a task of its own: a failed PING makes the manager connect again, and a second one
/// waits for that connection, so that the next command finds it ready.
fn wake_up(mut con: ConnectionManager) {
    tokio::spawn(async move {
        for _ in 0..2 {
            if redis::cmd("PING")
                .query_async::<Value>(&mut con)
                .await
                .is_ok()
            {
                return;
            }
        }
    });
}

/// Reads the counter and the data-loss floor (which also proves the connection alive); a value
/// that is not a number reads as none.
async fn read_marks(con: &mut MultiplexedConnection) -> redis::RedisResult<Marks> {
    let (counter, floor): (Option<String>, Option<String>) = redis::cmd("MGET")
        .arg(super::COUNTER_KEY)
        .arg(super::FLOOR_KEY)
        .query_async(con)
        .await?;
    let number = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
    Ok(Marks {
        counter: number(counter),
        floor: number(floor),
    })
}

/// Sends one run of subscriptions or removals (nothing when empty).
async fn send_run(
    con: &mut MultiplexedConnection,
    channels: &[Arc<str>],
    subscribe: bool,
) -> redis::RedisResult<()> {
    if channels.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = channels.iter().map(|c| &**c).collect();
    if subscribe {
        con.subscribe(names).await
    } else {
        con.unsubscribe(names).await
    }
}

/// Applies a subscription change while no connection is up.
fn record(cmd: SubCommand, active: &mut HashSet<Arc<str>>, barriers: &mut Vec<Ready>) {
    match cmd {
        SubCommand::Subscribe(ch) => {
            active.insert(ch);
        }
        SubCommand::Unsubscribe(ch) => {
            active.remove(&ch);
        }
        SubCommand::Barrier { tx, .. } => {
            // A stream that waited and left has dropped its receiver: its barrier is forgotten,
            // so that through an outage with clients coming and going only the barriers of
            // streams still waiting are kept (pruned at each doubling: amortized O(1)).
            if barriers.len() >= 64 && barriers.len().is_power_of_two() {
                barriers.retain(|b| !b.is_closed());
            }
            barriers.push(tx);
        }
    }
}

/// Runs on the Redis connection's task: must never block.
fn forward_push(
    push: PushInfo,
    dispatch: &DispatchSender,
    metrics: &Metrics,
    counter_seen: &AtomicU64,
    lost: &Notify,
) {
    match push.kind {
        PushKind::Message => {
            let mut data = push.data.into_iter();
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (data.next(), data.next())
            else {
                return;
            };
            let channel = match String::from_utf8(channel) {
                Ok(channel) => channel,
                Err(e) => {
                    metrics.malformed.inc();
                    tracing::warn!(
                        channel = %Escaped(e.as_bytes()),
                        "skipping a pub/sub message on a channel whose name is not UTF-8"
                    );
                    return;
                }
            };
            match parse_stored(payload) {
                Ok((id, bytes)) => {
                    // Only what Redis's counter said: an accepted id (even a lie within the
                    // lead) must not raise the bound the next one is checked against.
                    let known = counter_seen.load(Relaxed);
                    if id > known.saturating_add(MAX_ID_LEAD) {
                        metrics.malformed.inc();
                        tracing::warn!(
                            channel = %Escaped(channel.as_bytes()),
                            id,
                            counter = known,
                            "skipping a pub/sub message whose id is far past the id counter"
                        );
                        return;
                    }
                    let frame = Frame::live(id, bytes);
                    dispatch.send(Dispatch::Live { channel, frame });
                }
                Err((why, payload)) => {
                    metrics.malformed.inc();
                    tracing::warn!(
                        channel = %Escaped(channel.as_bytes()),
                        reason = %why,
                        payload = %Escaped(&payload),
                        "skipping a pub/sub message that is not one SSE event"
                    );
                }
            }
        }
        PushKind::Disconnection => lost.notify_one(),
        _ => {}
    }
}
