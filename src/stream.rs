//! Opening a stream: register, wait for the broker, replay, then go live.
//!
//! The response (200 and the headers) goes out at once. A setup task registers the connection
//! (so live events start to buffer), waits until the broker has the subscriptions, reads the
//! counter and history in one atomic snapshot, and hands the replay plan to the connection,
//! which merges it with the buffered live events by id. A stream without a position that
//! received live events meanwhile is planned as a resume from just before the first of them;
//! after a reset (Redis lost its data) the plan is made again from a new snapshot. During a
//! Redis outage the task waits and retries, and the stream meanwhile gets heartbeats, so a
//! browser is never sent a 503. A plan larger than one page, or a stream whose buffer of live
//! events overflowed while it waited (the refill after an outage), is replayed in pages
//! (`replay`).

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::compound;
use crate::conn::{Conn, Started};
use crate::event::{LastEventId, MAX_EVENT_ID, retry_text};
use crate::headers::stream_headers;
use crate::history::Snapshot;
use crate::hub::{NotRegistered, Registration};
use crate::instance::Shared;
use crate::logtext::EscapedList;
use crate::metrics::Refusal;
use crate::refusal::Refused;
use crate::replay::{Pages, page_budget, replay_pages};
use crate::resume::plan;
use crate::sse::SseBody;
use crate::transport::{SlowWatch, StreamHandle, StreamSink};

/// What a stream asks for once the request is accepted.
pub(crate) struct StreamSpec {
    pub channels: Vec<Arc<str>>,
    pub polling: bool,
    pub last: LastEventId,
    /// The position's text when it is not a plain number (a compound position, `compound`).
    pub last_text: Option<Box<str>>,
    /// When the grant ends (the stream is then ended with a `retry:`).
    pub expires: Option<std::time::SystemTime>,
    /// Where the server that writes the response takes the stream's handle, if it asked.
    pub sink: Option<StreamSink>,
}

/// The headers of every stream.
pub(crate) fn stream_response(body: SseBody) -> Response<SseBody> {
    let mut res = Response::new(body);
    res.headers_mut().extend(stream_headers());
    res
}

/// "Come back later" with a jittered `retry:` (see [`Refused::come_back_later`]); `limit` when
/// the connection limit is the reason.
fn come_back_later(
    shared: &Shared,
    id: u64,
    limit: Option<(Refusal, String)>,
) -> Response<SseBody> {
    let retry = retry_text(shared.retry_millis(id));
    Refused::come_back_later(retry, limit)
        .respond(&shared.metrics)
        .map(SseBody::full)
}

/// Opens the stream, or answers "come back later" (200 with `retry:`) when full or closing.
pub(crate) fn open(shared: &Arc<Shared>, spec: StreamSpec) -> Response<SseBody> {
    let hub = &shared.hub;
    let id = hub.next_conn_id();
    let limit = shared.config.max_connections;
    if hub.connections() >= limit {
        let why = format!("connection limit reached ({limit} streams)");
        return come_back_later(shared, id, Some((Refusal::MaxConnections, why)));
    }
    if shared.broker.per_channel_ids() {
        return open_group(shared, spec, id);
    }
    let channels: Box<[Arc<str>]> = spec.channels.into();
    let conn = Conn::until(id, channels, shared.config.max_queue_bytes, spec.expires);
    // One span per connection (never per event): its logs carry the id and channel count.
    let span = tracing::info_span!("sse", conn = id, channels = conn.channels.len());
    match hub.register(&conn, &conn.channels) {
        Ok(()) => {}
        Err(NotRegistered::Closing) => return come_back_later(shared, id, None),
        Err(NotRegistered::Full { max }) => {
            let why = format!("subscription limit reached ({max} channel subscriptions)");
            return come_back_later(shared, id, Some((Refusal::MaxSubscriptions, why)));
        }
    }
    if shared.config.verbose {
        let names = EscapedList(&conn.channels);
        span.in_scope(|| tracing::info!("Subscribing to {names}"));
    }
    let reg = Registration {
        hub: hub.clone(),
        conn: conn.clone(),
    };
    let handle = StreamHandle::new(conn.clone());
    let starting = Starting::new(shared);
    tokio::spawn(setup(shared.clone(), conn, spec.last, starting).instrument(span.clone()));
    let polling = spec.polling.then_some(shared.config.polling_delay);
    with_handle(
        stream_response(SseBody::stream(reg, polling, span)),
        handle,
        spec.sink,
    )
}

/// Leaves the stream's handle where its server takes it: in the server's sink, else in the
/// response's extensions (see `transport`).
fn with_handle(
    mut res: Response<SseBody>,
    handle: StreamHandle,
    sink: Option<StreamSink>,
) -> Response<SseBody> {
    match sink {
        Some(sink) => sink.put(handle),
        None => {
            res.extensions_mut().insert(handle);
        }
    }
    res
}

/// Opens a stream whose ids are per channel (a Redis Cluster): one connection per channel, in
/// the bytewise order of their names, each registered, set up and replayed on its own from its
/// own position, and one body that merges them and writes the compound `id:` (see `compound`
/// and `sse`). The first connection is the stream's (`id`), the others its parts.
fn open_group(shared: &Arc<Shared>, spec: StreamSpec, id: u64) -> Response<SseBody> {
    let hub = &shared.hub;
    let sorted = compound::sorted(&spec.channels);
    let lasts = compound::positions(spec.last, spec.last_text.as_deref(), &sorted);
    let span = tracing::info_span!("sse", conn = id, channels = sorted.len());
    let conns: Vec<Arc<Conn>> = sorted
        .iter()
        .enumerate()
        .map(|(i, channel)| {
            let conn_id = if i == 0 { id } else { hub.next_conn_id() };
            Conn::per_channel(
                conn_id,
                channel.clone(),
                shared.config.max_queue_bytes,
                spec.expires,
                i > 0,
            )
        })
        .collect();
    // All or none: a refusal leaves nothing registered.
    match hub.register_all(&conns) {
        Ok(()) => {}
        Err(NotRegistered::Closing) => return come_back_later(shared, id, None),
        Err(NotRegistered::Full { max }) => {
            let why = format!("subscription limit reached ({max} channel subscriptions)");
            return come_back_later(shared, id, Some((Refusal::MaxSubscriptions, why)));
        }
    }
    let regs: Vec<Registration> = conns
        .into_iter()
        .map(|conn| Registration {
            hub: hub.clone(),
            conn,
        })
        .collect();
    if shared.config.verbose {
        let names = EscapedList(&sorted);
        span.in_scope(|| tracing::info!("Subscribing to {names}"));
    }
    let seqs = lasts
        .iter()
        .map(|l| match l {
            LastEventId::At(s) => *s,
            _ => 0,
        })
        .collect();
    // One stream starting, however many of its connections' setups still run.
    let starting = Starting::new(shared);
    for (reg, last) in regs.iter().zip(lasts) {
        let setup = setup(shared.clone(), reg.conn.clone(), last, starting.clone());
        tokio::spawn(setup.instrument(span.clone()));
    }
    drop(starting);
    let conns: Vec<Arc<Conn>> = regs.iter().map(|r| r.conn.clone()).collect();
    let handle = StreamHandle::new(Arc::new(GroupWatch(conns)));
    let polling = spec.polling.then_some(shared.config.polling_delay);
    let hash = compound::list_hash(&sorted);
    let body = SseBody::group(regs, hash, seqs, polling, span);
    with_handle(stream_response(body), handle, spec.sink)
}

/// A stream of several connections falls behind when any of them does.
struct GroupWatch(Vec<Arc<Conn>>);

impl SlowWatch for GroupWatch {
    fn poll_slow(&self, cx: &mut std::task::Context<'_>) -> bool {
        // Every part is asked, so that each one wakes `cx` when it becomes slow.
        let mut slow = false;
        for conn in &self.0 {
            slow |= conn.poll_slow(cx);
        }
        slow
    }

    fn is_finished(&self) -> bool {
        self.0.iter().all(|c| c.is_finished())
    }
}

/// A stream without a position starts at the counter its snapshot read, unless it already
/// received live events while it was being set up: they were published after it connected, so
/// they are new to the client, and the stream is planned as a resume from just before the first
/// of them (history then brings every event of its channels after that point, including those
/// of channels whose subscription became active later). Events published before the snapshot
/// are first flushed to the connection, so that none of them arrives after the stream started
/// with an id below its position.
async fn from_first_live(
    shared: &Shared,
    conn: &Conn,
    channels: &[Arc<str>],
    snapshot: Snapshot,
) -> (LastEventId, Snapshot) {
    shared.broker.flush(channels).await;
    let ready = tokio::time::Instant::now();
    let counter = snapshot.counter.unwrap_or(0);
    let Some(first) = conn.first_buffered() else {
        return (LastEventId::None, snapshot);
    };
    let from = first - 1;
    if from >= counter {
        return (LastEventId::None, snapshot);
    }
    match shared
        .broker
        .snapshot(
            channels,
            Some(from),
            page_budget(shared.config.max_queue_bytes),
            ready,
        )
        .await
    {
        Ok(again) => (LastEventId::At(from), again),
        // Planned from the first snapshot: consistent, the events before the counter are
        // before the client's position.
        Err(_) => (LastEventId::None, snapshot),
    }
}

/// Waits for the broker, reads history and starts the connection. Retries through outages
/// until it succeeds, the stream ends or the client leaves; every wait is raced against the
/// stream's end, so a client that leaves frees its setup (channel list, connection, barrier)
/// at once rather than when the broker comes back.
async fn setup(shared: Arc<Shared>, conn: Arc<Conn>, last: LastEventId, starting: Arc<Starting>) {
    let _starting = starting;
    let _forget = ForgetSetup(conn.clone());
    let ended = conn.clone();
    tokio::select! {
        biased;
        () = ended.ended() => {}
        () = set_up(&shared, &conn, last) => {}
    }
}

/// Counts a stream in the `redisse_streams_starting` gauge while a setup of it runs (shared
/// by the setups of a stream's connections when it has one per channel: the stream counts
/// once, until the last of them ends).
struct Starting(Arc<Shared>);

impl Starting {
    fn new(shared: &Arc<Shared>) -> Arc<Self> {
        shared.metrics.streams_starting.inc();
        Arc::new(Starting(shared.clone()))
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.metrics.streams_starting.dec();
    }
}

/// When a setup ends, its connection forgets the setup task's waker, which would keep the
/// finished task's memory.
struct ForgetSetup(Arc<Conn>);

impl Drop for ForgetSetup {
    fn drop(&mut self) {
        self.0.forget_setup();
    }
}

async fn set_up(shared: &Shared, conn: &Conn, last: LastEventId) {
    let channels = &conn.channels;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    // Set once a snapshot showed the client's position below the data-loss floor.
    let mut below_floor = false;
    loop {
        // The awaits below are boxed: a burst of new streams keeps thousands of these tasks
        // alive at once, and only the part in use should take memory.
        let ready = Box::pin(shared.broker.subscriptions_ready(channels)).await;
        // The client left (the body is gone), or the stream is ending: nothing to set up.
        if conn.is_ending() {
            return;
        }
        // After a reset (Redis lost its data) the client's position is in ids that no longer
        // exist: start as from a position past the counter, with `missedevents` and everything
        // retained. The same for a position below the data-loss floor: it was given before a
        // loss, or is one of the ids given again after it, so events after it may be gone and
        // those published since may have lower ids (docs/history.md).
        let resets = conn.resets();
        let last = if resets > 0 || below_floor {
            LastEventId::At(MAX_EVENT_ID)
        } else {
            last
        };
        let after = match last {
            LastEventId::At(id) => Some(id),
            _ => None,
        };
        let budget = page_budget(shared.config.max_queue_bytes);
        // A shared read must also postdate the last reset, which `resets` already counts.
        let ready = shared.hub.after_last_reset(ready);
        match Box::pin(shared.broker.snapshot(channels, after, budget, ready)).await {
            Ok(snapshot) => {
                if let LastEventId::At(l) = last
                    && l < snapshot.floor.unwrap_or(0)
                {
                    below_floor = true;
                    continue;
                }
                let (last, snapshot) = match last {
                    LastEventId::None => {
                        Box::pin(from_first_live(shared, conn, channels, snapshot)).await
                    }
                    _ => (last, snapshot),
                };
                let page_end = snapshot.page_end;
                let plan = plan(last, snapshot, shared.config.history_size);
                shared.metrics.replayed.inc_by(plan.replay.len() as u64);
                if shared.config.verbose && !plan.replay.is_empty() {
                    tracing::info!("Sending {} history events", plan.replay.len());
                }
                let (preamble, replay) = (plan.preamble, plan.replay);
                let started = match page_end {
                    None => conn.start(preamble, replay, plan.position, resets),
                    Some(end) => conn.start_paged(preamble, replay, plan.position, resets, end),
                };
                match started {
                    Started::Live => return,
                    Started::Paging => {
                        let pages = Pages {
                            broker: &shared.broker,
                            metrics: &shared.metrics,
                            history_size: shared.config.history_size,
                            budget,
                        };
                        Box::pin(replay_pages(&pages, conn, ready)).await;
                        return;
                    }
                    Started::Stale => {}
                }
                // A reset came while reading: the snapshot may predate it. Read again.
            }
            Err(e) => {
                tracing::warn!(conn = conn.id, error = %e, "cannot read history yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
