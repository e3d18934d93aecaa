//! Many `redisse` processes on one Redis, the way to scale connections (docs/operations.md,
//! "Scaling connections: many processes"): three binaries on one private Redis, clients spread
//! over them and publishers publishing through all three at once; a client that resumes on
//! another process than the one it left, with history holding what it missed or not; a process
//! killed under its clients, who move to the others; and Redis restarted under all three, with
//! its data and empty.
//!
//! A client here behaves as a browser's `EventSource`: it keeps the id of the last event it got
//! (or of the `lastEventId` event) and comes back with it as `Last-Event-ID`, to whichever
//! process it is sent. What it got, across all its connections, is checked against what the
//! publishers were answered: every event of its channels published since it started, once, in
//! id order, and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::support::binary::Redisse;
use crate::support::sse::Next;
use crate::support::steps::{blocking, id_of, numsub, wait_until};
use crate::support::{PATIENCE, RedisServer, SseEvent, SseStream};

/// The longest a test of this module may take, whatever hangs.
const LIMIT: Duration = Duration::from_secs(120);

/// How long a stream that got everything is watched for one more event.
const QUIET: Duration = Duration::from_millis(300);

/// An acknowledged publish: its id and its channel.
type Published = (u64, &'static str);

/// Runs a test's body within [`LIMIT`].
async fn within_limit(body: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"));
}

/// Three `redisse` processes on `redis`, each keeping `history` events per channel, and an
/// event published through the first so that the counter exists (a fresh stream then starts
/// with `lastEventId`).
async fn three_processes(redis: &RedisServer, history: usize) -> Vec<Arc<Redisse>> {
    three_processes_with(redis, history, &[]).await
}

/// [`three_processes`] with options of the test's own.
async fn three_processes_with(
    redis: &RedisServer,
    history: usize,
    extra: &[&str],
) -> Vec<Arc<Redisse>> {
    let url = redis.url();
    let history = history.to_string();
    let mut args = vec!["--redis", url.as_str(), "--history-size", history.as_str()];
    args.extend_from_slice(extra);
    let processes: Vec<_> = blocking(|| (0..3).map(|_| Arc::new(Redisse::start(&args))).collect());
    for p in &processes {
        p.health_becomes(200).await;
    }
    processes[0].publish("t.warm", "warmup".into()).await;
    processes
}

/// The counter, read straight from Redis.
fn counter(redis: &RedisServer) -> u64 {
    let n: Option<u64> = redis::cmd("GET")
        .arg("redisse:lastEventId")
        .query(&mut redis.con())
        .expect("GET the counter");
    n.unwrap_or(0)
}

/// The ids of `published` on one of `channels` above `after`, in id order.
fn expected(published: &[Published], channels: &[&str], after: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = published
        .iter()
        .filter(|(id, ch)| *id > after && channels.contains(ch))
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

/// Publishes `n` events through `process`'s internal listener, on `channels` in turn
/// (starting at `first`).
async fn publish_n(
    process: &Redisse,
    channels: &[&'static str],
    first: usize,
    n: usize,
) -> Vec<Published> {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let channel = channels[(first + i) % channels.len()];
        let id = process.publish_event(channel, None, &format!("{i}")).await;
        acked.push((id, channel));
    }
    acked
}

/// Publishes through `process`'s internal listener, on `channels` in turn, a couple of
/// milliseconds apart, until `stop`; the acknowledged publishes. A publish that fails fails the
/// task (its join), and so the test.
fn spawn_publisher(
    process: Arc<Redisse>,
    channels: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Published>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0;
        while !stop.load(Relaxed) {
            acked.extend(publish_n(&process, channels, n, 1).await);
            n += 1;
            sleep(Duration::from_millis(2)).await;
        }
        acked
    })
}

/// Stops the publishers and gathers what they published, one list per publisher.
async fn stop_publishers(
    stop: &AtomicBool,
    publishers: Vec<JoinHandle<Vec<Published>>>,
) -> Vec<Vec<Published>> {
    stop.store(true, Relaxed);
    join_all(publishers)
        .await
        .into_iter()
        .map(|r| r.expect("a publisher failed"))
        .collect()
}

/// A client that comes back with the last id it got, to any process.
struct Client {
    name: String,
    channels: Vec<&'static str>,
    stream: Option<SseStream>,
    /// The position it started from: the `lastEventId` of its first stream.
    start: u64,
    /// The id of the last event it got, or of the last `lastEventId` event.
    position: u64,
    /// The ids of the events it got, across its connections.
    got: Vec<u64>,
    /// Where each `missedevents` it was sent came: how many events it had got before.
    missed_at: Vec<usize>,
    /// The streams it opened.
    connections: usize,
}

impl Client {
    /// A client without a position on `channels`, connected to `to` and live: its first event
    /// is `lastEventId`.
    async fn live(name: String, to: &Redisse, channels: &[&'static str]) -> Client {
        let path = format!("/?{}", channels.join("&"));
        let mut stream = SseStream::open(&to.url(&path), &[]).await;
        assert_eq!(stream.status, 200, "{name}: a stream");
        let first = stream.next().await;
        assert_eq!(first.event, "lastEventId", "{name}: the first event");
        let start = id_of(&first);
        Client {
            name,
            channels: channels.to_vec(),
            stream: Some(stream),
            start,
            position: start,
            got: Vec::new(),
            missed_at: Vec::new(),
            connections: 1,
        }
    }

    /// Drops its connection.
    fn disconnect(&mut self) {
        self.stream = None;
    }

    /// Connects again, to `to`, with `Last-Event-ID`.
    async fn reconnect(&mut self, to: &Redisse) {
        self.disconnect();
        let path = format!("/?{}", self.channels.join("&"));
        let position = self.position.to_string();
        let stream = SseStream::open(&to.url(&path), &[("last-event-id", &position)]).await;
        assert_eq!(stream.status, 200, "{}: the stream back", self.name);
        self.stream = Some(stream);
        self.connections += 1;
    }

    fn stream(&mut self) -> &mut SseStream {
        self.stream.as_mut().expect("a connected client")
    }

    /// Records an event: an id above its position (never twice, never out of order),
    /// `missedevents`, or the counter's hint.
    fn record(&mut self, e: SseEvent) {
        match e.event.as_str() {
            "missedevents" => {
                assert_eq!(e.id, None, "{}: missedevents has no id", self.name);
                self.missed_at.push(self.got.len());
            }
            "lastEventId" => {
                let id = id_of(&e);
                assert!(
                    id >= self.position,
                    "{}: the counter's hint {id} is below its position {}",
                    self.name,
                    self.position
                );
                self.position = id;
            }
            _ => {
                let Some(id) = e.id.as_deref().and_then(|id| id.parse::<u64>().ok()) else {
                    panic!("{}: an event without an id (a late one): {e:?}", self.name);
                };
                assert!(
                    id > self.position,
                    "{}: event {id} after position {} (twice or out of order); got {:?}",
                    self.name,
                    self.position,
                    self.got
                );
                self.got.push(id);
                self.position = id;
            }
        }
    }

    /// Reads until it got `n` more events.
    async fn read(&mut self, n: usize) {
        let until = self.got.len() + n;
        while self.got.len() < until {
            let e = self.stream().next().await;
            self.record(e);
        }
    }

    /// Reads until its position is `last` or past it.
    async fn read_through(&mut self, last: u64) {
        while self.position < last {
            let e = self.stream().next().await;
            self.record(e);
        }
    }

    /// Reads until the server ends the stream (its process was killed).
    async fn read_until_closed(&mut self) {
        loop {
            match self.stream().next_within(PATIENCE).await {
                Next::Event(e) => self.record(e),
                Next::Closed => return,
                Next::Timeout => panic!("{}: the stream stayed open", self.name),
            }
        }
    }

    /// Fails if anything but a heartbeat comes within [`QUIET`].
    async fn expect_silence(&mut self) {
        let name = self.name.clone();
        match self.stream().next_within(QUIET).await {
            Next::Timeout => {}
            other => panic!("{name}: expected nothing more, got {other:?}"),
        }
    }

    /// Fails unless it got exactly `want`, naming what is missing and what is extra.
    fn check(&self, want: &[u64]) {
        if self.got == want {
            return;
        }
        let missing: Vec<u64> = want
            .iter()
            .filter(|id| !self.got.contains(id))
            .copied()
            .collect();
        let extra: Vec<u64> = self
            .got
            .iter()
            .filter(|id| !want.contains(id))
            .copied()
            .collect();
        panic!(
            "{} (channels {:?}, from {}): got {} events, wanted {}; missing {missing:?}; \
             not its own {extra:?}",
            self.name,
            self.channels,
            self.start,
            self.got.len(),
            want.len()
        );
    }
}

/// Waits until each process has reconnected to Redis once more than `before` (the refill and
/// the loss check of a reconnection are done when it counts) and says 200 on `/health`.
async fn wait_reconnected(processes: &[Arc<Redisse>], before: &[u64]) {
    for (p, before) in processes.iter().zip(before) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while p.metric("redisse_broker_reconnects_total").await <= *before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a process did not reconnect:\n{}",
                p.log()
            );
            sleep(Duration::from_millis(20)).await;
        }
        p.health_becomes(200).await;
    }
}

/// Each process's reconnections so far.
async fn reconnections(processes: &[Arc<Redisse>]) -> Vec<u64> {
    let mut counts = Vec::new();
    for p in processes {
        counts.push(p.metric("redisse_broker_reconnects_total").await);
    }
    counts
}

const SPREAD_CHANNELS: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];

/// Where the spread test publishes: its six channels, and one that no client follows.
const SPREAD_PUBLISHED: [&str; 7] = ["n0", "n1", "n2", "n3", "n4", "n5", "unfollowed"];

/// Client `k`'s channels: two of the six, or three for odd `k`.
fn spread_channels(k: usize) -> Vec<&'static str> {
    let mut channels = vec![SPREAD_CHANNELS[k % 6], SPREAD_CHANNELS[(k + 2) % 6]];
    if k % 2 == 1 {
        channels.push(SPREAD_CHANNELS[(k + 3) % 6]);
    }
    channels
}

/// 30 clients spread round-robin over three processes, each on two or three of six channels;
/// two publishers per process publish at once through its publish API, 180 events in all (on
/// the six channels and one nobody follows). Every client gets exactly the events of its
/// channels, once, in id order; each process serves its ten streams and subscribes once to
/// each channel one of them follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_three_processes_get_each_event_of_their_channels_once() {
    within_limit(async {
        let redis = blocking(RedisServer::start);
        let processes = three_processes(&redis, 10_000).await;
        let mut clients = Vec::new();
        for k in 0..30 {
            let name = format!("client {k} on process {}", k % 3);
            clients.push(Client::live(name, &processes[k % 3], &spread_channels(k)).await);
        }
        for (n, p) in processes.iter().enumerate() {
            assert_eq!(p.metric("redisse_streams_open").await, 10, "process {n}");
        }
        // Redis sends a channel's events once to each process with a stream on it, whatever
        // its number of streams there.
        for channel in SPREAD_PUBLISHED {
            let with_a_stream = (0..3)
                .filter(|&p| {
                    (p..30)
                        .step_by(3)
                        .any(|k| spread_channels(k).contains(&channel))
                })
                .count() as i64;
            assert_eq!(
                blocking(|| numsub(&redis, channel)),
                with_a_stream,
                "subscribers of {channel}"
            );
        }
        let publishes = (0..6).map(|i| publish_n(&processes[i % 3], &SPREAD_PUBLISHED, i, 30));
        let published: Vec<Published> = join_all(publishes).await.concat();
        assert_eq!(published.len(), 180);
        for c in &mut clients {
            let want = expected(&published, &c.channels, c.start);
            c.read_through(*want.last().expect("events on its channels"))
                .await;
            c.check(&want);
            assert!(
                c.missed_at.is_empty(),
                "{}: nothing was lost (missedevents after {:?} events)",
                c.name,
                c.missed_at
            );
        }
        join_all(clients.iter_mut().map(Client::expect_silence)).await;
    })
    .await;
}

/// A client reads part of its stream on process 0, leaves, and comes back with `Last-Event-ID`
/// to process 1, then 2, 0, 2 and 1, while publishers publish through all three: it gets every
/// event of its channels once, in id order, without `missedevents` (history holds them all),
/// and each process it came back to replayed what it missed from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_any_process_while_all_three_publish() {
    within_limit(async {
        let redis = blocking(RedisServer::start);
        let processes = three_processes(&redis, 100_000).await;
        let mut c = Client::live("the client".into(), &processes[0], &["a", "b"]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let publishers = processes
            .iter()
            .map(|p| spawn_publisher(p.clone(), &["a", "b", "z"], stop.clone()))
            .collect();
        // Each time, what was published while it was away comes from history, then live
        // events follow.
        for hop in [1, 2, 0, 2, 1] {
            c.read(25).await;
            c.disconnect();
            sleep(Duration::from_millis(50)).await;
            c.reconnect(&processes[hop]).await;
        }
        c.read(25).await;
        let published = stop_publishers(&stop, publishers).await.concat();
        let want = expected(&published, &c.channels, c.start);
        c.read_through(*want.last().unwrap()).await;
        c.check(&want);
        assert!(
            c.missed_at.is_empty(),
            "history held every event (missedevents after {:?} events)",
            c.missed_at
        );
        c.expect_silence().await;
        for (n, p) in processes.iter().enumerate() {
            let replayed = p.metric("redisse_replayed_events_total").await;
            assert!(replayed > 0, "process {n} replayed nothing");
        }
    })
    .await;
}

/// With a history of 5 events, a client that comes back to another process from an event that
/// history still holds gets what follows without `missedevents`; coming back to a third from
/// an id whose successors were trimmed, it gets `missedevents` first, then the 5 retained
/// events, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_process_past_a_short_history_gets_missedevents() {
    within_limit(async {
        let redis = blocking(RedisServer::start);
        let processes = three_processes(&redis, 5).await;
        let mut c = Client::live("the client".into(), &processes[0], &["a"]).await;
        let mut published = publish_n(&processes[1], &["a"], 0, 3).await;
        c.read(3).await;
        c.disconnect();
        published.extend(publish_n(&processes[2], &["a"], 0, 2).await);
        c.reconnect(&processes[1]).await;
        c.read(2).await;
        assert!(
            c.missed_at.is_empty(),
            "history held both events (missedevents after {:?} events)",
            c.missed_at
        );
        c.check(&expected(&published, &["a"], c.start));
        c.disconnect();
        for i in 0..8 {
            published.extend(publish_n(&processes[[0, 2][i % 2]], &["a"], 0, 1).await);
        }
        c.reconnect(&processes[2]).await;
        let first = c.stream().next().await;
        assert_eq!(first.event, "missedevents", "three events were trimmed");
        c.record(first);
        c.read(5).await;
        let retained: Vec<u64> = published.iter().rev().take(5).rev().map(|p| p.0).collect();
        assert_eq!(c.got[5..], retained, "the five events history holds");
        published.extend(publish_n(&processes[1], &["a"], 0, 1).await);
        c.read(1).await;
        assert_eq!(c.got.last(), published.last().map(|p| &p.0), "a live event");
        assert_eq!(c.missed_at, [5], "once, before the retained events");
        c.expect_silence().await;
    })
    .await;
}

/// Twelve clients on three processes while publishers publish through processes 1 and 2;
/// process 0 is killed (SIGKILL). Its clients see their streams end and come back to the
/// others with `Last-Event-ID`: every client, moved or not, gets every event of its channels
/// once, in id order, without `missedevents`; the publishers went on through the kill without
/// a failure, and the clients of the others never lost their streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_clients_move_to_the_others_and_lose_nothing() {
    within_limit(async {
        let redis = blocking(RedisServer::start);
        let processes = three_processes(&redis, 100_000).await;
        let pairs: [&[&'static str]; 3] = [&["a", "b"], &["b", "c"], &["a", "c"]];
        let mut clients = Vec::new();
        for k in 0..12 {
            let name = format!("client {k} on process {}", k % 3);
            clients.push(Client::live(name, &processes[k % 3], pairs[(k / 3) % 3]).await);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let publishers = processes[1..]
            .iter()
            .map(|p| spawn_publisher(p.clone(), &["a", "b", "c", "z"], stop.clone()))
            .collect();
        for c in &mut clients {
            c.read(5).await;
        }
        let killed_at = blocking(|| counter(&redis));
        processes[0].signal("-KILL");
        for (k, c) in clients.iter_mut().enumerate().filter(|(k, _)| k % 3 == 0) {
            c.read_until_closed().await;
            c.reconnect(&processes[1 + (k / 3) % 2]).await;
        }
        // Publishing goes on; everyone reads on.
        sleep(Duration::from_millis(300)).await;
        for c in &mut clients {
            c.read(5).await;
        }
        let by_publisher = stop_publishers(&stop, publishers).await;
        for (n, acked) in by_publisher.iter().enumerate() {
            let after = acked.iter().filter(|(id, _)| *id > killed_at).count();
            assert!(
                after >= 10,
                "publisher {n} published {after} events after the kill"
            );
        }
        let published = by_publisher.concat();
        for (k, c) in clients.iter_mut().enumerate() {
            let want = expected(&published, &c.channels, c.start);
            c.read_through(*want.last().unwrap()).await;
            c.check(&want);
            assert!(
                c.missed_at.is_empty(),
                "{}: history held every event (missedevents after {:?} events)",
                c.name,
                c.missed_at
            );
            let streams = if k % 3 == 0 { 2 } else { 1 };
            assert_eq!(c.connections, streams, "{}: streams opened", c.name);
        }
        join_all(clients.iter_mut().map(Client::expect_silence)).await;
        for (n, p) in processes[1..].iter().enumerate() {
            let replayed = p.metric("redisse_replayed_events_total").await;
            assert!(
                replayed > 0,
                "process {}: the moved clients' replays",
                n + 1
            );
        }
    })
    .await;
}

/// A process that stops reading its pub/sub connection (frozen here: SIGSTOP) while 6.4 MB
/// of events are published through the others (more than the sockets' buffers take) is cut by
/// Redis when the output waiting for it passes `client-output-buffer-limit pubsub` (32 KiB
/// here, 32 MB by default). Once it runs again it reconnects and refills its streams from
/// history: they get every event once, in order, without `missedevents`; the other processes
/// were not cut and their streams never noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_redis_cuts_for_falling_behind_refills_its_streams() {
    within_limit(async {
        let limit = [
            "--client-output-buffer-limit".to_owned(),
            "pubsub 32kb 16kb 1".to_owned(),
        ];
        let redis = blocking(|| RedisServer::start_with(&limit, None));
        // Queues that hold everything published here: the clients read once it is all out.
        let processes =
            three_processes_with(&redis, 10_000, &["--max-queue-bytes", "16777216"]).await;
        let mut clients = Vec::new();
        for (n, p) in processes.iter().enumerate() {
            clients.push(Client::live(format!("the client of process {n}"), p, &["a"]).await);
        }
        let before = reconnections(&processes).await;
        processes[0].signal("-STOP");
        let data = "x".repeat(16_000);
        let mut published = Vec::new();
        for i in 0..400 {
            let id = processes[1 + i % 2].publish_event("a", None, &data).await;
            published.push((id, "a"));
        }
        processes[0].signal("-CONT");
        wait_reconnected(&processes[..1], &before[..1]).await;
        let log = processes[0].log();
        assert!(
            log.contains("redis subscriber connection lost"),
            "the cut is logged:\n{log}"
        );
        assert_eq!(
            reconnections(&processes[1..]).await,
            before[1..],
            "the others were not cut"
        );
        for c in &mut clients {
            let want = expected(&published, &c.channels, c.start);
            c.read_through(*want.last().unwrap()).await;
            c.check(&want);
            assert!(
                c.missed_at.is_empty(),
                "{}: history held every event (missedevents after {:?} events)",
                c.name,
                c.missed_at
            );
            assert_eq!(c.connections, 1, "{}: one stream all along", c.name);
        }
        join_all(clients.iter_mut().map(Client::expect_silence)).await;
    })
    .await;
}

/// Channels of the restart tests: client `k` follows two of three.
fn restart_channels(k: usize) -> &'static [&'static str] {
    [&["a", "b"][..], &["b", "c"], &["a", "c"]][k % 3]
}

/// Nine clients live on three processes (each on two of three channels), which read every
/// event published through the three, and one away: it read half of its events on process 0
/// and left. Returns them with what was published.
async fn clients_before_a_restart(
    processes: &[Arc<Redisse>],
) -> (Vec<Client>, Client, Vec<Published>) {
    let mut clients = Vec::new();
    for k in 0..9 {
        let name = format!("client {k} on process {}", k % 3);
        let channels = restart_channels(k / 3);
        clients.push(Client::live(name, &processes[k % 3], channels).await);
    }
    let mut away = Client::live("the away client".into(), &processes[0], &["a", "b"]).await;
    let mut published = Vec::new();
    for (n, p) in processes.iter().enumerate() {
        published.extend(publish_n(p, &["a", "b", "c"], n, 9).await);
    }
    away.read(expected(&published, &away.channels, away.start).len() / 2)
        .await;
    away.disconnect();
    for c in &mut clients {
        let want = expected(&published, &c.channels, c.start);
        c.read_through(*want.last().unwrap()).await;
        c.check(&want);
    }
    (clients, away, published)
}

/// Redis saved, killed and started again with its data under three processes: each notices
/// (503), reconnects and is ready again (200); a client that comes back meanwhile to another
/// process than the one it left is held, then served from the history Redis kept; every
/// stream, held through the outage or resumed, gets every event published through the three
/// before and after, once, in order, without `missedevents`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_ride_out_a_redis_restart_with_its_data() {
    within_limit(async {
        let mut redis = blocking(RedisServer::start);
        let processes = three_processes(&redis, 10_000).await;
        let (mut clients, mut away, mut published) = clients_before_a_restart(&processes).await;
        let before = reconnections(&processes).await;
        blocking(|| redis.save_and_stop());
        for p in &processes {
            p.health_becomes(503).await;
        }
        away.reconnect(&processes[2]).await;
        blocking(|| redis.start_again());
        wait_reconnected(&processes, &before).await;
        for (n, p) in processes.iter().enumerate() {
            published.extend(publish_n(p, &["a", "b", "c"], n, 9).await);
        }
        for c in clients.iter_mut().chain([&mut away]) {
            let want = expected(&published, &c.channels, c.start);
            c.read_through(*want.last().unwrap()).await;
            c.check(&want);
            assert!(
                c.missed_at.is_empty(),
                "{}: Redis kept its data (missedevents after {:?} events)",
                c.name,
                c.missed_at
            );
        }
        join_all(
            clients
                .iter_mut()
                .chain([&mut away])
                .map(Client::expect_silence),
        )
        .await;
    })
    .await;
}

/// Redis restarted empty (`restart`) under three processes: each reconnects and is ready
/// again; every stream on every process is told once (`missedevents`), then gets the events
/// published through the three afterwards, whose ids are above every id given before; a client
/// away across the restart (it left halfway through the events before) comes back to another
/// process and is told too, then gets the new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_tell_every_stream_once_after_redis_restarted_empty() {
    within_limit(async {
        let mut redis = blocking(RedisServer::start);
        let processes = three_processes(&redis, 10_000).await;
        let (mut clients, mut away, published) = clients_before_a_restart(&processes).await;
        let got_before: Vec<Vec<u64>> = clients
            .iter()
            .chain([&away])
            .map(|c| c.got.clone())
            .collect();
        let old_counter = blocking(|| counter(&redis));
        let before = reconnections(&processes).await;
        blocking(|| redis.restart());
        wait_reconnected(&processes, &before).await;
        // One subscription per process and channel, on the new Redis too.
        for channel in ["a", "b", "c"] {
            wait_until(&format!("three subscribers of {channel}"), || {
                numsub(&redis, channel) == 3
            })
            .await;
        }
        let mut new = Vec::new();
        for (n, p) in processes.iter().enumerate() {
            new.extend(publish_n(p, &["a", "b", "c"], n, 9).await);
        }
        let lowest = new.iter().map(|p| p.0).min().unwrap();
        assert!(
            lowest > old_counter,
            "ids never go backwards: {lowest} after {old_counter}"
        );
        away.reconnect(&processes[1]).await;
        assert_eq!(
            away.got.len(),
            expected(&published, &away.channels, away.start).len() / 2
        );
        for (c, old) in clients.iter_mut().chain([&mut away]).zip(got_before) {
            let new = expected(&new, &c.channels, 0);
            c.read_through(*new.last().unwrap()).await;
            assert_eq!(
                c.missed_at,
                [old.len()],
                "{}: told once of the loss, before the new events",
                c.name
            );
            c.check(&[old, new].concat());
        }
        join_all(
            clients
                .iter_mut()
                .chain([&mut away])
                .map(Client::expect_silence),
        )
        .await;
    })
    .await;
}
