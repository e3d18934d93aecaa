//! Concurrent publishers while clients connect, disconnect and resume with `Last-Event-ID`.
//!
//! Several publishing tasks (and on Redis a separate `Publisher::redis`) publish at a high rate on
//! five channels while clients, each on two of them, keep reconnecting from the last id they saw.
//! Every publish is acknowledged with its id, so the test knows every event and its channel, and
//! checks each client's whole history across its connections: ids strictly increase, every event
//! is one of its channels', and between two positions (an event or a `lastEventId` event) no event
//! of its channels is missing unless `missedevents` came in between. At the end each client has
//! caught up with the last event of its channels.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::on_both_brokers;
use crate::support::sse::Next;
use crate::support::{Backend, PATIENCE, TestServer};

on_both_brokers!(clients_resuming_under_concurrent_publishers_miss_nothing);

const CHANNELS: usize = 5;
const CLIENTS: usize = 6;
const PUBLISHING: Duration = Duration::from_secs(2);
/// Small enough that a client away for a while may find its channel trimmed.
const HISTORY: usize = 200;

/// What a client saw, in order, across all its connections.
#[derive(Debug)]
enum Seen {
    /// A new connection, with the `Last-Event-ID` it sent.
    Connect(Option<u64>),
    Event {
        id: u64,
        data: String,
    },
    LastEventId(u64),
    Missed,
}

fn channel(i: usize) -> String {
    format!("ch{i}")
}

/// A tiny deterministic generator, so each client has its own rhythm.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Publishes on `ch` until `stop`; returns the acknowledged ids.
fn spawn_publisher(
    publisher: redisse::Publisher,
    ch: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0u64;
        while !stop.load(Relaxed) {
            let data = format!("{ch}/{n}");
            let id = publisher
                .publish(&ch, redisse::Event::message(data))
                .await
                .expect("publish");
            acked.push(id);
            n += 1;
            if n.is_multiple_of(32) {
                sleep(Duration::from_millis(1)).await;
            }
        }
        acked
    })
}

/// Every acknowledged event and its channel, once publishing is over.
type Published = Arc<BTreeMap<u64, String>>;

/// One client: connects, reads for a while, leaves, and resumes from the last id it saw, until
/// publishing is over; then it reads until it has the newest event of its channels.
fn spawn_client(
    server: Arc<TestServer>,
    k: usize,
    over: tokio::sync::watch::Receiver<Option<Published>>,
) -> tokio::task::JoinHandle<(Vec<Seen>, usize)> {
    tokio::spawn(async move {
        let [one, two] = channels_of(k);
        let path = format!("/?{one}&{two}");
        let mut rng = Lcg(k as u64 + 1);
        let mut seen = Vec::new();
        let mut last: Option<u64> = None;
        let mut connections = 0;
        loop {
            let target = over.borrow().as_ref().map(|p| newest_of(k, p));
            let done = target.is_some();
            let header = last.map(|l| l.to_string());
            let headers: Vec<(&str, &str)> = header
                .as_deref()
                .map(|l| ("last-event-id", l))
                .into_iter()
                .collect();
            let mut s = server.stream(&path, &headers).await;
            assert_eq!(s.status, 200);
            seen.push(Seen::Connect(last));
            connections += 1;
            let until = if done {
                Instant::now() + PATIENCE
            } else {
                Instant::now() + Duration::from_millis(20 + rng.below(200))
            };
            loop {
                if target.is_some_and(|t| last.is_some_and(|l| l >= t)) {
                    return (seen, connections);
                }
                // The first connection waits for its lastEventId event, whatever its rhythm.
                let wait = match last {
                    None => PATIENCE,
                    Some(_) => until.saturating_duration_since(Instant::now()),
                };
                match s.next_within(wait).await {
                    Next::Event(e) => {
                        let id = e.id.as_deref().map(|i| i.parse::<u64>().expect("id"));
                        match (e.event.as_str(), id) {
                            ("missedevents", None) => seen.push(Seen::Missed),
                            ("lastEventId", Some(id)) => {
                                seen.push(Seen::LastEventId(id));
                                last = Some(id);
                            }
                            ("message", Some(id)) => {
                                seen.push(Seen::Event { id, data: e.data });
                                last = Some(id);
                            }
                            other => panic!("client {k}: unexpected event {other:?}"),
                        }
                    }
                    Next::Closed => break,
                    Next::Timeout if done => {
                        panic!("client {k} did not catch up: last {last:?}, target {target:?}")
                    }
                    Next::Timeout => break,
                }
            }
            drop(s);
            sleep(Duration::from_millis(rng.below(10))).await;
        }
    })
}

fn channels_of(k: usize) -> [String; 2] {
    [channel(k % CHANNELS), channel((k + 2) % CHANNELS)]
}

/// The newest event of client `k`'s channels (0 when none).
fn newest_of(k: usize, published: &BTreeMap<u64, String>) -> u64 {
    let mine = channels_of(k);
    published
        .iter()
        .rev()
        .find(|(_, c)| mine.contains(c))
        .map_or(0, |(id, _)| *id)
}

/// Checks one client's history against every acknowledged event.
fn check_client(k: usize, seen: &[Seen], published: &BTreeMap<u64, String>) -> usize {
    let mine = channels_of(k);
    let is_mine = |id: &u64| published.get(id).is_some_and(|c| mine.contains(c));
    // A fresh stream starts with the lastEventId hint, or, when it received live events while
    // it was being set up, with those events (its position is just before the first).
    let (mut pos, rest) = match seen.get(..2) {
        Some([Seen::Connect(None), Seen::LastEventId(p)]) => (*p, &seen[2..]),
        Some([Seen::Connect(None), Seen::Event { id, .. }]) => (id - 1, &seen[1..]),
        other => panic!("client {k}: a fresh stream starts with lastEventId, got {other:?}"),
    };
    // Where the current connection started, for the failure messages.
    let mut connected = (1, None);
    // After `missedevents`, a channel may have lost events older than the first of its events
    // that follows (its history is a contiguous run of its newest events), and no others.
    let mut forgiven: Vec<&str> = Vec::new();
    let mut missed = 0;
    let mut events = 0;
    for item in rest {
        let next = match item {
            Seen::Connect(last) => {
                connected = (connected.0 + 1, *last);
                continue;
            }
            Seen::Missed => {
                forgiven = mine.iter().map(|c| c.as_str()).collect();
                missed += 1;
                continue;
            }
            Seen::LastEventId(c) => {
                assert!(
                    *c >= pos,
                    "client {k}: lastEventId {c} before position {pos}"
                );
                *c
            }
            Seen::Event { id, data } => {
                assert!(
                    *id > pos,
                    "client {k}: id {id} after {pos}: duplicate or out of order"
                );
                let ch = published
                    .get(id)
                    .unwrap_or_else(|| panic!("client {k}: unknown id {id}"));
                assert!(mine.contains(ch), "client {k}: id {id} is {ch}'s");
                assert!(
                    data.starts_with(&format!("{ch}/")),
                    "client {k}: data {data} for {id}"
                );
                events += 1;
                *id
            }
        };
        if next > pos + 1 {
            let gap: Vec<u64> = published
                .range(pos + 1..next)
                .filter(|(_, c)| !forgiven.contains(&c.as_str()))
                .map(|(id, _)| *id)
                .filter(is_mine)
                .collect();
            assert!(
                gap.is_empty(),
                "client {k}: events {gap:?} between {pos} and {next} never arrived and no missedevents \
                 (connection {}, resumed from {:?})",
                connected.0,
                connected.1
            );
        }
        if let Seen::Event { id, .. } = item {
            forgiven.retain(|c| *c != published[id]);
        }
        pos = next;
    }
    assert!(pos >= newest_of(k, published), "client {k} caught up");
    assert!(events > 50, "client {k} saw {events} events");
    missed
}

async fn clients_resuming_under_concurrent_publishers_miss_nothing(backend: Backend) {
    run(backend, false).await;
}

/// The same while the server's pub/sub connection is killed (`CLIENT KILL TYPE pubsub`) again
/// and again: streams are live, in replay, or waiting for the subscriber at each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resuming_while_the_subscriber_is_killed_miss_nothing() {
    run(Backend::redis(), true).await;
}

async fn run(backend: Backend, kill_subscriber: bool) {
    let mut config = backend.config();
    config.history_size = HISTORY;
    let server = Arc::new(TestServer::start(config).await);
    // The counter exists before the first client, so each starts with a lastEventId event.
    server.publish("test.warmup", "warmup", "").await;

    let stop_publishing = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for i in 0..CHANNELS {
        let publisher = match &backend {
            // One publisher outside the server process, as another application would be.
            Backend::Redis(r) if i == CHANNELS - 1 => {
                redisse::Publisher::redis_with_history(&r.url(), HISTORY).expect("publisher")
            }
            _ => server.redisse.publisher(),
        };
        publishers.push((
            channel(i),
            spawn_publisher(publisher, channel(i), stop_publishing.clone()),
        ));
    }
    let (over_tx, over_rx) = tokio::sync::watch::channel(None);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| spawn_client(server.clone(), k, over_rx.clone()))
        .collect();

    if kill_subscriber {
        let redis = backend.redis_server();
        let deadline = Instant::now() + PUBLISHING;
        let mut kills = 0;
        while Instant::now() < deadline {
            sleep(Duration::from_millis(200)).await;
            kills += tokio::task::block_in_place(|| redis.kill_pubsub_clients());
        }
        assert!(kills >= 5, "{kills} pub/sub connections killed");
    } else {
        sleep(PUBLISHING).await;
    }
    stop_publishing.store(true, Relaxed);
    let mut published = BTreeMap::new();
    for (ch, task) in publishers {
        let acked = task.await.expect("publisher task");
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "{ch}: ids go up");
        assert!(acked.len() > 100, "{ch}: published {}", acked.len());
        for id in acked {
            assert!(
                published.insert(id, ch.clone()).is_none(),
                "id {id} given twice"
            );
        }
    }
    let published = Arc::new(published);
    over_tx.send_replace(Some(published.clone()));

    let mut missed = 0;
    let mut reconnections = 0;
    for (k, client) in clients.into_iter().enumerate() {
        let (seen, connections) = client.await.expect("client task");
        missed += check_client(k, &seen, &published);
        reconnections += connections - 1;
    }
    assert!(
        reconnections >= CLIENTS * 3,
        "clients reconnected {reconnections} times"
    );
    eprintln!(
        "{} events published, {reconnections} reconnections, {missed} missedevents",
        published.len()
    );
}
